# ruff: noqa: F821  (`snakemake` is injected by Snakemake's script: directive)
from zhufu.model.evaluate import evaluate
from zhufu.scripting import rule_step

with rule_step(snakemake, "evaluate"):
    evaluate(
        snakemake.input.base_model,
        snakemake.input.merged,
        snakemake.params.config,
        {k: getattr(snakemake.output, k) for k in ("generations", "metrics", "table_md", "table_html")},
        suitability=snakemake.input.suitability or None,
    )
