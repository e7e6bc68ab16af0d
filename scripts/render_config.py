# ruff: noqa: F821  (`snakemake` is injected by Snakemake's script: directive)
from zhufu.scripting import rule_step
from zhufu.train.xtuner_config import write_config

with rule_step(snakemake, "render_config"):
    write_config(
        snakemake.output.config,
        profile=snakemake.params.profile,
        overrides=snakemake.params.overrides,
        model_path=snakemake.input.base_model,
        data_path=snakemake.input.train,
        system=snakemake.params.system,
        evaluation_inputs=snakemake.params.evaluation_inputs,
    )
