"""Request-rate limits of a run: RPM, TPM and a common pause after a 429.

Two layers. The caps hold for the whole run, over every generate process (the workflow runs one per
style × round): each request takes a slot in the answer cache's `sends` table, a sliding window that
never holds more than `rpm` requests or `tpm` tokens (zhufu.cache.AnswerCache.take_send_slot). A request
holds its slot from before it is sent until a window after its answer came back, so the server, whenever
it saw the request, also counts at most `rpm` in any 60 s of its own clock (the window has a margin of
one more second). Inside one process, aiolimiter's leaky
bucket smooths the requests (a cap of 600 RPM is a 10-request bucket that drains at 10/s), so a run does
not fire its whole minute's allowance in the first second.
"""

from __future__ import annotations

import asyncio
import os
import random
import time

from aiolimiter import AsyncLimiter

BURST_SECONDS = 1.0
WINDOW_S = 60.0
WINDOW_MARGIN_S = 1.0


def window_seconds() -> float:
    """The rate window. `ZHUFU_RATE_WINDOW_S` shortens it for the tests only (a 60 s window would make
    a test that checks several windows take minutes); users have no reason to set it."""
    return float(os.environ.get("ZHUFU_RATE_WINDOW_S", WINDOW_S)) + WINDOW_MARGIN_S


def _bucket(per_minute: float, burst_seconds: float = BURST_SECONDS) -> AsyncLimiter:
    capacity = max(1.0, per_minute / 60.0 * burst_seconds)
    return AsyncLimiter(capacity, capacity * 60.0 / per_minute)


class Limits:
    """Acquire before every attempt: `await limits.acquire(estimated_tokens)`.

    `shared` is the answer cache and `scope` the (provider, model) whose caps these are; without them
    the caps hold for this process only.
    """

    def __init__(self, rpm: float | None = None, tpm: float | None = None, *, shared=None, scope=None):
        window = window_seconds()
        self.rpm_cap, self.tpm_cap, self.window = rpm, tpm, window
        self.rpm = _bucket(rpm * WINDOW_S / window) if rpm else None
        # Tokens come in lumps of a whole request, so the token bucket holds ~10 s worth.
        self.tpm = _bucket(tpm * WINDOW_S / window, burst_seconds=10.0) if tpm else None
        self.shared, self.scope = shared, scope
        self.paused_until = 0.0

    def pause(self, seconds: float) -> None:
        """A 429 told one worker to wait: every worker waits, so the endpoint sees the pause."""
        self.paused_until = max(self.paused_until, time.monotonic() + seconds)

    async def acquire(self, tokens: int = 0) -> int | None:
        """Wait until a request may be sent; returns its shared slot, to hand to `release` when it ends."""
        while (wait := self.paused_until - time.monotonic()) > 0:
            await asyncio.sleep(wait)
        if self.rpm:
            await self.rpm.acquire()
        if self.tpm and tokens:
            await self.tpm.acquire(min(float(tokens), self.tpm.max_rate))
        if self.shared is None or (self.rpm_cap is None and self.tpm_cap is None):
            return None
        while True:
            wait, slot = self.shared.take_send_slot(
                self.scope, self.rpm_cap, self.tpm_cap, tokens, self.window
            )
            if slot is not None:
                return slot
            await asyncio.sleep(wait + random.uniform(0, 0.05))

    def release(self, slot: int | None) -> None:
        """The request of `slot` is over (answered or failed): its slot leaves the window one window later."""
        if slot is not None:
            self.shared.end_send_slot(slot)


def backoff_delay(attempt: int, base: float, cap: float, retry_after: float | None = None) -> float:
    """Exponential backoff with full jitter, never shorter than the server's Retry-After.

    `attempt` counts from 1 (the attempt that just failed).
    """
    delay = random.uniform(0, min(cap, base * 2 ** (attempt - 1)))
    if retry_after is not None:
        delay = max(delay, retry_after + random.uniform(0, base))
    return delay
