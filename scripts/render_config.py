# ruff: noqa: F821  (`snakemake` is injected by Snakemake's script: directive)
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))

from zhufu.scripting import rule_step  # noqa: E402
from zhufu.xtuner_config import write_config  # noqa: E402

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
