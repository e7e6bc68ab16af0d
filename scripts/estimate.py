# ruff: noqa: F821  (`snakemake` is injected by Snakemake's script: directive)
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))

from zhufu.generate import write_estimate  # noqa: E402
from zhufu.scripting import rule_step  # noqa: E402

with rule_step(snakemake, "estimate"):
    write_estimate(
        config=snakemake.params.config,
        shards=[tuple(s) for s in snakemake.params.shards],
        cache_path=snakemake.params.cache,
        out_path=snakemake.output.json,
    )
