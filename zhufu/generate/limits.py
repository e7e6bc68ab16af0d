"""Request-rate limits shared by all workers of a run: RPM, TPM and a common pause after a 429.

aiolimiter's leaky bucket allows a burst as large as its capacity, so a cap of 600 RPM is built as a
10-request bucket that drains at 10/s: no minute ever sees much more than the cap, and a sustained run
reaches it.
"""

from __future__ import annotations

import asyncio
import random
import time

from aiolimiter import AsyncLimiter

BURST_SECONDS = 1.0


def _bucket(per_minute: float, burst_seconds: float = BURST_SECONDS) -> AsyncLimiter:
    capacity = max(1.0, per_minute / 60.0 * burst_seconds)
    return AsyncLimiter(capacity, capacity * 60.0 / per_minute)


class Limits:
    """Acquire before every attempt: `await limits.acquire(estimated_tokens)`."""

    def __init__(self, rpm: float | None = None, tpm: float | None = None):
        self.rpm = _bucket(rpm) if rpm else None
        # Tokens come in lumps of a whole request, so the token bucket holds ~10 s worth.
        self.tpm = _bucket(tpm, burst_seconds=10.0) if tpm else None
        self.paused_until = 0.0

    def pause(self, seconds: float) -> None:
        """A 429 told one worker to wait: every worker waits, so the endpoint sees the pause."""
        self.paused_until = max(self.paused_until, time.monotonic() + seconds)

    async def acquire(self, tokens: int = 0) -> None:
        while (wait := self.paused_until - time.monotonic()) > 0:
            await asyncio.sleep(wait)
        if self.rpm:
            await self.rpm.acquire()
        if self.tpm and tokens:
            await self.tpm.acquire(min(float(tokens), self.tpm.max_rate))


def backoff_delay(attempt: int, base: float, cap: float, retry_after: float | None = None) -> float:
    """Exponential backoff with full jitter, never shorter than the server's Retry-After.

    `attempt` counts from 1 (the attempt that just failed).
    """
    delay = random.uniform(0, min(cap, base * 2 ** (attempt - 1)))
    if retry_after is not None:
        delay = max(delay, retry_after + random.uniform(0, base))
    return delay
