# ruff: noqa: F821  (`snakemake` is injected by Snakemake's script: directive)
from zhufu.generate.estimate import write_estimate
from zhufu.scripting import rule_step

with rule_step(snakemake, "estimate"):
    write_estimate(
        config=snakemake.params.view["config"],
        shards=[tuple(s) for s in snakemake.params.view["shards"]],
        cache_path=snakemake.params.cache,
        out_path=snakemake.output.json,
    )
