# ruff: noqa: F821  (`snakemake` is injected by Snakemake's script: directive)
from zhufu.data.clean import clean
from zhufu.scripting import rule_step

with rule_step(snakemake, "clean"):
    clean(
        snakemake.input.merged,
        snakemake.output.train,
        snakemake.output.report,
        rules=snakemake.params.rules,
        styles=snakemake.params.styles,
        system_prompt=snakemake.params.system_prompt,
        suitability=snakemake.input.suitability if snakemake.params.use_suitability else None,
        card=snakemake.output.card,
        provenance=snakemake.params.provenance,
        decisions=snakemake.input.decisions or None,
    )
