import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))

import logging  # noqa: E402

from zhufu.launcher import merge_model  # noqa: E402

logging.basicConfig(
    filename=snakemake.log[0], level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
)
try:
    merge_model(
        snakemake.input.base_model,
        snakemake.input.adapter,
        snakemake.output.merged,
        log_path=snakemake.log[0],
    )
except Exception:
    logging.getLogger("zhufu").exception("merge_model failed")
    raise
