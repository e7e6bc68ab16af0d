# ruff: noqa: F821  (`snakemake` is injected by Snakemake's script: directive)
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))

from zhufu.launcher import pth_to_hf  # noqa: E402
from zhufu.scripting import rule_step  # noqa: E402

with rule_step(snakemake, "pth_to_hf"):
    pth_to_hf(
        snakemake.input.config, snakemake.params.work_dir, snakemake.output.adapter, log_path=snakemake.log[0]
    )
