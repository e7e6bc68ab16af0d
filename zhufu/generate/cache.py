"""The persistent LLM answer cache: paid calls are never repeated.

One SQLite file (outside results/) shared by every generate process. WAL mode lets readers and one writer
work at once across processes, a busy timeout makes concurrent writers wait instead of failing, and each
answer is committed in its own transaction as soon as it arrives, so a kill -9 loses at most the calls in
flight and never leaves a half-written row. Only successful, non-empty answers are ever stored.

The key is the sha256 of canonical JSON of who answers (kind, endpoint host, model), the messages, the
sampling parameters and the sample number (the round: the same prompt asked in two rounds is two draws);
never the API key, and never the offline teacher's random port.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from zhufu.errors import ProviderError

SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY,
    request TEXT NOT NULL,
    answer TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    created REAL NOT NULL
)
"""


def cache_key(identity: dict, messages: list[dict], params: dict, sample: int = 0) -> str:
    return hashlib.sha256(canonical_request(identity, messages, params, sample).encode("utf-8")).hexdigest()


def canonical_request(identity: dict, messages: list[dict], params: dict, sample: int = 0) -> str:
    """`sample` tells apart independent draws of the same request: round 1 must not reuse round 0's answer."""
    blob = {"provider": identity, "messages": messages, "params": params, "sample": sample}
    return json.dumps(blob, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


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
            if readonly:
                self.conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.execute("PRAGMA synchronous=NORMAL")
                self.conn.execute(SCHEMA)
            self.conn.execute("PRAGMA busy_timeout=30000")
        except sqlite3.DatabaseError as e:
            raise ProviderError(
                f"cache {self.path}: cannot open ({e}); check the `cache` path in config"
            ) from None

    def get(self, key: str) -> CachedAnswer | None:
        row = self.conn.execute(
            "SELECT answer, prompt_tokens, completion_tokens FROM answers WHERE key = ?", (key,)
        ).fetchone()
        return CachedAnswer(*row) if row else None

    def __contains__(self, key: str) -> bool:
        return self.conn.execute("SELECT 1 FROM answers WHERE key = ?", (key,)).fetchone() is not None

    def put(self, key: str, request: str, text: str, prompt_tokens: int, completion_tokens: int) -> None:
        """Store one successful answer in its own transaction (durable once this returns)."""
        if not text.strip():
            raise ValueError("refusing to cache an empty answer")
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self.conn.execute(
                "INSERT OR IGNORE INTO answers VALUES (?, ?, ?, ?, ?, ?)",
                (key, request, text, prompt_tokens, completion_tokens, time.time()),
            )
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

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
