# ruff: noqa: F821  (`snakemake` is injected by Snakemake's script: directive)
from zhufu.scripting import rule_step
from zhufu.train.loss import loss_figure

with rule_step(snakemake, "loss_figure"):
    loss_figure(snakemake.params.work_dir, snakemake.output.png)
