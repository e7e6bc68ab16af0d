"""Manufacture: raw shards from the configured LLM through the persistent answer cache (rules/generate.smk).

- `run`: the generate stage, one pool of workers over the shards of a run;
- `estimate`: calls, tokens and cost a config would spend, spending nothing;
- `cache`, `providers`, `limits`, `progress`: the answer cache, the LLM clients, the rate limits, the progress.
"""
