# ruff: noqa: F821  (`snakemake` is injected by Snakemake's script: directive)
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))

import logging  # noqa: E402

from zhufu.dataset import merge  # noqa: E402

logging.basicConfig(
    filename=snakemake.log[0], level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
)
try:
    merge(snakemake.input.shards, snakemake.output.json)
except Exception:
    logging.getLogger("zhufu.dataset").exception("merge failed")
    raise
