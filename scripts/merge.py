# ruff: noqa: F821  (`snakemake` is injected by Snakemake's script: directive)
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))

from zhufu.data.merge import merge  # noqa: E402
from zhufu.scripting import rule_step  # noqa: E402

with rule_step(snakemake, "merge"):
    merge(snakemake.input.shards, snakemake.output.json)
