# ruff: noqa: F821  (`snakemake` is injected by Snakemake's script: directive)
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))

from zhufu.base_model import prepare_base_model  # noqa: E402
from zhufu.scripting import rule_step  # noqa: E402

with rule_step(snakemake, "base_model"):
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
