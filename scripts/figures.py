# ruff: noqa: F821  (`snakemake` is injected by Snakemake's script: directive)
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))

import logging  # noqa: E402

from zhufu.figures import draw_figures  # noqa: E402

logging.basicConfig(
    filename=snakemake.log[0], level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
)
try:
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
except Exception:
    logging.getLogger("zhufu.figures").exception("figures failed")
    raise
