"""The generate rule under real Snakemake with the offline teacher: shards, logs, and a rerun from the cache."""

from __future__ import annotations

import shutil
import sqlite3

import pytest
from helpers import run_cmd


@pytest.mark.slow
@pytest.mark.timeout(1500)  # two snakemake runs of up to 600 s each
def test_snakemake_shards_then_rerun_after_deleting_results_makes_no_requests(project):
    smk = ["snakemake", "--workflow-profile", "none", "--cores", "2", "shards"]
    first = run_cmd(smk, project, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    shards = sorted(project.glob("results/raw/*/round_*.json"))
    assert len(shards) == 3 * 6  # the default config: 3 styles × 6 rounds
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
    # every shard's log (the loop runs 18 times: asserted above) ends with the rerun's summary
    for shard in shards:
        log = project / "logs/generate" / shard.relative_to(project / "results/raw").with_suffix(".log")
        assert log.is_file(), f"no log where the generate rule writes it: {log}"
        assert " 0 requested" in log.read_text(encoding="utf-8").splitlines()[-1], log
