"""Each provider kind through its real SDK against a real HTTP fault server; keys; refusals; Retry-After."""

from __future__ import annotations

import sys

import pytest
from faultserver import FAULT_KINDS, FaultServer, uniform_faults
from gen_helpers import KEY, all_shards, make_config, n_cells, read_records, write_config
from helpers import ROOT, run_cmd

from zhufu.errors import ProviderError
from zhufu.generate.providers import parse_retry_after, provider_identity, resolve_api_key
from zhufu.generate.run import generate_shards


@pytest.fixture
def key_env(monkeypatch):
    monkeypatch.setenv("ZHUFU_TEST_KEY", KEY)


@pytest.mark.parametrize("kind", ["openai", "zhipuai"])
def test_kind_completes_every_cell_through_faults_with_real_sdk(kind, key_env, tmp_path):
    with FaultServer(rates=uniform_faults(0.2), latency=0.005, slow_s=1.5, api_key=KEY) as server:
        server.script = list(FAULT_KINDS)  # every kind at least once, then 20% at random
        config = make_config(server, kind=kind, max_attempts=10)
        generate_shards(
            config, all_shards(config, tmp_path / "raw"), tmp_path / "cache.sqlite", progress=False
        )
        stats = server.stats()
        body = server.last_body
    records = read_records(tmp_path / "raw")
    assert len(records) == n_cells(config) == len({r["id"] for r in records})
    assert all(r["conversation"][0]["output"].strip() for r in records)
    # Every fault kind was served, through the kind's own path, and no answer was paid for twice.
    assert set(FAULT_KINDS) <= set(stats["faults"])
    path = "/api/paas/v4/chat/completions" if kind == "zhipuai" else "/v1/chat/completions"
    assert stats["paths"] == {path: stats["requests"]}
    assert stats["successes"] == n_cells(config)
    # Sampling parameters are real request parameters (zhipuai keeps 0.7 / 0.9 as they are below 1).
    assert (body["temperature"], body["max_tokens"], body["top_p"]) == (0.7, 64, 0.9)
    assert records[0]["meta"]["provider"] == kind and records[0]["meta"]["usage"]["completion_tokens"] > 0


def test_missing_key_fails_before_any_request(monkeypatch, tmp_path):
    monkeypatch.delenv("ZHUFU_TEST_KEY", raising=False)
    with FaultServer() as server:
        config = make_config(server)
        with pytest.raises(ProviderError, match="environment variable ZHUFU_TEST_KEY is not set"):
            generate_shards(
                config, all_shards(config, tmp_path / "raw"), tmp_path / "cache.sqlite", progress=False
            )
        assert server.requests == 0
    assert not (tmp_path / "raw").exists()


def test_missing_key_cli_one_line_exit_1(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", make_config())
    env = {"ZHUFU_TEST_KEY": ""}
    proc = run_cmd(
        [sys.executable, "-m", "zhufu", "generate", "--config", str(cfg), "-o", str(tmp_path)], ROOT, env=env
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "ZHUFU_TEST_KEY" in lines[0] and "Traceback" not in proc.stderr


def test_offline_kind_needs_no_key(monkeypatch):
    monkeypatch.delenv("ZHUFU_TEST_KEY", raising=False)
    assert resolve_api_key({"kind": "offline", "api_key_env": None}) == "offline"
    with pytest.raises(ProviderError, match="api_key_env is not set"):
        resolve_api_key({"kind": "openai", "api_key_env": None})


def test_wrong_key_stops_the_run_with_one_error(monkeypatch, tmp_path):
    monkeypatch.setenv("ZHUFU_TEST_KEY", "wrong")
    with FaultServer(api_key=KEY) as server:
        config = make_config(server, concurrency=2)
        with pytest.raises(ProviderError, match="refused.*HTTP 401") as e:
            generate_shards(
                config, all_shards(config, tmp_path / "raw"), tmp_path / "cache.sqlite", progress=False
            )
        # 401 is not retried, and the other workers stop instead of spending the whole grid on it.
        assert server.requests <= 4
    assert "\n" not in str(e.value)


def test_retry_after_is_honoured(key_env, tmp_path):
    with FaultServer(retry_after=0.6) as server:
        server.script = ["429"]
        config = make_config(server, concurrency=1, backoff_s=0.0)
        config["grid"].update(recipients=["姐姐"], scenes=["生日"])
        generate_shards(config, [("严肃", 0, tmp_path / "s.json")], tmp_path / "cache.sqlite", progress=False)
        gap = server.request_times[1] - server.request_times[0]
    assert gap >= 0.6


def test_parse_retry_after_forms():
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after-ms": "250"}) == 0.25
    assert parse_retry_after({}) is None
    assert 0 <= parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) <= 0.0


def test_identity_leaves_out_port_and_key():
    a = provider_identity({"kind": "offline", "model": "m", "base_url": "http://127.0.0.1:1234/v1"})
    b = provider_identity({"kind": "offline", "model": "m", "base_url": "http://127.0.0.1:9999/v1"})
    assert a == b
    assert a.keys() == {"kind", "model", "bank"} and "1234" not in str(a)
    c = provider_identity({"kind": "openai", "model": "m", "base_url": "http://LocalHost:8000/v1"})
    assert c["host"] == "localhost" and "8000" not in str(c)


def test_offline_kind_uses_the_teacher_and_its_cache_survives_a_new_port(monkeypatch, tmp_path):
    from zhufu.teacher.server import running_teacher, teacher_stats

    monkeypatch.delenv("ZHUFU_TEST_KEY", raising=False)
    config = make_config(kind="offline", model="zhufu-offline-teacher", base_url=None, api_key_env=None)
    shards = all_shards(config, tmp_path / "raw")
    # Started by generate itself on a random port...
    generate_shards(config, shards, tmp_path / "cache.sqlite", progress=False)
    records = read_records(tmp_path / "raw")
    assert len(records) == n_cells(config) and records[0]["meta"]["provider"] == "offline"
    # ...and a teacher on another port is never asked again: the port is not part of the cache key.
    with running_teacher() as url:
        generate_shards(config, shards, tmp_path / "cache.sqlite", base_url=url, progress=False)
        assert teacher_stats(url)["requests"] == 0


def test_the_offline_identity_holds_the_phrase_bank_hash(tmp_path, monkeypatch):
    """An edited phrase bank is a new cache key: its answers are composed anew, not read from the cache."""
    import zhufu.teacher.bank as bank

    copy = tmp_path / "phrases.yaml"
    copy.write_bytes(bank.DEFAULT_PHRASES.read_bytes())
    monkeypatch.setattr(bank, "DEFAULT_PHRASES", copy)
    offline = {"kind": "offline", "model": "zhufu-offline-teacher"}
    before = provider_identity(offline)
    assert provider_identity(offline) == before
    with open(copy, "a", encoding="utf-8") as fh:
        fh.write("# edited\n")
    after = provider_identity(offline)
    assert after != before
    assert {k: v for k, v in after.items() if k != "bank"} == {k: v for k, v in before.items() if k != "bank"}
