# The evaluation inputs answered by the base and the tuned (merged) model, greedy, and compared.


rule evaluate:
    input:
        base_model=rules.base_model.output.dir,
        merged=rules.merge_model.output.merged,
        code=code("scripts/evaluate.py"),
    output:
        generations="results/eval/generations.jsonl",
        metrics="results/eval/metrics.json",
    log:
        "logs/evaluate.log",
    benchmark:
        "benchmarks/evaluate.tsv"
    conda:
        "../envs/train.yaml"
    params:
        inputs=config["evaluate"]["inputs"],
        max_new_tokens=config["evaluate"]["max_new_tokens"],
        system=config["system_prompt"],
    script:
        "../scripts/evaluate.py"
