"""The generate stage end to end against a real fault server: cache, reruns, failures, budget, estimate,
suitability, kill -9."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from faultserver import FaultServer
from gen_helpers import KEY, all_shards, make_cli_config, make_config, n_cells, read_records, write_config
from helpers import ROOT

from zhufu import grid
from zhufu.config import shard_config, with_operation
from zhufu.errors import ProviderError
from zhufu.generate.estimate import estimate_shards
from zhufu.generate.run import generate_shards
from zhufu.grid import iter_cells


@pytest.fixture(autouse=True)
def key_env(monkeypatch):
    monkeypatch.setenv("ZHUFU_TEST_KEY", KEY)


def _run(config, tmp_path, out="raw"):
    return generate_shards(
        config, all_shards(config, tmp_path / out), tmp_path / "cache.sqlite", progress=False
    )


def _cached_rows(tmp_path) -> int:
    with sqlite3.connect(tmp_path / "cache.sqlite") as conn:
        return conn.execute("SELECT COUNT(*) FROM answers").fetchone()[0]


def test_records_follow_the_contract(tmp_path):
    with FaultServer() as server:
        config = make_config(server)
        _run(config, tmp_path)
    records = read_records(tmp_path / "raw")
    assert len(records) == n_cells(config)
    rec = next(r for r in records if r["meta"]["style"] == "小红书" and r["meta"]["round"] == 1)
    cell = grid.Cell("小红书", 1, rec["meta"]["recipient"], rec["meta"]["scene"])
    prompt = grid.build_prompt(config, cell)
    assert rec["id"] == grid.record_id(config["seed"], cell) == prompt.id
    assert rec["conversation"] == [
        {"system": config["system_prompt"], "input": prompt.input, "output": rec["conversation"][0]["output"]}
    ]
    assert rec["conversation"][0]["input"].endswith("，小红书风格")
    assert rec["conversation"][0]["output"].strip()
    assert rec["meta"]["prompt"] == prompt.messages[-1]["content"]
    assert set(rec["meta"]) == {
        "recipient",
        "scene",
        "style",
        "round",
        "provider",
        "model",
        "prompt",
        "usage",
    }


def test_rerun_makes_zero_requests_and_same_shards(tmp_path):
    with FaultServer() as server:
        config = make_config(server)
        _run(config, tmp_path, "a")
        first = server.requests
        _run(config, tmp_path, "b")
        assert server.requests == first == n_cells(config)
    for s, r, path in all_shards(config, tmp_path / "a"):
        assert path.read_bytes() == (tmp_path / "b" / s / f"round_{r}.json").read_bytes()


def test_same_prompt_in_two_rounds_is_two_draws(tmp_path):
    with FaultServer() as server:
        config = make_config(server)
        config["injections"] = [""]
        config["styles"] = {"严肃": config["styles"]["严肃"]}  # no few-shot: round 0 and 1 prompts are equal
        _run(config, tmp_path)
        assert server.successes == n_cells(config) and server.stats()["max_successes_per_prompt"] == 2


def test_adding_a_scene_requests_only_new_cells(tmp_path):
    with FaultServer() as server:
        config = make_config(server)
        _run(config, tmp_path)
        before = server.requests
        config["grid"]["scenes"].append("中秋节")
        _run(config, tmp_path)
        assert server.requests - before == len(config["styles"]) * config["rounds"] * len(
            config["grid"]["recipients"]
        )


def test_suitability_matrix_skips_cells(tmp_path):
    csv = tmp_path / "suit.csv"
    csv.write_text(
        "recipient,生日,春节,七夕节,工作升职\n姐姐,1,1,1,1\n爷爷,1,1,0,0\n领导,1,1,0,1\n", encoding="utf-8"
    )
    with FaultServer() as server:
        config = make_config(server)
        config["grid"]["suitability"] = str(csv)
        est = estimate_shards(config, [("严肃", 0)], tmp_path / "cache.sqlite")[0]
        assert (est.cells, est.skipped, est.calls) == (9, 3, 9)
        _run(config, tmp_path)
        assert server.requests == 9 * 4
    pairs = {(r["meta"]["recipient"], r["meta"]["scene"]) for r in read_records(tmp_path / "raw")}
    assert (
        ("爷爷", "七夕节") not in pairs
        and ("领导", "七夕节") not in pairs
        and ("爷爷", "工作升职") not in pairs
    )
    assert len(pairs) == 9
    # The streaming walk is exactly grid.cells().
    matrix = grid.load_suitability(csv)
    assert list(iter_cells(config, "严肃", 1, matrix)) == grid.cells(config, "严肃", 1, matrix)


def test_failed_cells_mean_no_shard_and_the_rerun_asks_only_for_them(tmp_path):
    with FaultServer(rates={"500": 0.4}) as server:
        config = make_config(server, max_attempts=1)
        with pytest.raises(ProviderError) as e:
            _run(config, tmp_path)
        msg = str(e.value)
        assert "failed after all retries" in msg and "HTTP 500" in msg and "\n" not in msg
        done = _cached_rows(tmp_path)
        assert 0 < done < n_cells(config)
        server.rates = {}
        before = server.requests
        _run(config, tmp_path)
        assert server.requests - before == n_cells(config) - done
        assert server.successes == n_cells(config)
    assert len(read_records(tmp_path / "raw")) == n_cells(config)


def test_failed_shard_is_not_written_but_complete_ones_are(tmp_path):
    stale = tmp_path / "raw" / "严肃" / "round_0.json"
    stale.parent.mkdir(parents=True)
    stale.write_text("[]")
    with FaultServer() as server:
        server.poison = {"商务严肃风格": "empty"}  # every 严肃 prompt gets an empty answer
        config = make_config(server, max_attempts=2)
        with pytest.raises(
            ProviderError, match=r"shards not written: 严肃/round_0, 严肃/round_1\..*empty answer"
        ):
            _run(config, tmp_path)
    assert not stale.exists()  # the earlier run's shard is not left to pass for this one
    assert sorted(p.name for p in tmp_path.glob("raw/小红书/*.json")) == ["round_0.json", "round_1.json"]
    assert _cached_rows(tmp_path) == n_cells(config) // 2  # empty answers are failures, never cached


def test_budget_stops_cleanly_and_keeps_what_was_paid(tmp_path):
    with FaultServer() as server:
        # ~1 unit per call (prompt ~60 tokens × 10000/1M + up to 64 output tokens × 10000/1M).
        config = make_config(
            server, price={"input_per_1m": 10000, "output_per_1m": 10000}, budget=8.0, concurrency=2
        )
        with pytest.raises(
            ProviderError, match=r"budget 8.0000 CNY reached \(spent by all runs: \d+\.\d+ CNY.*; \d+ cells"
        ):
            _run(config, tmp_path)
        paid = server.successes
        assert 0 < paid < n_cells(config) and _cached_rows(tmp_path) == paid
        spent = sum(
            (p + c) * 10000 / 1e6
            for p, c in sqlite3.connect(tmp_path / "cache.sqlite").execute(
                "SELECT prompt_tokens, completion_tokens FROM answers"
            )
        )
        assert spent <= 8.0
        config["provider"]["budget"] = None
        _run(config, tmp_path)
        assert server.successes == n_cells(config)


def test_estimate_and_dry_run_spend_nothing(tmp_path, capsys, caplog):
    from zhufu.cli import main

    with FaultServer() as server:
        config = make_cli_config(server, price={"input_per_1m": 2, "output_per_1m": 8, "currency": "CNY"})
        cfg = write_config(tmp_path / "c.yaml", config)
        common = ["--configfile", str(cfg), "--cache", str(tmp_path / "cache.sqlite")]
        assert main(["estimate", *common]) == 0
        out = capsys.readouterr().out
        assert f"total: {n_cells(config)} calls" in out and "CNY" in out and "严肃/round_1" in out
        assert main(["generate", *common, "--dry-run", "-o", str(tmp_path / "raw")]) == 0
        assert f"total: {n_cells(config)} calls" in capsys.readouterr().out
        assert (
            server.requests == 0
            and not (tmp_path / "raw").exists()
            and not (tmp_path / "cache.sqlite").exists()
        )
        with caplog.at_level("INFO", logger="zhufu.generate"):
            assert main(["generate", *common, "-o", str(tmp_path / "raw"), "--no-progress"]) == 0
        summaries = [r.getMessage() for r in caplog.records if "shard written" in r.getMessage()]
        assert len(summaries) == 6 and "0 failed" in summaries[0]
        assert main(["estimate", *common]) == 0
        assert "total: 0 calls" in capsys.readouterr().out


def test_shard_config_holds_only_this_style():
    config = make_config()
    sub = shard_config(config, "严肃")
    assert list(sub["styles"]) == ["严肃"] and "rounds" not in sub
    # the provider's identity only: what Snakemake sees as params; the rest comes back at run time
    assert sorted(sub["provider"]) == [
        "base_url",
        "kind",
        "max_tokens",
        "model",
        "model_path",
        "name",
        "temperature",
        "top_p",
    ]
    assert with_operation(sub, config)["provider"] == config["provider"]


def test_kill_9_mid_run_then_rerun_pays_nothing_twice(tmp_path):
    """SIGKILL while calls are in flight (the server holds them), then rerun: every cell paid exactly once."""
    with FaultServer(latency=0.01) as server:
        config = make_cli_config(server, concurrency=4, timeout_s=30)
        cfg = write_config(tmp_path / "c.yaml", config)
        cache = tmp_path / "cache.sqlite"
        args = [
            sys.executable,
            "-m",
            "zhufu",
            "generate",
            "--config",
            str(cfg),
            "--cache",
            str(cache),
            "-o",
            str(tmp_path / "raw"),
            "--no-progress",
        ]
        env = {**os.environ, "ZHUFU_TEST_KEY": KEY}
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120  # generous: a loaded 2-core CI machine starts python slowly
        while server.successes < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        server.hold = True
        # Wait until the client has stored every answer it was sent, with more calls hanging in flight.
        # Calls already past the hold when it was set still finish, so the count must also stay still
        # for a while: on a loaded machine the client may read (and store) them late.
        seen, still_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            if server.successes != seen:
                seen, still_since = server.successes, time.monotonic()
            if (
                time.monotonic() - still_since > 1.0
                and cache.exists()
                and _cached_rows(tmp_path) == server.successes
                and server.requests > server.successes
            ):
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        paid_before = server.successes
        assert 0 < paid_before < n_cells(config)
        assert not list(tmp_path.glob("raw/*/round_*.json"))  # no shard, and certainly no corrupt one
        time.sleep(0.5)  # let the server see the dead connections: their held answers are never delivered
        server.hold = False
        rerun = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert rerun.returncode == 0, rerun.stderr
        assert server.successes == n_cells(config)  # the rerun paid only for cells never answered
    records = read_records(tmp_path / "raw")
    assert len(records) == n_cells(config) == len({r["id"] for r in records})
    # Every shard is whole: a JSON list holding exactly its style's and round's cells.
    per_shard = n_cells(config) // len(all_shards(config, tmp_path / "raw"))
    for style, round_, path in all_shards(config, tmp_path / "raw"):
        shard = json.loads(path.read_text(encoding="utf-8"))
        assert len(shard) == per_shard, path
        assert {(r["meta"]["style"], r["meta"]["round"]) for r in shard} == {(style, round_)}, path


def test_backoff_is_jittered_capped_and_never_shorter_than_retry_after():
    from zhufu.generate.limits import backoff_delay

    delays = [backoff_delay(8, base=1.0, cap=5.0) for _ in range(200)]
    assert max(delays) <= 5.0 and len(set(delays)) > 100
    assert all(backoff_delay(1, base=0.1, cap=1.0, retry_after=3.0) >= 3.0 for _ in range(50))


def test_tpm_limit_accepts_a_request_larger_than_its_bucket():
    """A request larger than the token bucket is let through (it takes the whole bucket) instead of
    raising or waiting forever; the next request then waits for the bucket to drain."""
    import asyncio

    from zhufu.generate.limits import Limits

    async def go() -> tuple[float, float]:
        limits = Limits(rpm=6000, tpm=6000)  # a 1000-token bucket that drains at 100 tokens/s
        start = time.monotonic()
        await asyncio.wait_for(limits.acquire(5000), timeout=2.0)
        first = time.monotonic() - start
        await asyncio.wait_for(limits.acquire(100), timeout=10.0)
        return first, time.monotonic() - start - first

    first, second = asyncio.run(go())
    assert first < 0.5  # an empty bucket lets it in at once
    assert second >= 0.7  # it filled the bucket: 100 more tokens wait ~1 s for the bucket to drain
