# The evaluation suite (zhufu/evaluate.py): the base and the tuned (merged) model answer the held-out
# recipient × scene pairs in every style plus Tianji's inputs, sampled and seeded; style metrics with
# bootstrap intervals, and the table.


rule evaluate:
    input:
        base_model=rules.base_model.output.dir,
        merged=rules.merge_model.output.merged,
        suitability=lambda wc: config["grid"]["suitability"] or [],
        code=code("scripts/evaluate.py"),
        keywords="resources/evaluation.yaml",
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
        config=lambda wc: {
            k: config[k]
            for k in (
                "seed",
                "grid",
                "styles",
                "input_templates",
                "trigger_separator",
                "system_prompt",
                "clean",
                "evaluate",
            )
        },
    script:
        "../scripts/evaluate.py"
