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


def test_a_batch_is_recorded_with_its_cells_held_against_the_budget_and_collected_once(tmp_path):
    from zhufu.generate.cache import Payment

    scope = ('{"kind": "offline"}', "m")
    with AnswerCache(tmp_path / "c.sqlite") as c:
        hold = c.hold(scope, 0.5, budget=1.0)
        assert hold is not None
        c.record_batch(
            "b1",
            scope,
            "file-1",
            "ab" * 32,
            "validating",
            [("k1", "r1", "s/0"), ("k2", "r2", "s/0")],
            0.5,
            hold,
        )
        assert c.held(scope) == pytest.approx(0.5)  # the call's hold moved to the open batch
        assert c.hold(scope, 0.6, budget=1.0) is None  # ... and still counts against the budget
        assert [b["id"] for b in c.open_batches(scope, {"k2"})] == ["b1"]
        assert c.open_batches(scope, {"other"}) == []
        assert c.batch_cells("b1") == {"k1": "r1", "k2": "r2"}
        paid = Payment(*scope, 0.1, "CNY", "batch")
        assert c.collect_batch("b1", "expired", [("k1", "r1", "答", 3, 4, paid)])
        assert not c.collect_batch("b1", "expired", [("k1", "r1", "答", 3, 4, paid)])  # never twice
        assert c.get("k1").text == "答" and c.get("k2") is None
        assert c.open_batches(scope) == [] and c.held(scope) == 0
        (row,) = c.spend_table()
        assert (row["via"], row["calls"], row["cost"]) == ("batch", 1, pytest.approx(0.1))
        assert [(b["state"], b["status"]) for b in c.batch_table()] == [("collected", "expired")]


def test_a_cache_made_before_batches_gets_the_via_column_its_rows_direct(tmp_path):
    import sqlite3

    path = tmp_path / "old.sqlite"
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE spend (provider TEXT NOT NULL, model TEXT NOT NULL, prompt_tokens INTEGER NOT NULL,"
        " completion_tokens INTEGER NOT NULL, cost REAL NOT NULL, currency TEXT NOT NULL, created REAL NOT NULL)"
    )
    old.execute("INSERT INTO spend VALUES ('p', 'm', 1, 2, 0.5, 'CNY', 0)")
    old.commit()
    old.close()
    with open_readonly(path) as c:  # `zhufu spend` looks without migrating
        (row,) = c.spend_table()
    assert (row["via"], row["calls"]) == ("direct", 1)
    with AnswerCache(path) as c:
        (row,) = c.spend_table()
    assert (row["via"], row["calls"]) == ("direct", 1)
