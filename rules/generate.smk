# Manufacture: one job per style × round (one job for them all with a local teacher, below). Each job calls
# the configured LLM (or the offline teacher it starts itself) through the persistent answer cache, which lives outside results/ and is not an output:
# deleting results/ and rerunning makes 0 requests. Parallel jobs share the cache safely (SQLite WAL), and
# with it the spend ledger (the budget) and the request log (the rpm/tpm caps) of the whole run. They are
# local rules (Snakefile): on a cluster they run on the submitting host, where the internet, the key and
# the cache are (WAL needs all its processes on one host), never in a compute job.

import re  # noqa: E402

# light imports: the stage's modules load only in its jobs
from zhufu.config import (  # noqa: E402
    cache_path,
    estimate_view,
    shard_config,
    shards_config,
    suitability_input,
)


wildcard_constraints:
    round=r"\d+",
    style="|".join(map(re.escape, STYLES)),


SHARD = "results/raw/{style}/round_{round}.json"
# cells that failed for good (under provider.max_failed_share); empty when none
FAILURES = "results/raw/{style}/round_{round}.failures.jsonl"
SHARDS = expand(SHARD, style=STYLES, round=ROUNDS)
# A local teacher (provider.kind: local) is a model server the job starts and stops itself: one job makes
# every shard, so one server is started (one GPU job on a cluster) and one process writes the cache.
LOCAL_TEACHER = config["provider"]["kind"] == "local"


if not LOCAL_TEACHER:

    rule generate:
        input:
            suitability=suitability_input(config),
            code=code("scripts/generate.py"),
            # the offline teacher's phrase bank is its model: an edit reruns the shards (and is a new cache key)
            phrases=lambda wc: (
                "resources/phrases.yaml"
                if config["provider"]["kind"] == "offline"
                else []
            ),
        output:
            shard=SHARD,
            failures=FAILURES,
        log:
            "logs/generate/{style}/round_{round}.log",
        benchmark:
            "benchmarks/generate/{style}/round_{round}.tsv"
        conda:
            "../envs/generate.yaml"
        # With provider.batch the job sleeps between polls of its batch (zhufu/generate/batch.py): it holds no
        # core, so the shards' batches wait side by side and the other rules keep the cores.
        threads: 0 if config["provider"].get("batch") else 1
        params:
            # what shapes the shard (the provider's identity, not its rates or budget: scripts/generate.py reads
            # those from the config at run time, so changing them reruns nothing)
            shard_config=lambda wc: shard_config(config, wc.style),
            cache=cache_path(config),
        script:
            "../scripts/generate.py"

else:

    rule generate_local:
        input:
            suitability=suitability_input(config),
            code=code("scripts/generate_local.py"),
            # the teacher's weights (a retrained model is a new cache key, and reruns the shards)
            teacher=config["provider"]["model_path"],
        output:
            shards=SHARDS,
            failures=expand(FAILURES, style=STYLES, round=ROUNDS),
        log:
            "logs/generate/local.log",
        benchmark:
            "benchmarks/generate/local.tsv"
        conda:
            "../envs/generate.yaml"
        threads: 2
        resources:
            gpu=config["provider"]["gpus"],
        params:
            # every style's shard config (the provider's identity: model_path, not launch or gpus)
            shards_config=shards_config(config),
            rounds=ROUNDS,
            cache=cache_path(config),
        script:
            "../scripts/generate_local.py"


rule shards:
    input:
        SHARDS,


# What a run would spend, before spending anything: `snakemake estimate` (not part of `all`). It reads the
# cache (read-only) to count what is already paid for, so it reruns whenever the cache has changed.
rule estimate:
    input:
        suitability=suitability_input(config),
        cache=lambda wc: (
            [cache_path(config)] if os.path.exists(cache_path(config)) else []
        ),
        code=code("scripts/estimate.py"),
    output:
        json="results/estimate.json",
    log:
        "logs/estimate.log",
    conda:
        "../envs/generate.yaml"
    params:
        # what shapes every shard's prompts, and the shards (style × round)
        view=estimate_view(config),
        cache=cache_path(config),
    script:
        "../scripts/estimate.py"
