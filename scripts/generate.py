# ruff: noqa: F821  (snakemake is injected by the script directive)
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))

import logging  # noqa: E402

from zhufu.generate import generate_shard  # noqa: E402

logging.basicConfig(
    filename=snakemake.log[0],
    level=logging.INFO,
    format="%(asctime)s %(levelname)s %(name)s: %(message)s",
)
try:
    generate_shard(
        config=snakemake.params.shard_config,
        style=snakemake.wildcards.style,
        round_=int(snakemake.wildcards.round),
        out_path=snakemake.output.shard,
        cache_path=snakemake.params.cache,
    )
except Exception:
    logging.getLogger("zhufu.generate").exception("generate failed")
    raise
