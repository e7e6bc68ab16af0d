# ruff: noqa: F821  (`snakemake` is injected by Snakemake's script: directive)
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))

from zhufu.dataset import check_format  # noqa: E402
from zhufu.scripting import rule_step  # noqa: E402

with rule_step(snakemake, "check_format"):
    check_format(
        snakemake.input.train,
        snakemake.input.tokenizer,
        snakemake.output.json,
        template=snakemake.params.template,
        max_length=snakemake.params.max_length,
        min_samples=snakemake.params.min_samples,
    )
