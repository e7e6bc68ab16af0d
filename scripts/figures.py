# ruff: noqa: F821  (`snakemake` is injected by Snakemake's script: directive)
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))

from zhufu.data.figures import draw_figures  # noqa: E402
from zhufu.scripting import rule_step  # noqa: E402

with rule_step(snakemake, "figures"):
    draw_figures(
        report=snakemake.input.report,
        suitability=snakemake.input.suitability or None,
        recipients=snakemake.params.recipients,
        scenes=snakemake.params.scenes,
        styles=snakemake.params.styles,
        out_suitability=snakemake.output.suitability,
        out_lengths=snakemake.output.lengths,
        out_cells=snakemake.output.cells,
    )
