# ruff: noqa: F821  (`snakemake` is injected by Snakemake's script: directive)
from zhufu.data.merge import merge
from zhufu.scripting import rule_step

with rule_step(snakemake, "merge"):
    merge(snakemake.input.shards, snakemake.output.json)
