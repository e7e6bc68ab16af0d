import hashlib
import json
import sys
from pathlib import Path

sys.path.insert(0, workflow.basedir)

from zhufu.config import validate_config  # noqa: E402
from zhufu.errors import ConfigError  # noqa: E402

# One line naming the bad key, and a non-zero exit before any job runs (snakemake's own
# validate() prints the whole schema and a traceback).
try:
    validate_config(config, source=", ".join(map(str, workflow.configfiles)) or "config")
except ConfigError as e:
    print(f"zhufu: config error: {e}", file=sys.stderr)
    sys.exit(1)


def pkg(*modules):
    """The package's source files a rule's script imports, as inputs (Snakemake's code trigger can't see them)."""
    names = ("__init__", "errors", "io", "config") + modules
    return [f"zhufu/{m}.py" for m in dict.fromkeys(names)]


def config_hash():
    """Hash of the whole validated config, recorded in the dataset card."""
    blob = json.dumps(config, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]


STYLES = list(config["styles"])
ROUNDS = list(range(config["rounds"]))
