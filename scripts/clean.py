# ruff: noqa: F821  (`snakemake` is injected by Snakemake's script: directive)
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))

import logging  # noqa: E402

from zhufu.dataset import clean  # noqa: E402

logging.basicConfig(
    filename=snakemake.log[0], level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
)
try:
    clean(
        snakemake.input.merged,
        snakemake.output.train,
        snakemake.output.report,
        rules=snakemake.params.rules,
        styles=snakemake.params.styles,
        system_prompt=snakemake.params.system_prompt,
        suitability=snakemake.input.suitability if snakemake.params.use_suitability else None,
        card=snakemake.output.card,
        provenance=snakemake.params.provenance,
    )
except Exception:
    logging.getLogger("zhufu.dataset").exception("clean failed")
    raise
