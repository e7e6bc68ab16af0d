# ruff: noqa: F821  (`snakemake` is injected by Snakemake's script: directive)
from zhufu.data.figures import loss_figure
from zhufu.scripting import rule_step

with rule_step(snakemake, "loss_figure"):
    loss_figure(snakemake.params.work_dir, snakemake.output.png)
