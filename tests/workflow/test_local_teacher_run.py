"""A workflow whose teacher is a neural model: the tuned tiny model of the session's finished default run
(tests/conftest.py), served by `zhufu serve-model`, which the workflow starts itself (`provider.kind:
local`) in its one generate job. The shards, the merged data, a rerun after deleting results/ that makes 0
requests, and no server left behind."""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest
import yaml
from helpers import BIN, copy_project, run_cmd

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

STYLES = ("正常", "严肃", "小红书")
ROUNDS = 2


@pytest.fixture(scope="module")
def second(default_run, tmp_path_factory):
    """A fresh project whose teacher is the default run's tuned model, after one run to merged.json."""
    project = copy_project(tmp_path_factory.mktemp("local-teacher") / "project")
    overlay = {
        "rounds": ROUNDS,
        "provider": {
            "kind": "local",
            "model": "zhufu-tuned-tiny",
            "model_path": str(default_run / "results/model/merged"),
            "temperature": 0.8,
            "max_tokens": 48,
            "gpus": 0,
            "concurrency": 16,
        },
    }
    (project / "local.yaml").write_text(yaml.safe_dump(overlay, allow_unicode=True), encoding="utf-8")
    result = snakemake(project)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    return project


def snakemake(project):
    return run_cmd(
        # the target before --configfile, which takes every path after it
        [str(BIN / "snakemake"), "results/data/merged.json", "--cores", "2", "--configfile", "local.yaml"],
        cwd=project,
        timeout=1800,
    )


def requested(log: str) -> list[int]:
    return [int(n) for n in re.findall(r": \d+ cells, \d+ cached, (\d+) requested", log)]


def test_one_job_writes_every_shard_from_the_tuned_model(second):
    log = (second / "logs/generate/local.log").read_text(encoding="utf-8")
    assert "local teacher: ready at http://127.0.0.1:" in log
    counts = requested(log)
    assert len(counts) == len(STYLES) * ROUNDS and all(n > 0 for n in counts)
    merged = json.loads((second / "results/data/merged.json").read_text(encoding="utf-8"))
    shards = [second / f"results/raw/{s}/round_{r}.json" for s in STYLES for r in range(ROUNDS)]
    total = 0
    for shard in shards:
        records = json.loads(shard.read_text(encoding="utf-8"))
        assert records, shard
        assert {r["meta"]["provider"] for r in records} == {"local"}
        assert {r["meta"]["model"] for r in records} == {"zhufu-tuned-tiny"}
        assert all(r["conversation"][0]["output"].strip() for r in records)
        total += len(records)
    assert len(merged) == total == sum(counts)
    pid = int(re.search(r"local teacher: stopped \(pid (\d+)\)", log)[1])
    assert not os.path.exists(f"/proc/{pid}")


def test_a_rerun_after_deleting_results_makes_no_request(second):
    before = (second / "results/data/merged.json").read_bytes()
    shutil.rmtree(second / "results")
    result = snakemake(second)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    log = (second / "logs/generate/local.log").read_text(encoding="utf-8")
    assert requested(log) == [0] * (len(STYLES) * ROUNDS)
    assert (second / "results/data/merged.json").read_bytes() == before
