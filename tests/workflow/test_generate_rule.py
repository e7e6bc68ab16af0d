"""The generate rule under real Snakemake with the offline teacher: shards, logs, and a rerun from the cache.

Two rounds of the default grid (3 styles × 2 rounds = 6 shard jobs, 204 cells), not its six: each shard job is a
process of its own, and what is checked here does not change with their number."""

from __future__ import annotations

import shutil
import sqlite3

import pytest
from helpers import run_cmd

ROUNDS = 2
CELLS = 34 * 3 * ROUNDS  # the default grid's 34 generated recipient × scene pairs, × 3 styles, per round


def shards_command(project, name: str, overlay: str) -> list[str]:
    """`snakemake shards` over config.yaml and `overlay` (written to `name` in the project): two rounds, plus it."""
    (project / name).write_text(f"rounds: {ROUNDS}\n{overlay}", encoding="utf-8")
    return ["snakemake", "shards", "--workflow-profile", "none", "--cores", "2", "--configfile", name]


@pytest.mark.slow
@pytest.mark.timeout(1500)  # two snakemake runs of up to 600 s each
def test_snakemake_shards_then_rerun_after_deleting_results_makes_no_requests(project):
    smk = shards_command(project, "rounds.yaml", "")
    first = run_cmd(smk, project, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    shards = sorted(project.glob("results/raw/*/round_*.json"))
    assert len(shards) == 3 * ROUNDS
    before = {p.relative_to(project): p.read_bytes() for p in shards}
    cache = project / ".zhufu-cache" / "llm.sqlite"
    rows = sqlite3.connect(cache).execute("SELECT COUNT(*) FROM answers").fetchone()[0]
    shutil.rmtree(project / "results")
    second = run_cmd(smk, project, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert {
        p.relative_to(project): p.read_bytes() for p in project.glob("results/raw/*/round_*.json")
    } == before
    assert sqlite3.connect(cache).execute("SELECT COUNT(*) FROM answers").fetchone()[0] == rows
    # every shard's log (the loop runs 6 times: asserted above) ends with the rerun's summary
    for shard in shards:
        log = project / "logs/generate" / shard.relative_to(project / "results/raw").with_suffix(".log")
        assert log.is_file(), f"no log where the generate rule writes it: {log}"
        assert " 0 requested" in log.read_text(encoding="utf-8").splitlines()[-1], log


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_snakemake_with_provider_batch_writes_the_direct_shards_from_one_batch_per_shard(project):
    """The default grid (two rounds) with provider.batch: one batch per shard job (threads 0: a poller holds no core),
    no chat completion, the same shards as direct calls; `snakemake -n` afterwards plans nothing."""
    import json

    smk = shards_command(
        project, "batch.yaml", "provider:\n  batch: true\n  batch_options: {poll_s: 0.5, poll_max_s: 1}\n"
    )
    first = run_cmd(smk, project, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    shards = sorted(project.glob("results/raw/*/round_*.json"))
    assert len(shards) == 3 * ROUNDS
    served = [
        json.loads(line.split("offline teacher served: ", 1)[1])
        for log in project.glob("logs/generate/*/*.log")
        for line in log.read_text(encoding="utf-8").splitlines()
        if "offline teacher served: " in line
    ]
    assert len(served) == 3 * ROUNDS
    assert sum(s["batches"] for s in served) == 3 * ROUNDS and sum(s["requests"] for s in served) == 0
    cache = project / ".zhufu-cache" / "llm.sqlite"
    db = sqlite3.connect(cache)
    assert db.execute("SELECT state, COUNT(*), SUM(lines) FROM batches GROUP BY state").fetchall() == [
        ("collected", 3 * ROUNDS, CELLS)
    ]
    assert db.execute("SELECT via, COUNT(*) FROM spend GROUP BY via").fetchall() == [("batch", CELLS)]
    dry = run_cmd([*smk, "-n"], project, timeout=300)
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert "Nothing to be done" in dry.stdout + dry.stderr
    # the direct path over the same cache: every answer is found, nothing is asked, the shards are equal
    batch = {p.relative_to(project): p.read_bytes() for p in shards}
    shutil.rmtree(project / "results")
    direct = run_cmd(shards_command(project, "rounds.yaml", ""), project, timeout=600)
    assert direct.returncode == 0, direct.stderr[-3000:]
    assert {
        p.relative_to(project): p.read_bytes() for p in project.glob("results/raw/*/round_*.json")
    } == batch
