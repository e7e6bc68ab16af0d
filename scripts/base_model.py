# ruff: noqa: F821  (`snakemake` is injected by Snakemake's script: directive)
from zhufu.scripting import rule_step
from zhufu.train.base_model import prepare_base_model

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
