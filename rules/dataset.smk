# Data stages after generation: (import) → merge → clean (train.json, report, card) → figures.
# Everything the scripts use arrives through params:, so changing a cleaning threshold reruns clean and what
# follows it, never generation. The code is zhufu/data/.

from zhufu.data.card import provenance_from_config

# An import is a path, or {path, rule_set}: its rows are then cleaned with that rule set of clean.rule_sets.
IMPORTS = {
    Path(i if isinstance(i, str) else i["path"]).stem: (
        {"path": i, "rule_set": None} if isinstance(i, str) else {"rule_set": None, **i}
    )
    for i in config["clean"]["imports"]
}
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
        parse_config=lambda wc: {
            **{k: config[k] for k in ("grid", "styles", "system_prompt")},
            # only this import's rule set, so editing another set or a threshold reruns no import
            "clean": {
                "rule_sets": {
                    k: v
                    for k, v in config["clean"]["rule_sets"].items()
                    if k == IMPORTS[wc.name]["rule_set"]
                }
            },
        },
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
        suitability=lambda wc: config["grid"]["suitability"] or [],
        # the user's review decisions (zhufu review), once the file exists: a new decision reruns clean
        decisions=lambda wc: (
            config["review"]["decisions"]
            if os.path.exists(config["review"]["decisions"])
            else []
        ),
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
    params:
        rules=config["clean"],
        styles=config["styles"],
        system_prompt=config["system_prompt"],
        use_suitability=bool(config["grid"]["suitability"]),
        # provider, model, seed and the hash of the data-shaping config keys, for the card
        provenance=provenance_from_config(config),
    script:
        "../scripts/clean.py"


rule figures:
    input:
        report=rules.clean.output.report,
        suitability=lambda wc: config["grid"]["suitability"] or [],
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
        recipients=config["grid"]["recipients"],
        scenes=config["grid"]["scenes"],
        styles=config["styles"],
    script:
        "../scripts/figures.py"
