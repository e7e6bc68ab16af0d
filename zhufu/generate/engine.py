"""The call loop that generation and the judge share: one request under the run's rate caps, retried with
backoff (Retry-After honoured), and each paid answer cached with its payment in the spend ledger."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Protocol

from zhufu.generate.cache import AnswerCache, Payment
from zhufu.generate.limits import Limits, backoff_delay
from zhufu.generate.pricing import cost_of
from zhufu.generate.providers import Answer, CallError, Provider

log = logging.getLogger("zhufu.generate")

# Statuses that stop the whole run: the key, the account or the model is wrong, and no retry can help.
FATAL_STATUS = {401, 402, 403, 404}


class CountsRetries(Protocol):
    """What the loop reports into: a generate shard's statistics, or the judge's."""

    retries: int


@dataclass
class RunState:
    provider: dict
    limits: Limits
    cache: AnswerCache
    client: Provider | None = None
    endpoint: str | None = None  # the base URL called, when it is not the config's own
    spent: float = 0.0  # by this process
    cache_spent: float = 0.0  # by every run, from the ledger (set at the end)
    budget_reached: bool = False
    fatal: str | None = None
    started: float = field(default_factory=time.monotonic)


async def call_with_retries(
    state: RunState, messages: list[dict], est_tokens: int, stats: CountsRetries, sample: int = 0
) -> Answer:
    """The answer, or raise CallError after the last attempt (or at once if retrying cannot help)."""
    p = state.provider
    attempts = p["max_attempts"]
    for attempt in range(1, attempts + 1):
        slot = await state.limits.acquire(est_tokens)
        if state.fatal:
            state.limits.release(slot)
            raise CallError("run aborted", retryable=False)
        try:
            return await state.client.complete(messages, sample=sample)
        except CallError as e:
            if not e.retryable or attempt == attempts:
                raise
            stats.retries += 1
            delay = backoff_delay(attempt, p["backoff_s"], p["backoff_max_s"], e.retry_after)
            if e.status == 429 and e.retry_after:
                state.limits.pause(delay)
            log.debug("retry %d/%d in %.2fs after %s", attempt, attempts, delay, e.reason)
        finally:
            state.limits.release(slot)  # the request is over, answered or not
        await asyncio.sleep(delay)
    raise AssertionError("unreachable")


def store_paid(
    state: RunState, key: str, request: str, answer: Answer, scope: tuple[str, str], hold: int | None
) -> float:
    """Cache one answer with its payment in the spend ledger and the release of its budget hold, in one
    transaction; add its cost to the run's spending and return it."""
    p = state.provider
    cost = cost_of(p, answer.prompt_tokens, answer.completion_tokens)
    currency = (p.get("price") or {}).get("currency", "")
    state.cache.put(
        key,
        request,
        answer.text,
        answer.prompt_tokens,
        answer.completion_tokens,
        paid=Payment(scope[0], scope[1], cost, currency),
        release=hold,
    )
    state.spent += cost
    return cost
