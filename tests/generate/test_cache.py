"""The answer cache: canonical keys, successful answers only, many processes writing at once."""

from __future__ import annotations

import multiprocessing as mp

import pytest

from zhufu.generate.cache import AnswerCache, cache_key, open_readonly

IDENT = {"kind": "openai", "model": "m", "host": "api.example.com"}
MSGS = [{"role": "system", "content": "s"}, {"role": "user", "content": "祝姐姐生日"}]


def test_key_is_canonical_and_sensitive_to_what_changes_the_answer():
    k = cache_key(IDENT, MSGS, {"temperature": 1.0, "max_tokens": 8})
    assert k == cache_key(dict(reversed(IDENT.items())), MSGS, {"max_tokens": 8, "temperature": 1.0})
    assert k != cache_key(IDENT, MSGS, {"temperature": 0.5, "max_tokens": 8})
    assert k != cache_key({**IDENT, "model": "n"}, MSGS, {"temperature": 1.0, "max_tokens": 8})
    assert k != cache_key(IDENT, MSGS[:1], {"temperature": 1.0, "max_tokens": 8})
    assert k != cache_key(IDENT, MSGS, {"temperature": 1.0, "max_tokens": 8}, sample=1)


def test_put_get_and_empty_refused(tmp_path):
    with AnswerCache(tmp_path / "c.sqlite") as c:
        assert c.get("k") is None
        c.put("k", "{}", "你好", 3, 2)
        assert c.get("k").text == "你好" and "k" in c and len(c) == 1
        with pytest.raises(ValueError):
            c.put("e", "{}", "  ", 1, 0)
        assert len(c) == 1


def test_readonly_never_creates(tmp_path):
    assert open_readonly(tmp_path / "none.sqlite") is None
    assert not (tmp_path / "none.sqlite").exists()


def _writer(path, worker, n):
    with AnswerCache(path) as c:
        for i in range(n):
            c.put(f"{worker}-{i}", "{}", f"answer {worker} {i}", 1, 1)


def test_many_processes_write_at_once(tmp_path):
    path = tmp_path / "c.sqlite"
    AnswerCache(path).close()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, 150)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    with AnswerCache(path) as c:
        assert len(c) == 600
        assert c.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert c.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def _open_at_once(path, barrier, errors):
    barrier.wait()
    try:
        AnswerCache(path).close()
    except Exception as e:  # noqa: BLE001 - the test reports what any opener saw
        errors.put(str(e))


def test_jobs_that_open_a_new_cache_at_once_all_open_it(tmp_path):
    # Two generate jobs of a fresh run (snakemake --cores 2) open the cache that neither made yet:
    # SQLite answers the loser of the WAL set-up "database is locked" at once, without its busy handler.
    ctx = mp.get_context("fork")
    errors = ctx.Queue()
    for attempt in range(30):
        path = tmp_path / f"c{attempt}.sqlite"
        barrier = ctx.Barrier(4)
        procs = [ctx.Process(target=_open_at_once, args=(path, barrier, errors)) for _ in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    seen = []
    while not errors.empty():
        seen.append(errors.get())
    assert seen == []
