# ruff: noqa: F821  (`snakemake` is injected by Snakemake's script: directive)
from zhufu.data.records import read_rows
from zhufu.model.judge import judge
from zhufu.scripting import rule_step

with rule_step(snakemake, "judge"):
    judge(
        read_rows(snakemake.input.generations),
        # params.view (what shapes the verdicts) decides when this reruns; the operation settings (rates,
        # budget, max_cost, the key's env var) are read from the workflow's config, as generate does
        snakemake.config,
        snakemake.params.cache,
        {k: getattr(snakemake.output, k) for k in ("verdicts", "summary", "table_md", "table_html")},
    )
