import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))

import logging  # noqa: E402

from zhufu.launcher import pth_to_hf  # noqa: E402

logging.basicConfig(
    filename=snakemake.log[0], level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
)
try:
    pth_to_hf(
        snakemake.input.config, snakemake.params.work_dir, snakemake.output.adapter, log_path=snakemake.log[0]
    )
except Exception:
    logging.getLogger("zhufu").exception("pth_to_hf failed")
    raise
