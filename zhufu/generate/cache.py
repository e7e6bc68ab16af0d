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
"""


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
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self.conn.execute(
                "INSERT OR IGNORE INTO answers VALUES (?, ?, ?, ?, ?, ?)",
                (key, request, text, prompt_tokens, completion_tokens, time.time()),
            )
            if paid is not None:
                self.conn.execute(
                    "INSERT INTO spend VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        paid.provider,
                        paid.model,
                        prompt_tokens,
                        completion_tokens,
                        paid.cost,
                        paid.currency,
                        time.time(),
                    ),
                )
            if release is not None:
                self.conn.execute("DELETE FROM holds WHERE id = ?", (release,))
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    # ------------------------------------------------------------------------------------ the budget

    def spent(self, provider: str, model: str) -> float:
        row = self.conn.execute(
            "SELECT COALESCE(SUM(cost), 0) FROM spend WHERE provider = ? AND model = ?", (provider, model)
        ).fetchone()
        return float(row[0])

    def hold(self, scope: tuple[str, str], cost: float, budget: float) -> int | None:
        """Reserve `cost` of `budget` for one call; None if spent + held + cost would pass the budget."""
        provider, model = scope
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self._drop_dead_holds()
            held = self.conn.execute(
                "SELECT COALESCE(SUM(cost), 0) FROM holds WHERE scope = ?", (_scope(scope),)
            ).fetchone()[0]
            if self.spent(provider, model) + held + cost > budget:
                self.conn.execute("COMMIT")
                return None
            cur = self.conn.execute(
                "INSERT INTO holds (scope, pid, cost) VALUES (?, ?, ?)", (_scope(scope), os.getpid(), cost)
            )
            self.conn.execute("COMMIT")
            return cur.lastrowid
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    def release(self, hold_id: int) -> None:
        self.conn.execute("DELETE FROM holds WHERE id = ?", (hold_id,))

    def _drop_dead_holds(self) -> None:
        for (pid,) in self.conn.execute("SELECT DISTINCT pid FROM holds").fetchall():
            if not _alive(pid):
                self.conn.execute("DELETE FROM holds WHERE pid = ?", (pid,))

    def spend_table(self) -> list[dict]:
        rows = self.conn.execute(
            "SELECT provider, model, currency, COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), SUM(cost),"
            " MIN(created), MAX(created) FROM spend GROUP BY provider, model, currency ORDER BY provider, model"
        ).fetchall()
        keys = (
            "provider",
            "model",
            "currency",
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
        self.conn.execute("BEGIN IMMEDIATE")
        try:
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
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
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
