# ruff: noqa: F821  (`snakemake` is injected by Snakemake's script: directive)
from zhufu.data.importing import import_file
from zhufu.scripting import rule_step

with rule_step(snakemake, "import"):
    import_file(
        snakemake.input.source,
        snakemake.output.shard,
        snakemake.params.parse_config,
        rule_set=snakemake.params.rule_set,
    )
