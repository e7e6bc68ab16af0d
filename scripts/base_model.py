import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))

import logging  # noqa: E402

from zhufu.base_model import prepare_base_model  # noqa: E402

logging.basicConfig(
    filename=snakemake.log[0], level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
)
try:
    model = snakemake.params.model
    prepare_base_model(
        snakemake.output.dir,
        source=model["source"],
        train_json=snakemake.input.train or None,
        path=model.get("path"),
        modelscope_id=model.get("modelscope_id"),
        revision=model.get("revision"),
        cache_dir=model.get("cache_dir"),
        tiny=model.get("tiny"),
        seed=snakemake.params.seed,
    )
except Exception:
    logging.getLogger("zhufu").exception("base_model failed")
    raise
