# The evaluation suite (zhufu/model/evaluate.py): the base and the tuned (merged) model answer the held-out
# recipient × scene pairs in every style plus Tianji's inputs, sampled and seeded; style metrics with
# bootstrap intervals, and the table.

# light: the judge's own modules load only in its job
from zhufu.config import (  # noqa: E402
    cache_path,
    evaluate_view,
    judge_view,
    off_task_input,
    suitability_input,
)


rule evaluate:
    input:
        base_model=rules.base_model.output.dir,
        merged=rules.merge_model.output.merged,
        suitability=suitability_input(config),
        code=code("scripts/evaluate.py"),
        keywords="resources/evaluation.yaml",
        off_task=off_task_input(config),
    output:
        generations="results/eval/generations.jsonl",
        metrics="results/eval/metrics.json",
        table_md="results/eval/table.md",
        table_html=report(
            "results/eval/table.html",
            caption="../report/evaluation.rst",
            category="3. Evaluation",
        ),
    log:
        "logs/evaluate.log",
    benchmark:
        "benchmarks/evaluate.tsv"
    conda:
        "../envs/train.yaml"
    params:
        config=evaluate_view(config),
    script:
        "../scripts/evaluate.py"


# The optional LLM judge (zhufu/model/judge.py; evaluate.judge.enabled adds it to `all`): the judge's
# provider scores every answer of the evaluation. A local rule, like generate: on a cluster it runs on the
# submitting host, where the internet, the key and the answer cache are. Its params are what shapes the
# verdicts (the judge's provider identity, the rubric's pass score, the styles); its rates, budget and
# max_cost come from the config at run time, so changing them reruns nothing.
rule judge:
    input:
        generations=rules.evaluate.output.generations,
        code=code("scripts/judge.py"),
    output:
        verdicts="results/eval/judge.jsonl",
        summary="results/eval/judge.json",
        table_md="results/eval/judge.md",
        table_html=report(
            "results/eval/judge.html",
            caption="../report/judge.rst",
            category="3. Evaluation",
        ),
    log:
        "logs/judge.log",
    conda:
        "../envs/generate.yaml"
    params:
        view=lambda wc: judge_view(config),
        cache=cache_path(config),
    script:
        "../scripts/judge.py"
