# ruff: noqa: F821  (`snakemake` is injected by Snakemake's script: directive)
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))

from zhufu.evaluate import evaluate  # noqa: E402
from zhufu.scripting import rule_step  # noqa: E402

with rule_step(snakemake, "evaluate"):
    evaluate(
        snakemake.input.base_model,
        snakemake.input.merged,
        snakemake.params.inputs,
        snakemake.output.generations,
        snakemake.output.metrics,
        system=snakemake.params.system,
        max_new_tokens=snakemake.params.max_new_tokens,
    )
