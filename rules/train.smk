# Base model → rendered XTuner config → training. The train rule is the GPU rule: it declares gpu/mem_mb/
# runtime/cpus_per_gpu so that a cluster profile sends it to a GPU node (a local run is not limited by
# `gpu`), and it resumes from the newest complete checkpoint when a killed run is restarted: the
# checkpoints (work_dir/iter_*.pth) are not outputs, so Snakemake never deletes them; the output is
# work_dir/last_checkpoint, which names the final one and which XTuner writes last. The code is zhufu/train/.

from zhufu.train.format_check import training_view
from zhufu.train.profiles import training_overrides

# What the format check needs of the training profile (zhufu/train/profiles.py): template, max_length,
# packing and the schedule, so it counts the samples training sees and refuses a schedule mmengine would.
FORMAT_TRAINING = training_view(TRAIN)


rule base_model:
    input:
        train=lambda wc: (
            rules.clean.output.train if config["model"]["source"] == "tiny" else []
        ),
        code=code("scripts/base_model.py"),
    output:
        dir=directory("results/base_model"),
    log:
        "logs/base_model.log",
    conda:
        "../envs/train.yaml"
    params:
        model=config["model"],
        seed=config["seed"],
    script:
        "../scripts/base_model.py"


rule render_config:
    input:
        base_model=rules.base_model.output.dir,
        train=rules.clean.output.train,
        code=code("scripts/render_config.py"),
        template="zhufu/train/templates/xtuner_config.py.j2",
    output:
        config="results/train/xtuner_config.py",
    log:
        "logs/render_config.log",
    conda:
        "../envs/train.yaml"
    params:
        profile=config["train"]["profile"],
        # the training settings only: a resource key (mem_mb, runtime_min, ...) goes to the train rule's
        # resources:, never into the rendered config or the resume fingerprint
        overrides=training_overrides(config),
        system=config["system_prompt"],
        # the training-time evaluation hook's own short list (evaluate.inputs is the evaluate rule's)
        evaluation_inputs=config["train"]["eval_inputs"],
    script:
        "../scripts/render_config.py"


# train.json through XTuner's own dataset processing, with the tokenizer, template and packing training will
# use; it refuses fewer than min_samples (and one optimiser step) samples, or a schedule mmengine would
# refuse (an epoch warm-up of 0 iterations), and train waits for it.
rule check_format:
    input:
        train=rules.clean.output.train,
        tokenizer=rules.base_model.output.dir,
        code=code("scripts/check_format.py"),
    output:
        json="results/data/format_check.json",
    log:
        "logs/check_format.log",
    conda:
        "../envs/train.yaml"
    params:
        training=FORMAT_TRAINING,
    script:
        "../scripts/check_format.py"


rule train:
    input:
        config=rules.render_config.output.config,
        base_model=rules.base_model.output.dir,
        train=rules.clean.output.train,
        format_check=rules.check_format.output.json,  # refuses an empty or nearly empty set first
        code=code("scripts/train.py"),
    output:
        last=maybe_protected(f"{WORK_DIR}/last_checkpoint"),
    log:
        "logs/train.log",
    benchmark:
        "benchmarks/train.tsv"
    conda:
        "../envs/train.yaml"
    threads: 8
    resources:
        gpu=TRAIN["nproc_per_node"],
        mem_mb=TRAIN["mem_mb"],
        runtime=TRAIN["runtime_min"],
        cpus_per_gpu=lambda wc, threads: max(1, threads // TRAIN["nproc_per_node"]),
    params:
        work_dir=lambda wc, output: os.path.dirname(output.last),
        deepspeed=TRAIN["deepspeed"],
        nproc_per_node=TRAIN["nproc_per_node"],
    script:
        "../scripts/train.py"


rule loss_figure:
    input:
        last=rules.train.output.last,
        code=code("scripts/loss_figure.py"),
        font="resources/fonts/WenQuanYiMicroHei.ttf",
    output:
        png=report(
            "results/figures/loss.png",
            caption="../report/loss.rst",
            category="2. Training",
        ),
    log:
        "logs/loss_figure.log",
    conda:
        "../envs/data.yaml"
    params:
        work_dir=lambda wc, input: os.path.dirname(input.last),
    script:
        "../scripts/loss_figure.py"
