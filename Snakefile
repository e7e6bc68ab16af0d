from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


# `snakemake --report results/report.html` (or `make report`): the outputs marked report() in rules/,
# with their captions from report/.
report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/generate.smk"
include: "rules/dataset.smk"
include: "rules/train.smk"
include: "rules/export.smk"
include: "rules/evaluate.smk"


# Tiny jobs run inside the main Snakemake process, not as cluster jobs.
localrules:
    all,
    merge,
    render_config,
    figures,
    loss_figure,


rule all:
    default_target: True
    input:
        rules.clean.output,
        rules.check_format.output,
        rules.figures.output,
        rules.merge_model.output,
        rules.evaluate.output,
        rules.loss_figure.output,
