# ruff: noqa: F821  (`snakemake` is injected by Snakemake's script: directive)
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))

from zhufu.dataset import import_file  # noqa: E402
from zhufu.scripting import rule_step  # noqa: E402

with rule_step(snakemake, "import"):
    import_file(
        snakemake.input.source,
        snakemake.output.shard,
        snakemake.params.parse_config,
        rule_set=snakemake.params.rule_set,
    )
