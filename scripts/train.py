# ruff: noqa: F821  (`snakemake` is injected by Snakemake's script: directive)
from zhufu.scripting import rule_step
from zhufu.train.run import train

# XTuner's own output goes to the same log; a failed XTuner run is one line naming its exit code.
with rule_step(snakemake, "train"):
    train(
        snakemake.input.config,
        snakemake.params.work_dir,
        deepspeed=snakemake.params.deepspeed,
        nproc_per_node=snakemake.params.nproc_per_node,
        log_path=snakemake.log[0],
        threads=snakemake.threads,
    )
