"""A real user's run: provider behaviour (Retry-After, prompts rejected for good, --base-url), the spend
ledger and a budget that holds across reruns, against the real fault server on 127.0.0.1."""

from __future__ import annotations

import email.utils
import json
import sqlite3
import threading
import time

import pytest
from faultserver import FaultServer
from gen_helpers import KEY, all_shards, make_config, n_cells, read_records

from zhufu.cli import main
from zhufu.errors import ProviderError
from zhufu.generate.providers import parse_retry_after
from zhufu.generate.run import failures_path, generate_shards


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv("ZHUFU_TEST_KEY", KEY)


def _run(config, tmp_path, **kw):
    return generate_shards(
        config, all_shards(config, tmp_path / "raw"), tmp_path / "cache.sqlite", progress=False, **kw
    )


def _paid(tmp_path, price_per_1m: float) -> float:
    """Money paid, from the answers themselves (not from the ledger under test)."""
    rows = sqlite3.connect(tmp_path / "cache.sqlite").execute(
        "SELECT prompt_tokens, completion_tokens FROM answers"
    )
    return sum((p + c) * price_per_1m / 1e6 for p, c in rows)


# ---------------------------------------------------------------------------------------------- Retry-After


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "5"}, 5.0),
        ({"retry-after": " 2.5 "}, 2.5),
        ({"retry-after": "-3"}, 0.0),
        ({"retry-after": "soon"}, None),  # was a ValueError that crashed the run
        ({"retry-after": "inf"}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after": "86400"}, 120.0),  # a day: clamped, never a run-wide stall
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),  # a date in the past
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "oops", "retry-after": "3"}, 3.0),
        ({}, None),
    ],
)
def test_retry_after_is_parsed_robustly_and_clamped(headers, expected):
    assert parse_retry_after(headers) == expected


def test_retry_after_as_a_future_http_date():
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= parse_retry_after({"retry-after": when}) <= 30
    far = email.utils.formatdate(time.time() + 10 * 86400, usegmt=True)
    assert parse_retry_after({"retry-after": far}, max_s=7.0) == 7.0


@pytest.mark.parametrize("retry_after", ["soon", "86400"])
def test_a_nonsense_or_huge_retry_after_neither_crashes_nor_stalls_the_run(tmp_path, retry_after):
    with FaultServer(retry_after=retry_after) as server:
        config = make_config(server, retry_after_max_s=0.2, max_attempts=4)
        server.script = ["429"] * 6
        done = threading.Event()
        errors = []

        def run():
            try:
                _run(config, tmp_path)
            except Exception as e:  # noqa: BLE001 (reported by the assert below)
                errors.append(e)
            done.set()

        threading.Thread(target=run, daemon=True).start()
        assert done.wait(60), "the run stalled on a huge Retry-After"
    assert not errors, errors
    assert server.faults["429"] == 6 and len(read_records(tmp_path / "raw")) == n_cells(config)


# ---------------------------------------------------------------------------------------------- failures


@pytest.mark.parametrize("fault", ["400", "empty"])
def test_a_cell_rejected_for_good_is_listed_and_its_shard_written_under_the_share(tmp_path, fault):
    with FaultServer() as server:
        # One cell of the 12 in each 严肃 shard (爷爷 × 七夕节) is always refused (a content filter) or empty.
        server.poison = {"商务严肃风格。对象：爷爷；场景：七夕节": fault}
        config = make_config(server, max_failed_share=0.1, max_attempts=3)
        _run(config, tmp_path)
        records = read_records(tmp_path / "raw")
        assert len(records) == n_cells(config) - 2  # one cell in each of the two 严肃 rounds
        assert not any(
            r["meta"]["recipient"] == "爷爷"
            and r["meta"]["scene"] == "七夕节"
            and r["meta"]["style"] == "严肃"
            for r in records
        )
        failures = [
            json.loads(line)
            for r in (0, 1)
            for line in failures_path(tmp_path / "raw" / "严肃" / f"round_{r}.json").read_text().splitlines()
        ]
        assert [(f["recipient"], f["scene"], f["round"]) for f in failures] == [
            ("爷爷", "七夕节", 0),
            ("爷爷", "七夕节", 1),
        ]
        assert failures_path(tmp_path / "raw" / "小红书" / "round_0.json").read_text() == ""


def test_failures_above_the_share_fail_the_job_naming_the_cells(tmp_path):
    with FaultServer() as server:
        server.poison = {"商务严肃风格。对象：爷爷；场景：七夕节": "400"}
        config = make_config(server)  # max_failed_share: the default 1%, and 1 of 12 is 8%
        with pytest.raises(
            ProviderError,
            match=r"2 cells failed .*max_failed_share 0.01.*严肃/round_0 爷爷×七夕节 \(HTTP 400",
        ):
            _run(config, tmp_path)
    assert sorted(p.name for p in (tmp_path / "raw").rglob("*.json")) == ["round_0.json", "round_1.json"]
    assert not (tmp_path / "raw" / "严肃").exists() or not list((tmp_path / "raw" / "严肃").iterdir())


# ---------------------------------------------------------------------------------------------- endpoint


def test_answers_of_another_endpoint_are_cached_under_that_endpoint(tmp_path):
    with FaultServer() as test_server, FaultServer() as real:
        # The config's endpoint is "real" (host localhost); a test run calls another one with --base-url.
        config = make_config(base_url=f"http://localhost:{real.port}/v1")
        _run(config, tmp_path, base_url=test_server.url)
        assert test_server.successes == n_cells(config) and real.requests == 0
        _run(config, tmp_path)  # the real run asks the real endpoint for every cell
        assert real.successes == n_cells(config)


# ---------------------------------------------------------------------------------------------- budget


def test_the_budget_holds_across_reruns_and_zhufu_spend_shows_the_ledger(tmp_path, capsys):
    price = 10000  # per 1M tokens: ~1 unit per call
    with FaultServer() as server:
        config = make_config(server, price={"input_per_1m": price, "output_per_1m": price}, budget=6.0)
        with pytest.raises(ProviderError, match="budget 6.0000 CNY reached"):
            _run(config, tmp_path)
        first = server.requests
        assert 0 < first < n_cells(config)
        # A rerun with the same budget starts from what was spent, not from zero: at most the rest of the
        # budget (room for one more worst-case call here), where a fresh budget would pay `first` again.
        with pytest.raises(ProviderError, match="budget 6.0000 CNY reached"):
            _run(config, tmp_path)
        assert server.requests - first < first
        assert _paid(tmp_path, price) <= 6.0
        config["provider"]["budget"] = None
        _run(config, tmp_path)
        assert server.successes == n_cells(config)
    assert main(["spend", "--cache", str(tmp_path / "cache.sqlite"), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["model"] == "fault-model" and row["calls"] == n_cells(config)
    assert row["cost"] == pytest.approx(_paid(tmp_path, price))
