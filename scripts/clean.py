# ruff: noqa: F821  (`snakemake` is injected by Snakemake's script: directive)
from zhufu.data.clean import clean
from zhufu.scripting import rule_step

with rule_step(snakemake, "clean"):
    clean(
        snakemake.input.merged,
        snakemake.output.train,
        snakemake.output.report,
        rules=snakemake.params.view["rules"],
        styles=snakemake.params.view["styles"],
        system_prompt=snakemake.params.view["system_prompt"],
        suitability=snakemake.input.suitability if snakemake.params.view["use_suitability"] else None,
        card=snakemake.output.card,
        provenance=snakemake.params.view["provenance"],
        decisions=snakemake.input.decisions or None,
        mix=snakemake.params.view["mix"],
        seed=snakemake.params.view["seed"],
        workers=snakemake.threads,
    )
