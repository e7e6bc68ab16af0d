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


# Tiny jobs, and the jobs that need the internet, the API key or the answer cache (generation, the
# estimate, the base model's download), run on the submitting host, never as cluster jobs.
localrules:
    all,
    generate,
    estimate,
    base_model,
    merge,
    render_config,
    figures,
    loss_figure,
    judge,


rule all:
    default_target: True
    input:
        rules.clean.output,
        rules.check_format.output,
        rules.figures.output,
        rules.merge_model.output,
        rules.evaluate.output,
        rules.loss_figure.output,
        # the LLM judge only when asked for (evaluate.judge.enabled): it may call a paid API
        rules.judge.output if config["evaluate"]["judge"]["enabled"] else [],
