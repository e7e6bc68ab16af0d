# Manufacture: one job per style × round. Each job calls the configured LLM (or the offline teacher it
# starts itself) through the persistent answer cache, which lives outside results/ and is not an output:
# deleting results/ and rerunning makes 0 requests. Parallel jobs share the cache safely (SQLite WAL).

import re  # noqa: E402

from zhufu.config import shard_config  # noqa: E402  (light: the stage's modules load only in its jobs)


wildcard_constraints:
    round=r"\d+",
    style="|".join(map(re.escape, STYLES)),


rule generate:
    input:
        suitability=lambda wc: config["grid"]["suitability"] or [],
        code=code("scripts/generate.py"),
        # the offline teacher's phrase bank is its model: an edit reruns the shards (and is a new cache key)
        phrases=lambda wc: (
            "resources/phrases.yaml" if config["provider"]["kind"] == "offline" else []
        ),
    output:
        shard="results/raw/{style}/round_{round}.json",
    log:
        "logs/generate/{style}/round_{round}.log",
    benchmark:
        "benchmarks/generate/{style}/round_{round}.tsv"
    conda:
        "../envs/generate.yaml"
    params:
        # what shapes the shard (the provider's identity, not its rates or budget: scripts/generate.py reads
        # those from the config at run time, so changing them reruns nothing)
        shard_config=lambda wc: shard_config(config, wc.style),
        cache=config["cache"],
    script:
        "../scripts/generate.py"


SHARDS = expand(rules.generate.output.shard, style=STYLES, round=ROUNDS)


rule shards:
    input:
        SHARDS,
