# ruff: noqa: F821  (`snakemake` is injected by Snakemake's script: directive)
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))

from zhufu.launcher import merge_model  # noqa: E402
from zhufu.scripting import rule_step  # noqa: E402

with rule_step(snakemake, "merge_model"):
    merge_model(
        snakemake.input.base_model,
        snakemake.input.adapter,
        snakemake.output.merged,
        log_path=snakemake.log[0],
    )
