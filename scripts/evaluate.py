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
        snakemake.params.config,
        {k: getattr(snakemake.output, k) for k in ("generations", "metrics", "table_md", "table_html")},
        suitability=snakemake.input.suitability or None,
    )
