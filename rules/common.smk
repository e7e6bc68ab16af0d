import os  # noqa: F401  (rules use os.path in lambdas)
import sys
from pathlib import Path

# The workflow and its scripts import the installed package (tools/bootstrap.sh installs it into .venv).
from zhufu.config import validate_config
from zhufu.errors import ConfigError
from zhufu.generate.providers import hide_api_key_from_jobs
from zhufu.train.xtuner_config import training_settings

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


def code(*families):
    """The package's source files a rule's script imports, as inputs (Snakemake's code trigger can't see
    them): the core (zhufu/*.py but the CLI) and every module of the named subpackages (zhufu/<family>/).
    """
    package = Path(workflow.basedir) / "zhufu"
    core = [p for p in package.glob("*.py") if p.name not in ("cli.py", "__main__.py")]
    modules = [p for family in families for p in (package / family).glob("*.py")]
    return sorted(os.path.relpath(p, workflow.basedir) for p in core + modules)


STYLES = list(config["styles"])
ROUNDS = list(range(config["rounds"]))
WORK_DIR = "results/train/work_dir"


def maybe_protected(path):
    """GPU profiles protect their checkpoints (hours of work); cpu-tiny does not, so `make run` can rerun."""
    return protected(path) if TRAIN["protect_checkpoints"] else path
