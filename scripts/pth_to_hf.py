# ruff: noqa: F821  (`snakemake` is injected by Snakemake's script: directive)
from zhufu.scripting import rule_step
from zhufu.train.export import pth_to_hf

with rule_step(snakemake, "pth_to_hf"):
    pth_to_hf(
        snakemake.input.config, snakemake.params.work_dir, snakemake.output.adapter, log_path=snakemake.log[0]
    )
