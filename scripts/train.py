# ruff: noqa: F821  (`snakemake` is injected by Snakemake's script: directive)
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))

from zhufu.launcher import train  # noqa: E402
from zhufu.scripting import rule_step  # noqa: E402

# XTuner's own output goes to the same log; the exit code is XTuner's.
with rule_step(snakemake, "train"):
    rc = train(
        snakemake.input.config,
        snakemake.params.work_dir,
        deepspeed=snakemake.params.deepspeed,
        nproc_per_node=snakemake.params.nproc_per_node,
        log_path=snakemake.log[0],
        threads=snakemake.threads,
    )
sys.exit(rc)
