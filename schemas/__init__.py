"""Package data, installed as `zhufu.schemas`: the config and record schemas (JSON Schema in YAML)."""
