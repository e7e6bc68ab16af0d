# ruff: noqa: F821  (`snakemake` is injected by Snakemake's script: directive)
from zhufu.generate.run import generate_shard
from zhufu.scripting import rule_step

with rule_step(snakemake, "generate"):
    generate_shard(
        config=snakemake.params.shard_config,
        style=snakemake.wildcards.style,
        round_=int(snakemake.wildcards.round),
        out_path=snakemake.output.shard,
        cache_path=snakemake.params.cache,
    )
