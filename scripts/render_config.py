import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))

import logging  # noqa: E402

from zhufu.xtuner_config import write_config  # noqa: E402

logging.basicConfig(
    filename=snakemake.log[0], level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
)
try:
    write_config(
        snakemake.output.config,
        profile=snakemake.params.profile,
        overrides=snakemake.params.overrides,
        model_path=snakemake.input.base_model,
        data_path=snakemake.input.train,
        system=snakemake.params.system,
        evaluation_inputs=snakemake.params.evaluation_inputs,
    )
except Exception:
    logging.getLogger("zhufu").exception("render_config failed")
    raise
