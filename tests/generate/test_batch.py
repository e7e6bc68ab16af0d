"""Generation through the batch API (provider.batch) against the offline teacher's real Batch endpoints, with
the real SDK clients: the same shards as direct calls, one batch, resume after kill -9, expiry, error lines,
the budget and the ledger."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from gen_helpers import all_shards, make_config, n_cells, write_config
from helpers import ROOT

from zhufu.errors import ProviderError
from zhufu.generate.cache import AnswerCache
from zhufu.generate.run import failures_path, generate_shards
from zhufu.teacher.server import start_teacher, teacher_stats

FAST = {"poll_s": 0.1, "poll_max_s": 0.3}
PRICE = {"input_per_1m": 2.0, "output_per_1m": 8.0, "currency": "CNY"}


@pytest.fixture
def teacher():
    srv = start_teacher(batch_delay_s=0.2)
    yield srv
    srv.shutdown()
    srv.server_close()


def offline(**provider):
    """The small grid, answered by the offline teacher (the URL comes as base_url to generate_shards)."""
    settings = {
        "kind": "offline",
        "model": "zhufu-offline-teacher",
        "api_key_env": None,
        "price": PRICE,
        "batch_options": FAST,
        **provider,
    }
    return make_config(**settings)


def run(config, tmp_path, teacher, out="raw", cache="cache.sqlite"):
    return generate_shards(
        config,
        all_shards(config, tmp_path / out),
        tmp_path / cache,
        base_url=teacher.base_url,
        progress=False,
    )


def shard_bytes(out_dir):
    return {p.relative_to(out_dir): p.read_bytes() for p in sorted(out_dir.rglob("round_*.json"))}


def batches_in(cache_path):
    return sqlite3.connect(cache_path).execute("SELECT id, state, status, lines FROM batches").fetchall()


def control(teacher, **settings):
    import urllib.request

    req = urllib.request.Request(
        teacher.base_url.removesuffix("/v1") + "/zhufu/control",
        data=json.dumps(settings).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    urllib.request.urlopen(req, timeout=5).close()


def test_batch_shards_equal_direct_shards_byte_for_byte_from_one_batch_and_no_completions(tmp_path, teacher):
    config = offline()
    run(config, tmp_path, teacher, "direct", "direct.sqlite")
    direct_calls = teacher_stats(teacher.base_url)["requests"]
    assert direct_calls == n_cells(config)
    stats = run(offline(batch=True), tmp_path, teacher, "batch", "batch.sqlite")
    after = teacher_stats(teacher.base_url)
    assert after["requests"] == direct_calls  # no chat completion by the batch run
    assert (after["batches"], after["batch_lines"], after["batch_repeats"]) == (1, n_cells(config), 0)
    assert shard_bytes(tmp_path / "batch") == shard_bytes(tmp_path / "direct")
    assert sum(s.requested for s in stats) == n_cells(config)
    assert [(state, status) for _, state, status, _ in batches_in(tmp_path / "batch.sqlite")] == [
        ("collected", "completed")
    ]
    # a rerun finds every answer cached: no batch, no request
    again = run(offline(batch=True), tmp_path, teacher, "batch", "batch.sqlite")
    assert sum(s.cached for s in again) == n_cells(config)
    assert teacher_stats(teacher.base_url)["batches"] == 1


def test_the_ledger_records_batch_answers_at_half_the_direct_price(tmp_path, teacher):
    run(offline(), tmp_path, teacher, "direct", "direct.sqlite")
    run(offline(batch=True), tmp_path, teacher, "batch", "batch.sqlite")
    with AnswerCache(tmp_path / "direct.sqlite") as c:
        (direct,) = c.spend_table()
    with AnswerCache(tmp_path / "batch.sqlite") as c:
        (batch,) = c.spend_table()
    assert (direct["via"], batch["via"]) == ("direct", "batch")
    assert direct["calls"] == batch["calls"] and direct["prompt_tokens"] == batch["prompt_tokens"]
    assert batch["cost"] == pytest.approx(direct["cost"] / 2)
    out = subprocess.run(
        [sys.executable, "-m", "zhufu", "spend", "--cache", str(tmp_path / "batch.sqlite")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert " batch " in out.stdout and f"{batch['cost']:.4f} CNY" in out.stdout


def test_max_lines_splits_the_cells_into_several_batch_files(tmp_path, teacher):
    config = offline(batch=True, batch_options={**FAST, "max_lines": 10})
    run(config, tmp_path, teacher)
    n = n_cells(config)
    stats = teacher_stats(teacher.base_url)
    assert stats["batches"] == -(-n // 10) and stats["batch_lines"] == n
    assert sorted(lines for *_, lines in batches_in(tmp_path / "cache.sqlite"))[-1] == 10


def test_an_expired_half_answered_batch_stores_its_answers_fails_the_rest_and_a_rerun_sends_only_those(
    tmp_path, teacher
):
    control(teacher, expire_share=0.5)
    config = offline(batch=True)
    n = n_cells(config)
    # the batch's lines are in shard order: the first half (小红书) answered, the second (严肃) expired
    with pytest.raises(
        ProviderError, match=r"shards not written: 严肃/round_0, 严肃/round_1\. .*batch_expired"
    ):
        run(config, tmp_path, teacher)
    written = sorted(str(p.relative_to(tmp_path / "raw")) for p in (tmp_path / "raw").rglob("round_?.json"))
    assert written == ["小红书/round_0.json", "小红书/round_1.json"]  # over max_failed_share: not 严肃's
    with AnswerCache(tmp_path / "cache.sqlite") as c:
        assert len(c) == n - n // 2
        assert [r["calls"] for r in c.spend_table()] == [n - n // 2]  # paid: the answered half only
    # within the allowed share the shards are written and the failures files list the expired cells
    shared = offline(batch=True, max_failed_share=1.0)
    control(teacher)
    before = teacher_stats(teacher.base_url)["batch_lines"]
    run(shared, tmp_path, teacher)
    assert teacher_stats(teacher.base_url)["batch_lines"] - before == n // 2  # only the missing cells
    assert teacher_stats(teacher.base_url)["batch_repeats"] == 0
    assert all(failures_path(p).read_text() == "" for _, _, p in all_shards(shared, tmp_path / "raw"))


def test_expired_cells_are_listed_in_the_failures_file_within_max_failed_share(tmp_path, teacher):
    control(teacher, expire_share=0.5)
    config = offline(batch=True, max_failed_share=1.0)
    run(config, tmp_path, teacher)
    rows = [
        json.loads(line)
        for _, _, p in all_shards(config, tmp_path / "raw")
        for line in failures_path(p).read_text(encoding="utf-8").splitlines()
    ]
    assert len(rows) == n_cells(config) // 2
    assert {r["reason"] for r in rows} == {"batch_expired"}


def test_error_lines_become_failures_with_their_status(tmp_path, teacher):
    control(teacher, error_every=4)
    config = offline(batch=True, max_failed_share=1.0)
    run(config, tmp_path, teacher)
    reasons = [
        json.loads(line)["reason"]
        for _, _, p in all_shards(config, tmp_path / "raw")
        for line in failures_path(p).read_text(encoding="utf-8").splitlines()
    ]
    assert len(reasons) == n_cells(config) // 4 and set(reasons) == {"HTTP 500 server_error"}


def test_the_budget_refuses_a_batch_before_creating_it(tmp_path, teacher):
    config = offline(batch=True, budget=0.0001)
    with pytest.raises(ProviderError, match=r"budget 0\.0001 CNY reached"):
        run(config, tmp_path, teacher)
    stats = teacher_stats(teacher.base_url)
    assert (stats["files"], stats["batches"]) == (0, 0)
    assert batches_in(tmp_path / "cache.sqlite") == []


def _cli(tmp_path, teacher, poll_s=0.1):
    config = offline(batch=True, batch_options={"poll_s": poll_s, "poll_max_s": poll_s})
    config["styles"]["正常"] = {
        "prompt": "正常风格",
        "max_chars": 30,
    }  # config.yaml's styles stay in the merge
    path = write_config(tmp_path / "config.yaml", config)
    return [
        sys.executable,
        "-m",
        "zhufu",
        "generate",
        "--config",
        str(path),
        "--cache",
        str(tmp_path / "cache.sqlite"),
        "-o",
        str(tmp_path / "raw"),
        "--base-url",
        teacher.base_url,
        "--no-progress",
    ]


def test_kill_9_after_the_batch_was_created_then_rerun_creates_no_second_batch_and_pays_nothing_twice(
    tmp_path, teacher
):
    teacher.batches.delay_s = 3.0  # the batch is still running when the job dies
    proc = subprocess.Popen(
        _cli(tmp_path, teacher), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if (tmp_path / "cache.sqlite").exists():
            try:
                if batches_in(tmp_path / "cache.sqlite"):
                    break
            except sqlite3.OperationalError:
                pass
        time.sleep(0.05)
    else:
        proc.kill()
        raise AssertionError("no batch recorded: " + proc.stderr.read().decode()[-2000:])
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    ((bid, state, _, lines),) = batches_in(tmp_path / "cache.sqlite")
    assert state == "open"
    rerun = subprocess.run(_cli(tmp_path, teacher), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "found 1 open batch(es)" in rerun.stderr
    stats = teacher_stats(teacher.base_url)
    assert (stats["batches"], stats["batch_answers"], stats["batch_repeats"], stats["requests"]) == (
        1,
        lines,
        0,
        0,
    )
    assert batches_in(tmp_path / "cache.sqlite") == [(bid, "collected", "completed", lines)]
    with AnswerCache(tmp_path / "cache.sqlite") as c:
        assert [r["calls"] for r in c.spend_table()] == [lines]  # each cell paid once


def test_a_batch_the_provider_lost_is_marked_lost_and_its_cells_sent_again(tmp_path, teacher):
    teacher.batches.delay_s = 3.0
    proc = subprocess.Popen(
        _cli(tmp_path, teacher), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (
        (tmp_path / "cache.sqlite").exists() and _safe_batches(tmp_path / "cache.sqlite")
    ):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    other = start_teacher(batch_delay_s=0.1)  # a provider that never heard of the batch: 404
    try:
        rerun = subprocess.run(_cli(tmp_path, other), cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert "does not know it (404)" in rerun.stderr
        assert teacher_stats(other.base_url)["batches"] == 1
    finally:
        other.shutdown()
        other.server_close()
    states = sorted(state for _, state, _, _ in batches_in(tmp_path / "cache.sqlite"))
    assert states == ["collected", "lost"]


def _safe_batches(path):
    try:
        return batches_in(path)
    except sqlite3.OperationalError:
        return []


def test_zhipuai_kind_generates_through_its_sdks_batches(tmp_path, teacher, monkeypatch):
    monkeypatch.setenv("ZHUFU_TEST_KEY", "id.secret")
    config = make_config(
        kind="zhipuai",
        model="glm-4",
        api_key_env="ZHUFU_TEST_KEY",
        batch=True,
        batch_options=FAST,
    )
    url = teacher.base_url.removesuffix("/v1") + "/api/paas/v4"
    generate_shards(
        config, all_shards(config, tmp_path / "raw"), tmp_path / "c.sqlite", base_url=url, progress=False
    )
    stats = teacher_stats(teacher.base_url)
    assert (stats["batches"], stats["requests"], stats["batch_answers"]) == (1, 0, n_cells(config))
    assert len(list((tmp_path / "raw").rglob("round_*.json"))) == len(config["styles"]) * config["rounds"]


def test_the_estimate_prices_a_batch_run_at_the_batch_rate(tmp_path):
    def total(**provider):
        config = offline(**provider)
        config["styles"]["正常"] = {"prompt": "正常风格", "max_chars": 30}
        path = write_config(tmp_path / "c.yaml", config)
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "zhufu",
                "estimate",
                "--config",
                str(path),
                "--cache",
                str(tmp_path / "none"),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout.splitlines()[0], float(out.stdout.rsplit("~", 1)[1].split()[0])

    (head_direct, direct), (head_batch, batch) = total(), total(batch=True)
    assert "direct prices" in head_direct and "batch API prices" in head_batch
    assert batch == pytest.approx(direct / 2, abs=1e-4)
    _, priced = total(batch=True, price={**PRICE, "batch_input_per_1m": 2.0, "batch_output_per_1m": 8.0})
    assert priced == pytest.approx(direct, abs=1e-4)  # an explicit batch rate wins over the half
