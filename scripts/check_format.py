# ruff: noqa: F821  (`snakemake` is injected by Snakemake's script: directive)
from zhufu.scripting import rule_step
from zhufu.train.format_check import check_format

with rule_step(snakemake, "check_format"):
    check_format(
        snakemake.input.train,
        snakemake.input.tokenizer,
        snakemake.output.json,
        template=snakemake.params.template,
        max_length=snakemake.params.max_length,
        min_samples=snakemake.params.min_samples,
    )
