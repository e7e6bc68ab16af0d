import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))

import logging  # noqa: E402

from zhufu.evaluate import evaluate  # noqa: E402

logging.basicConfig(
    filename=snakemake.log[0], level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
)
try:
    evaluate(
        snakemake.input.base_model,
        snakemake.input.merged,
        snakemake.params.inputs,
        snakemake.output.generations,
        snakemake.output.metrics,
        system=snakemake.params.system,
        max_new_tokens=snakemake.params.max_new_tokens,
    )
except Exception:
    logging.getLogger("zhufu").exception("evaluate failed")
    raise
