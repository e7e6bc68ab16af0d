# The trained checkpoint (the one work_dir/last_checkpoint names) → a HF adapter → the merged model.


rule pth_to_hf:
    input:
        config=rules.render_config.output.config,
        last=rules.train.output.last,
        code=code("scripts/pth_to_hf.py"),
    output:
        adapter=directory("results/model/adapter"),
    log:
        "logs/pth_to_hf.log",
    conda:
        "../envs/train.yaml"
    resources:
        mem_mb=TRAIN["mem_mb"],
    params:
        work_dir=lambda wc, input: os.path.dirname(input.last),
    script:
        "../scripts/pth_to_hf.py"


rule merge_model:
    input:
        base_model=rules.base_model.output.dir,
        adapter=rules.pth_to_hf.output.adapter,
        code=code("scripts/merge_model.py"),
    output:
        merged=directory("results/model/merged"),
    log:
        "logs/merge_model.log",
    benchmark:
        "benchmarks/merge_model.tsv"
    conda:
        "../envs/train.yaml"
    resources:
        mem_mb=TRAIN["mem_mb"],
    script:
        "../scripts/merge_model.py"
