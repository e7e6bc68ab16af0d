import os  # noqa: F401  (rules use os.path in lambdas)
import sys

sys.path.insert(0, workflow.basedir)

from zhufu.config import validate_config  # noqa: E402
from zhufu.errors import ConfigError  # noqa: E402
from zhufu.providers import hide_api_key_from_jobs  # noqa: E402
from zhufu.xtuner_config import training_settings  # noqa: E402

# One line naming the bad key, and a non-zero exit before any job runs (snakemake's own
# validate() prints the whole schema and a traceback).
try:
    validate_config(
        config, source=", ".join(map(str, workflow.configfiles)) or "config"
    )
    TRAIN = training_settings(
        config
    )  # the training profile with config overrides applied
except ConfigError as e:
    print(f"zhufu: config error: {e}", file=sys.stderr)
    sys.exit(1)


# On a cluster (e.g. --executor slurm) no job may carry the API key: sbatch --export=ALL would copy it
# into every job's environment and SLURM's job state. Generation runs on this host (localrules). The
# executor is known only once the run starts, before the first job is scheduled: here.
onstart:
    if workflow.non_local_exec:
        hide_api_key_from_jobs(config["provider"])


def pkg(*modules):
    """The package's source files a rule's script imports, as inputs (Snakemake's code trigger can't see them)."""
    names = ("__init__", "errors", "io", "config", "scripting") + modules
    return [f"zhufu/{m}.py" for m in dict.fromkeys(names)]


STYLES = list(config["styles"])
ROUNDS = list(range(config["rounds"]))
WORK_DIR = "results/train/work_dir"


def maybe_protected(path):
    """GPU profiles protect their checkpoints (hours of work); cpu-tiny does not, so `make run` can rerun."""
    return protected(path) if TRAIN["protect_checkpoints"] else path
