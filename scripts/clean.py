# ruff: noqa: F821  (`snakemake` is injected by Snakemake's script: directive)
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))

from zhufu.data.clean import clean  # noqa: E402
from zhufu.scripting import rule_step  # noqa: E402

with rule_step(snakemake, "clean"):
    clean(
        snakemake.input.merged,
        snakemake.output.train,
        snakemake.output.report,
        rules=snakemake.params.rules,
        styles=snakemake.params.styles,
        system_prompt=snakemake.params.system_prompt,
        suitability=snakemake.input.suitability if snakemake.params.use_suitability else None,
        card=snakemake.output.card,
        provenance=snakemake.params.provenance,
    )
