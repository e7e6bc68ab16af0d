"""Token estimates before a call, and what a call costs at the provider block's price table."""

from __future__ import annotations

import math

from zhufu.text import count_cjk


def estimate_tokens(text: str) -> int:
    """A conservative token count: one per CJK character, one per 4 other characters."""
    cjk = count_cjk(text)
    return cjk + math.ceil((len(text) - cjk) / 4)


def prompt_tokens_estimate(messages: list[dict]) -> int:
    return sum(estimate_tokens(m["content"]) + 4 for m in messages) + 2


def completion_tokens_estimate(config: dict, style: str) -> int:
    return min(config["provider"]["max_tokens"], config["styles"][style]["max_chars"] + 8)


def rates(provider: dict, batch: bool = False) -> tuple[float, float]:
    """(input, output) price per 1M tokens; `batch`: the batch API's (null in the config = half the direct)."""
    price = provider.get("price") or {}
    pin, pout = price.get("input_per_1m", 0.0), price.get("output_per_1m", 0.0)
    if batch:
        bin_, bout = price.get("batch_input_per_1m"), price.get("batch_output_per_1m")
        pin = pin / 2 if bin_ is None else bin_
        pout = pout / 2 if bout is None else bout
    return pin, pout


def cost_of(provider: dict, prompt_tokens: float, completion_tokens: float, *, batch: bool = False) -> float:
    """What a call costs at the price table: the direct price, or with `batch` the batch API's."""
    pin, pout = rates(provider, batch)
    return (prompt_tokens * pin + completion_tokens * pout) / 1e6


def money(provider: dict, amount: float) -> str:
    currency = (provider.get("price") or {}).get("currency", "")
    return f"{amount:.4f} {currency}".strip()
