"""The persistent LLM answer cache: paid calls are never repeated.

One SQLite file (outside results/) shared by every generate process. WAL mode lets readers and one writer
work at once across processes, a busy timeout makes concurrent writers wait instead of failing, and each
answer is committed in its own transaction as soon as it arrives, so a kill -9 loses at most the calls in
flight and never leaves a half-written row. Only successful, non-empty answers are ever stored.

The key is the sha256 of canonical JSON of who answers (kind, endpoint host, model), the messages, the
sampling parameters and the sample number (the round: the same prompt asked in two rounds is two draws);
never the API key, and never the offline teacher's random port.

The same file keeps the run-level accounts that every generate process shares (all of them run on the
submitting host, so SQLite's locking holds):
- `spend`: one row per paid answer (provider, model, tokens, cost), written in the answer's own
  transaction. A budget is checked against its sum, so it holds across jobs and reruns (`zhufu spend`).
- `holds`: the worst-case cost of each call in flight, so concurrent jobs can't overshoot the budget
  together; the holds of a process that died are dropped.
- `batches` and `batch_cells`: every provider batch (zhufu.generate.batch), recorded with its cells in one
  transaction the moment the provider returns its id, so a killed job's rerun polls it instead of paying
  for its cells again; a finished batch is collected once (state open -> collected), and until then its
  worst-case cost is held against the budget.
- `sends`: the requests of the last window and their estimated tokens, so RPM and TPM caps hold for all
  jobs together. A request holds its slot from the moment it may be sent until a window after its answer
  (or failure) came back: whenever the server saw it, no window of the server's clock holds more than
  the cap.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_random_exponential

from zhufu.errors import ProviderError

SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY,
    request TEXT NOT NULL,
    answer TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS spend (
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cost REAL NOT NULL,
    currency TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS holds (
    id INTEGER PRIMARY KEY,
    scope TEXT NOT NULL,
    pid INTEGER NOT NULL,
    cost REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS sends (
    id INTEGER PRIMARY KEY,
    scope TEXT NOT NULL,
    t REAL NOT NULL,
    tokens INTEGER NOT NULL,
    pid INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS sends_scope_t ON sends (scope, t);
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY,
    scope TEXT NOT NULL,
    input_file_id TEXT NOT NULL,
    input_sha256 TEXT NOT NULL,
    lines INTEGER NOT NULL,
    hold REAL NOT NULL,
    state TEXT NOT NULL,
    status TEXT NOT NULL,
    created REAL NOT NULL,
    finished REAL
);
CREATE TABLE IF NOT EXISTS batch_cells (
    batch_id TEXT NOT NULL,
    key TEXT NOT NULL,
    request TEXT NOT NULL,
    shard TEXT NOT NULL,
    PRIMARY KEY (batch_id, key)
);
CREATE INDEX IF NOT EXISTS batch_cells_key ON batch_cells (key);
"""
# Batch states: `open` (created at the provider, not collected yet: its cells are never sent again and its
# worst-case cost stays held against the budget), `collected` (its answers are stored, once), `lost` (the
# provider no longer knows it: a 404; its cells are sent again).
OPEN, COLLECTED, LOST = "open", "collected", "lost"


def cache_key(identity: dict, messages: list[dict], params: dict, sample: int = 0) -> str:
    return hashlib.sha256(canonical_request(identity, messages, params, sample).encode("utf-8")).hexdigest()


def canonical_request(identity: dict, messages: list[dict], params: dict, sample: int = 0) -> str:
    """`sample` tells apart independent draws of the same request: round 1 must not reuse round 0's answer."""
    blob = {"provider": identity, "messages": messages, "params": params, "sample": sample}
    return json.dumps(blob, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


IN_FLIGHT = 1e18  # the time of a slot whose request has not come back yet
IN_FLIGHT_POLL_S = 0.25


@dataclass(frozen=True)
class Payment:
    """One paid answer for the spend ledger: who (provider identity as JSON, model) and how much."""

    provider: str
    model: str
    cost: float
    currency: str
    via: str = "direct"  # direct: one chat completion; batch: the provider's batch API


def _scope(scope: tuple[str, str]) -> str:
    return json.dumps(list(scope), ensure_ascii=False)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


OPEN_PATIENCE_S = 30


@contextmanager
def _immediate(conn: sqlite3.Connection) -> Iterator[None]:
    """One write transaction, its lock taken at once (BEGIN IMMEDIATE): committed when the block ends,
    a return included, and rolled back when it raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _locked(e: BaseException) -> bool:
    return isinstance(e, sqlite3.OperationalError) and ("locked" in str(e) or "busy" in str(e))


@dataclass(frozen=True)
class CachedAnswer:
    text: str
    prompt_tokens: int
    completion_tokens: int


class AnswerCache:
    """A process-safe key → answer store. Use as a context manager, or call close()."""

    def __init__(self, path: str | Path, *, readonly: bool = False):
        self.path = Path(path)
        try:
            # Two jobs that open a new cache at once race for WAL set-up and the schema; SQLite answers
            # the loser "database is locked" without waiting on its busy handler, so the open retries.
            for attempt in Retrying(
                retry=retry_if_exception(_locked),
                stop=stop_after_delay(OPEN_PATIENCE_S),
                wait=wait_random_exponential(multiplier=0.02, max=0.5),
                reraise=True,
            ):
                with attempt:
                    self.conn = self._connect(readonly)
        except sqlite3.DatabaseError as e:
            raise ProviderError(
                f"cache {self.path}: cannot open ({e}); check the `cache` path in config"
            ) from None

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        """A cache made before the batch API: its ledger rows were all direct calls."""
        with _immediate(conn):  # one of the jobs opening the cache at once adds the column
            columns = {r[1] for r in conn.execute("PRAGMA table_info(spend)")}
            if "via" not in columns:
                conn.execute("ALTER TABLE spend ADD COLUMN via TEXT NOT NULL DEFAULT 'direct'")

    def _connect(self, readonly: bool) -> sqlite3.Connection:
        if readonly:
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            if not readonly:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.executescript(SCHEMA)
                AnswerCache._migrate(conn)
            conn.execute("PRAGMA busy_timeout=30000")
        except BaseException:
            conn.close()
            raise
        return conn

    def get(self, key: str) -> CachedAnswer | None:
        row = self.conn.execute(
            "SELECT answer, prompt_tokens, completion_tokens FROM answers WHERE key = ?", (key,)
        ).fetchone()
        return CachedAnswer(*row) if row else None

    def __contains__(self, key: str) -> bool:
        return self.conn.execute("SELECT 1 FROM answers WHERE key = ?", (key,)).fetchone() is not None

    def put(
        self,
        key: str,
        request: str,
        text: str,
        prompt_tokens: int,
        completion_tokens: int,
        *,
        paid: Payment | None = None,
        release: int | None = None,
    ) -> None:
        """Store one successful answer in its own transaction (durable once this returns), with its
        payment in the spend ledger and the release of its budget hold, all or nothing."""
        if not text.strip():
            raise ValueError("refusing to cache an empty answer")
        with _immediate(self.conn):
            self._insert_answer(key, request, text, prompt_tokens, completion_tokens, paid)
            if release is not None:
                self.conn.execute("DELETE FROM holds WHERE id = ?", (release,))

    def _insert_answer(
        self,
        key: str,
        request: str,
        text: str,
        prompt_tokens: int,
        completion_tokens: int,
        paid: Payment | None,
    ) -> None:
        self.conn.execute(
            "INSERT OR IGNORE INTO answers VALUES (?, ?, ?, ?, ?, ?)",
            (key, request, text, prompt_tokens, completion_tokens, time.time()),
        )
        if paid is not None:
            self.conn.execute(
                "INSERT INTO spend (provider, model, prompt_tokens, completion_tokens, cost, currency, created,"
                " via) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    paid.provider,
                    paid.model,
                    prompt_tokens,
                    completion_tokens,
                    paid.cost,
                    paid.currency,
                    time.time(),
                    paid.via,
                ),
            )

    # ------------------------------------------------------------------------------------ batches

    def record_batch(
        self,
        batch_id: str,
        scope: tuple[str, str],
        input_file_id: str,
        input_sha256: str,
        status: str,
        cells: list[tuple[str, str, str]],
        hold: float,
        release: int | None = None,
    ) -> None:
        """Record a batch the provider has just created, with its cells (key, request, shard) and its
        worst-case cost, in one transaction; the budget hold `release` (taken before creating) moves to it."""
        with _immediate(self.conn):
            self.conn.execute(
                "INSERT INTO batches VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)",
                (
                    batch_id,
                    _scope(scope),
                    input_file_id,
                    input_sha256,
                    len(cells),
                    hold,
                    OPEN,
                    status,
                    time.time(),
                ),
            )
            self.conn.executemany(
                "INSERT INTO batch_cells VALUES (?, ?, ?, ?)", [(batch_id, k, r, sh) for k, r, sh in cells]
            )
            if release is not None:
                self.conn.execute("DELETE FROM holds WHERE id = ?", (release,))

    def open_batches(self, scope: tuple[str, str], keys: set[str] | None = None) -> list[dict]:
        """The open batches of `scope` (holding any of `keys`, when given), oldest first."""
        rows = self.conn.execute(
            "SELECT id, input_file_id, input_sha256, lines, status, created FROM batches"
            " WHERE scope = ? AND state = ? ORDER BY created",
            (_scope(scope), OPEN),
        ).fetchall()
        out = []
        for bid, fid, sha, lines, status, created in rows:
            if keys is not None and not any(k in keys for k in self.batch_keys(bid)):
                continue
            out.append(
                {
                    "id": bid,
                    "input_file_id": fid,
                    "input_sha256": sha,
                    "lines": lines,
                    "status": status,
                    "created": created,
                }
            )
        return out

    def batch_keys(self, batch_id: str) -> list[str]:
        return [
            k for (k,) in self.conn.execute("SELECT key FROM batch_cells WHERE batch_id = ?", (batch_id,))
        ]

    def batch_cells(self, batch_id: str) -> dict[str, str]:
        """key -> canonical request of a batch's cells."""
        return dict(self.conn.execute("SELECT key, request FROM batch_cells WHERE batch_id = ?", (batch_id,)))

    def set_batch_status(self, batch_id: str, status: str) -> None:
        self.conn.execute(
            "UPDATE batches SET status = ? WHERE id = ? AND state = ?", (status, batch_id, OPEN)
        )

    def mark_batch_lost(self, batch_id: str) -> None:
        self.conn.execute(
            "UPDATE batches SET state = ?, finished = ? WHERE id = ? AND state = ?",
            (LOST, time.time(), batch_id, OPEN),
        )

    def collect_batch(
        self,
        batch_id: str,
        status: str,
        answers: list[tuple[str, str, str, int, int, Payment]],
    ) -> bool:
        """Store a finished batch's answers (key, request, text, tokens in, tokens out, payment) and mark it
        collected, all in one transaction; False (nothing stored) when it was collected already."""
        with _immediate(self.conn):
            row = self.conn.execute("SELECT state FROM batches WHERE id = ?", (batch_id,)).fetchone()
            if row is None or row[0] != OPEN:
                return False
            for key, request, text, pt, ct, paid in answers:
                if text.strip():
                    self._insert_answer(key, request, text, pt, ct, paid)
            self.conn.execute(
                "UPDATE batches SET state = ?, status = ?, finished = ? WHERE id = ?",
                (COLLECTED, status, time.time(), batch_id),
            )
            return True

    def batch_table(self) -> list[dict]:
        rows = self.conn.execute(
            "SELECT id, lines, state, status, hold, created, finished FROM batches ORDER BY created"
        ).fetchall()
        keys = ("id", "lines", "state", "status", "hold", "created", "finished")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    # ------------------------------------------------------------------------------------ the budget

    def spent(self, provider: str, model: str) -> float:
        row = self.conn.execute(
            "SELECT COALESCE(SUM(cost), 0) FROM spend WHERE provider = ? AND model = ?", (provider, model)
        ).fetchone()
        return float(row[0])

    def hold(self, scope: tuple[str, str], cost: float, budget: float) -> int | None:
        """Reserve `cost` of `budget` for one call; None if spent + held + cost would pass the budget."""
        provider, model = scope
        with _immediate(self.conn):
            self._drop_dead_holds()
            held = self.held(scope)
            if self.spent(provider, model) + held + cost > budget:
                return None
            cur = self.conn.execute(
                "INSERT INTO holds (scope, pid, cost) VALUES (?, ?, ?)", (_scope(scope), os.getpid(), cost)
            )
            return cur.lastrowid

    def held(self, scope: tuple[str, str]) -> float:
        """The worst case of the calls in flight and of the open batches, reserved against the budget."""
        calls = self.conn.execute(
            "SELECT COALESCE(SUM(cost), 0) FROM holds WHERE scope = ?", (_scope(scope),)
        ).fetchone()[0]
        batches = self.conn.execute(
            "SELECT COALESCE(SUM(hold), 0) FROM batches WHERE scope = ? AND state = ?", (_scope(scope), OPEN)
        ).fetchone()[0]
        return float(calls) + float(batches)

    def release(self, hold_id: int) -> None:
        self.conn.execute("DELETE FROM holds WHERE id = ?", (hold_id,))

    def _drop_dead_holds(self) -> None:
        for (pid,) in self.conn.execute("SELECT DISTINCT pid FROM holds").fetchall():
            if not _alive(pid):
                self.conn.execute("DELETE FROM holds WHERE pid = ?", (pid,))

    def _via(self) -> str:
        """The ledger's `via` column; 'direct' for a cache made before batches and opened read-only."""
        columns = {r[1] for r in self.conn.execute("PRAGMA table_info(spend)")}
        return "via" if "via" in columns else "'direct'"

    def spend_table(self) -> list[dict]:
        rows = self.conn.execute(
            "SELECT provider, model, currency, "
            + self._via()
            + ", COUNT(*), SUM(prompt_tokens), SUM(completion_tokens),"
            " SUM(cost), MIN(created), MAX(created) FROM spend GROUP BY provider, model, currency, 4"
            " ORDER BY provider, model, 4"
        ).fetchall()
        keys = (
            "provider",
            "model",
            "currency",
            "via",
            "calls",
            "prompt_tokens",
            "completion_tokens",
            "cost",
            "first",
            "last",
        )
        return [dict(zip(keys, r, strict=True)) for r in rows]

    # ------------------------------------------------------------------------------------ the rate

    def take_send_slot(
        self, scope: tuple[str, str], rpm: float | None, tpm: float | None, tokens: int, window: float
    ) -> tuple[float, int | None]:
        """Take a slot for one request now: (0, slot id), or (seconds to wait before asking again, None).

        A sliding window over every process's requests: at most `rpm` requests and `tpm` tokens in any
        `window` seconds. The slot counts as in flight (time +inf) until `end_send_slot`.
        """
        key = _scope(scope)
        now = time.time()
        with _immediate(self.conn):
            self.conn.execute("DELETE FROM sends WHERE t <= ?", (now - window,))
            for (pid,) in self.conn.execute("SELECT DISTINCT pid FROM sends WHERE t > ?", (now,)).fetchall():
                if not _alive(pid):  # in flight in a process that died: it ended at the latest now
                    self.conn.execute("UPDATE sends SET t = ? WHERE pid = ? AND t > ?", (now, pid, now))
            sent = self.conn.execute(
                "SELECT t, tokens FROM sends WHERE scope = ? ORDER BY t", (key,)
            ).fetchall()
            leave = []  # when each slot that must be freed first leaves the window
            if rpm is not None and len(sent) + 1 > rpm:
                leave.append(sent[len(sent) - int(rpm)][0])
            if tpm is not None:
                tokens = min(tokens, int(tpm))
                excess = sum(n for _, n in sent) + tokens - tpm
                for t, n in sent:
                    if excess <= 0:
                        break
                    excess -= n
                    leave.append(t)
            slot = None
            if not leave:
                slot = self.conn.execute(
                    "INSERT INTO sends (scope, t, tokens, pid) VALUES (?, ?, ?, ?)",
                    (key, IN_FLIGHT, tokens, os.getpid()),
                ).lastrowid
        if slot is not None:
            return 0.0, slot
        last = max(leave)
        # A slot still in flight leaves a window after its answer: look again soon.
        return (IN_FLIGHT_POLL_S if last >= IN_FLIGHT else max(0.01, last + window - now)), None

    def end_send_slot(self, slot: int) -> None:
        """The request's answer (or failure) is back: its slot leaves the window `window` seconds from now."""
        self.conn.execute("UPDATE sends SET t = ? WHERE id = ?", (time.time(), slot))

    def __len__(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> AnswerCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_readonly(path: str | Path) -> AnswerCache | None:
    """The cache for looking only (estimate, dry run): None when it does not exist yet; never creates it."""
    return AnswerCache(path, readonly=True) if Path(path).is_file() else None
