import os  # noqa: F401  (rules use os.path in lambdas)
import sys
from pathlib import Path

# The workflow and its scripts import the installed package (tools/bootstrap.sh installs it into .venv).
from zhufu.config import validate_config
from zhufu.data.mix import mix_sources
from zhufu.errors import ConfigError
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
    # data.mix's files (clean's inputs): a missing one is one line, before any job
    MIX_SOURCES = mix_sources(config["data"]["mix"])
except ConfigError as e:
    print(f"zhufu: config error: {e}", file=sys.stderr)
    sys.exit(1)


# On a cluster (e.g. --executor slurm) no job may carry the API key: sbatch --export=ALL would copy it
# into every job's environment and SLURM's job state. Generation runs on this host (localrules). The
# executor is known only once the run starts, before the first job is scheduled: here.
onstart:
    if workflow.non_local_exec:
        from zhufu.generate.providers import hide_api_key_from_jobs

        hide_api_key_from_jobs(config["provider"])


from zhufu.codegraph import code_inputs

PACKAGE = Path(workflow.basedir) / "zhufu"
# The shared core (zhufu/*.py but the CLI): every stage imports it, so it is an input of no rule (see
# core_notice).
CORE = sorted(
    p for p in PACKAGE.glob("*.py") if p.name not in ("cli.py", "__main__.py")
)


def code(script):
    """The stage modules a rule's script imports, directly or through each other, as the rule's inputs
    (Snakemake's code trigger sees the script, not what it imports): editing a stage's own module reruns
    that stage and what follows it, and nothing before it. The shared core is left out on purpose: an
    edit to zhufu/io.py would otherwise rerun every rule, and on a GPU profile retrain for hours (the
    policy, and how to force a rerun, is in README "Rerunning after edits")."""
    return code_inputs(script, workflow.basedir)


def core_notice():
    """One line on stderr when a core module is newer than an output built before it, with the commands
    that rerun the stages it may affect (an edit to the core reruns nothing by itself).
    """
    outputs = [
        Path(workflow.basedir, p)
        for p in (
            "results/data/merged.json",
            "results/train/work_dir/last_checkpoint",
            "results/eval/metrics.json",
        )
    ]
    built = [p for p in outputs if p.exists()]
    if not built:
        return
    newest = max(CORE, key=lambda p: p.stat().st_mtime)
    stale = [p for p in built if p.stat().st_mtime < newest.stat().st_mtime]
    if stale:
        print(
            f"zhufu: {os.path.relpath(newest, workflow.basedir)} (the shared core) changed after "
            f"{os.path.relpath(stale[0], workflow.basedir)} was made; the core is no rule's input, so "
            "nothing reruns for it. To apply it, force the first stage it affects: snakemake --forcerun "
            "generate|merge|render_config|evaluate (each reruns that stage and everything after it)",
            file=sys.stderr,
        )


core_notice()


STYLES = list(config["styles"])
ROUNDS = list(range(config["rounds"]))
WORK_DIR = "results/train/work_dir"


def maybe_protected(path):
    """GPU profiles protect their checkpoints (hours of work); cpu-tiny does not, so `make run` can rerun."""
    return protected(path) if TRAIN["protect_checkpoints"] else path
