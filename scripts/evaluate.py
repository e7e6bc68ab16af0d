# ruff: noqa: F821  (`snakemake` is injected by Snakemake's script: directive)
from zhufu.model.evaluate import evaluate
from zhufu.scripting import rule_step

with rule_step(snakemake, "evaluate"):
    evaluate(
        snakemake.input.base_model,
        snakemake.input.merged,
        snakemake.params.inputs,
        snakemake.output.generations,
        snakemake.output.metrics,
        system=snakemake.params.system,
        max_new_tokens=snakemake.params.max_new_tokens,
    )
