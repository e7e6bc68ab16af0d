# ruff: noqa: F821  (`snakemake` is injected by Snakemake's script: directive)
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))

import logging  # noqa: E402

from zhufu.dataset import import_file  # noqa: E402

logging.basicConfig(
    filename=snakemake.log[0], level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
)
try:
    import_file(snakemake.input.source, snakemake.output.shard, snakemake.params.parse_config)
except Exception:
    logging.getLogger("zhufu.dataset").exception("import failed")
    raise
