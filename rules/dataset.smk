# Data stages after generation: (import) → merge → clean (train.json, report, card) → figures.
# Everything the scripts use arrives through params:, so changing a cleaning threshold reruns clean and what
# follows it, never generation. The code is zhufu/data/.

# The params are the config views of zhufu/config.py: each names what its rule depends on.
from zhufu.config import (
    clean_view,
    decisions_input,
    figures_view,
    import_specs,
    import_view,
    suitability_input,
)

# An import is a path, or {path, rule_set}: its rows are then cleaned with that rule set of clean.rule_sets.
IMPORTS = import_specs(config)
IMPORTED = expand("results/raw/imported/{name}.json", name=list(IMPORTS))


rule import_data:
    input:
        source=lambda wc: IMPORTS[wc.name]["path"],
        code=code("scripts/import_data.py"),
        synonyms="resources/synonyms.yaml",
        schema="schemas/record.schema.yaml",
    output:
        shard="results/raw/imported/{name}.json",
    log:
        "logs/import/{name}.log",
    conda:
        "../envs/data.yaml"
    params:
        # only this import's rule set, so editing another set or a threshold reruns no import
        parse_config=lambda wc: import_view(config, IMPORTS[wc.name]["rule_set"]),
        rule_set=lambda wc: IMPORTS[wc.name]["rule_set"],
    script:
        "../scripts/import_data.py"


rule merge:
    input:
        shards=SHARDS + IMPORTED,
        code=code("scripts/merge.py"),
        schema="schemas/record.schema.yaml",
    output:
        json="results/data/merged.json",
    log:
        "logs/merge.log",
    conda:
        "../envs/data.yaml"
    script:
        "../scripts/merge.py"


rule clean:
    input:
        merged=rules.merge.output.json,
        suitability=suitability_input(config),
        # the user's review decisions (zhufu review), once the file exists: a new decision reruns clean
        decisions=lambda wc: decisions_input(config),
        # the general data of data.mix (zhufu/data/mix.py): an edit to a source reruns clean, not generation
        mix=MIX_SOURCES,
        code=code("scripts/clean.py"),
        schema="schemas/record.schema.yaml",
    output:
        train="results/data/train.json",
        report="results/data/clean_report.json",
        card=report(
            "results/data/dataset_card.md",
            caption="../report/card.rst",
            category="1. Data",
        ),
    log:
        "logs/clean.log",
    benchmark:
        "benchmarks/clean.tsv"
    conda:
        "../envs/data.yaml"
    # the record rules and near-dedup's verification use this many processes past 50k and 10k records
    # (capped by --cores; a SLURM job's --cpus-per-task); below that, one
    threads: 4
    params:
        # the rules, styles, system prompt, and the card's provenance (the data config's hash)
        view=clean_view(config),
    script:
        "../scripts/clean.py"


rule figures:
    input:
        report=rules.clean.output.report,
        suitability=suitability_input(config),
        code=code("scripts/figures.py"),
        font="resources/fonts/WenQuanYiMicroHei.ttf",
    output:
        suitability=report(
            "results/figures/suitability.png",
            caption="../report/suitability.rst",
            category="1. Data",
        ),
        lengths=report(
            "results/figures/lengths.png",
            caption="../report/lengths.rst",
            category="1. Data",
        ),
        cells=report(
            "results/figures/cells.png",
            caption="../report/cells.rst",
            category="1. Data",
        ),
    log:
        "logs/figures.log",
    conda:
        "../envs/data.yaml"
    params:
        view=figures_view(config),
    script:
        "../scripts/figures.py"
