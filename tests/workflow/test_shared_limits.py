"""A real user's run under real Snakemake: one config for the CLI and the workflow, and a budget and a rate
cap that hold for all the parallel generate jobs of a run together (measured at the server)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import yaml
from faultserver import FaultServer
from helpers import ROOT, run_cmd

pytestmark = pytest.mark.slow

SHIPPED = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "configs").glob("*.yaml"))
KEY_ENV = "ZHUFU_TEST_SECRET_KEY"
SECRET = "sk-test-2c1f0e9d8b7a65432"


def _totals(report: dict) -> tuple:
    t = report["total"]
    return t["calls"], t["prompt_tokens"], t["completion_tokens"], t["cost"], t["cached"]


def test_zhufu_estimate_and_snakemake_estimate_agree_on_every_shipped_config(project):
    assert len(SHIPPED) >= 3, SHIPPED
    combos = [[c] for c in SHIPPED] + [["configs/full-grid.yaml", "configs/tianji-v2-styles.yaml"]]
    seen = {}
    for files in combos:
        (project / "results/estimate.json").unlink(missing_ok=True)
        smk = run_cmd(["snakemake", "--cores", "1", "estimate", "--configfile", *files], project, timeout=300)
        assert smk.returncode == 0, smk.stderr[-2000:]
        workflow = json.loads((project / "results/estimate.json").read_text(encoding="utf-8"))
        cli = run_cmd(["zhufu", "estimate", "--json", "--configfile", *files], project, timeout=120)
        assert cli.returncode == 0, cli.stderr
        assert _totals(json.loads(cli.stdout)) == _totals(workflow), files
        assert json.loads(cli.stdout) == workflow
        assert f"total: {workflow['total']['calls']} calls" in smk.stdout  # the rule prints the table
        seen[" ".join(files)] = workflow["total"]
    # The seed's DeepSeek run: the workflow's full grid (2478 cells, ~2.46 CNY; a single-file load said 2.37),
    # less the 20% of pairs config.yaml holds out for the evaluation: 1980 calls, ~1.96 CNY.
    deepseek = seen["configs/deepseek-internlm2-7b-qlora.yaml"]
    assert deepseek["calls"] == 1980 and deepseek["cost"] == pytest.approx(1.95751)
    # The old `--config` spelling is the same option.
    alias = run_cmd(
        ["zhufu", "estimate", "--json", "--config", "configs/full-grid.yaml"], project, timeout=120
    )
    assert alias.returncode == 0, alias.stderr
    assert json.loads(alias.stdout)["total"] == seen["configs/full-grid.yaml"]


def _overlay(project: Path, server: FaultServer, **provider) -> Path:
    config = {
        "rounds": 2,
        "grid": {
            "recipients": ["姐姐", "爷爷", "领导"],
            "scenes": ["生日", "春节"],
            "suitability": None,
            "holdout": {"fraction": 0},
        },
        "provider": {
            "kind": "openai",
            "model": "fault-model",
            "base_url": server.url,
            "api_key_env": KEY_ENV,
            "concurrency": 4,
            "backoff_s": 0.05,
            "backoff_max_s": 0.5,
            **provider,
        },
    }
    path = project / "run.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return path


CELLS = 3 * 2 * 3 * 2  # recipients × scenes × config.yaml's 3 styles × 2 rounds: 6 generate jobs


def max_in_any_window(times: list[float], window: float) -> int:
    times = sorted(times)
    return max((sum(1 for u in times[i:] if u - t <= window) for i, t in enumerate(times)), default=0)


def test_rpm_cap_holds_over_all_parallel_generate_jobs_at_the_server(project):
    # The test shortens the rate window from 60 s to 2 s (ZHUFU_RATE_WINDOW_S, for tests only), so that
    # several windows pass in seconds; the cap is per window as it is per minute.
    rpm, window = 6, 2.0
    with FaultServer(latency=0.02, api_key=SECRET) as server:
        cfg = _overlay(project, server, rpm=rpm)
        smk = run_cmd(
            ["snakemake", "--workflow-profile", "none", "--cores", "6", "shards", "--configfile", str(cfg)],
            project,
            timeout=600,
            env={KEY_ENV: SECRET, "ZHUFU_RATE_WINDOW_S": str(window)},
        )
        assert smk.returncode == 0, smk.stderr[-3000:]
        times = list(server.request_times)
    assert len(times) == CELLS and server.successes == CELLS
    highest = max_in_any_window(times, window)
    print(
        f"\n{CELLS} requests from 6 parallel jobs; highest count in any {window:g} s window: {highest} (cap {rpm})"
    )
    assert highest <= rpm


def test_budget_holds_over_all_parallel_generate_jobs(project):
    price, budget = 2000, 8.0  # per 1M tokens: ~0.5 units per call (worst case ~0.6), so ~14 calls fit
    with FaultServer(api_key=SECRET) as server:
        cfg = _overlay(
            project,
            server,
            price={"input_per_1m": price, "output_per_1m": price},
            budget=budget,
            max_tokens=64,
        )
        smk = run_cmd(
            ["snakemake", "--workflow-profile", "none", "--cores", "6", "--keep-going", "shards"]
            + ["--configfile", str(cfg)],
            project,
            timeout=600,
            env={KEY_ENV: SECRET},
        )
        assert smk.returncode != 0  # the budget stopped the run
        paid_calls = server.successes
    rows = sqlite3.connect(project / ".zhufu-cache/llm.sqlite").execute(
        "SELECT prompt_tokens, completion_tokens FROM answers"
    )
    paid = sum((p + c) * price / 1e6 for p, c in rows)
    print(f"\nbudget {budget}: {paid_calls} calls paid, {paid:.3f} spent over 6 parallel jobs")
    assert 3 <= paid_calls < CELLS and paid <= budget
    assert "budget 8.0000 CNY reached" in smk.stderr
    spend = run_cmd(["zhufu", "spend", "--configfile", str(cfg), "--json"], project, timeout=60)
    (row,) = json.loads(spend.stdout)
    assert row["calls"] == paid_calls and row["cost"] == pytest.approx(paid)
