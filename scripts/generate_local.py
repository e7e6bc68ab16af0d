# ruff: noqa: F821  (`snakemake` is injected by Snakemake's script: directive)
from zhufu.config import with_operation
from zhufu.generate.run import generate_local_shards
from zhufu.scripting import rule_step

with rule_step(snakemake, "generate_local"):
    generate_local_shards(
        # as scripts/generate.py: what shapes the shards from params, how to fetch them from the config
        config=with_operation(snakemake.params.shards_config, snakemake.config),
        rounds=snakemake.params.rounds,
        out_paths=snakemake.output.shards,
        cache_path=snakemake.params.cache,
        log_path=snakemake.log[0],
    )
