# ruff: noqa: F821  (`snakemake` is injected by Snakemake's script: directive)
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))

from zhufu.generate.run import generate_shard  # noqa: E402
from zhufu.scripting import rule_step  # noqa: E402

with rule_step(snakemake, "generate"):
    generate_shard(
        config=snakemake.params.shard_config,
        style=snakemake.wildcards.style,
        round_=int(snakemake.wildcards.round),
        out_path=snakemake.output.shard,
        cache_path=snakemake.params.cache,
    )
