# ruff: noqa: F821  (`snakemake` is injected by Snakemake's script: directive)
from zhufu.config import with_operation
from zhufu.generate.run import generate_shard
from zhufu.scripting import rule_step

with rule_step(snakemake, "generate"):
    generate_shard(
        # params hold what shapes the shard; how to fetch it (rpm, concurrency, budget, ...) comes from the
        # workflow's config, which Snakemake does not track, so changing it reruns nothing
        config=with_operation(snakemake.params.shard_config, snakemake.config),
        style=snakemake.wildcards.style,
        round_=int(snakemake.wildcards.round),
        out_path=snakemake.output.shard,
        cache_path=snakemake.params.cache,
    )
