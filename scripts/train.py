import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))

import logging  # noqa: E402

from zhufu.launcher import train  # noqa: E402

logging.basicConfig(
    filename=snakemake.log[0], level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
)
# XTuner's own output goes to the same log; the exit code is XTuner's.
try:
    rc = train(
        snakemake.input.config,
        snakemake.params.work_dir,
        deepspeed=snakemake.params.deepspeed,
        nproc_per_node=snakemake.params.nproc_per_node,
        log_path=snakemake.log[0],
        threads=snakemake.threads,
    )
except Exception:
    logging.getLogger("zhufu").exception("train failed")
    raise
sys.exit(rc)
