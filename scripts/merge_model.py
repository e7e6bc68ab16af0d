# ruff: noqa: F821  (`snakemake` is injected by Snakemake's script: directive)
from zhufu.scripting import rule_step
from zhufu.train.export import merge_model

with rule_step(snakemake, "merge_model"):
    merge_model(
        snakemake.input.base_model,
        snakemake.input.adapter,
        snakemake.output.merged,
        log_path=snakemake.log[0],
    )
