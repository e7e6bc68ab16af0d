# ruff: noqa: F821  (`snakemake` is injected by Snakemake's script: directive)
from zhufu.scripting import rule_step
from zhufu.train.format_check import check_format

with rule_step(snakemake, "check_format"):
    training = snakemake.params.training
    check_format(
        snakemake.input.train,
        snakemake.input.tokenizer,
        snakemake.output.json,
        template=training["prompt_template"],
        max_length=training["max_length"],
        min_samples=training["min_samples"],
        training=training,
    )
