# ruff: noqa: F821  (`snakemake` is injected by Snakemake's script: directive)
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))

import logging  # noqa: E402

from zhufu.dataset import check_format  # noqa: E402

logging.basicConfig(
    filename=snakemake.log[0], level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
)
try:
    check_format(
        snakemake.input.train,
        snakemake.input.tokenizer,
        snakemake.output.json,
        template=snakemake.params.template,
        max_length=snakemake.params.max_length,
    )
except Exception:
    logging.getLogger("zhufu.dataset").exception("check_format failed")
    raise
