"""What a config would spend, before spending it: calls still to make, their tokens and their cost.

Also the pieces the run shares with the estimate: a cell's cache key, the token estimate, the price, and
the shard selection of the `generate` and `estimate` commands.
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from zhufu import grid
from zhufu.config import load_config
from zhufu.errors import ProviderError
from zhufu.generate.cache import cache_key, canonical_request, open_readonly
from zhufu.generate.providers import provider_identity, sampling_params
from zhufu.text import count_cjk


def cell_key(config: dict, prompt: grid.Prompt) -> tuple[str, str]:
    """The answer cache's key of a cell's prompt, and the canonical request it stands for."""
    identity = provider_identity(config["provider"])
    params = sampling_params(config["provider"])
    sample = prompt.cell.round
    return (
        cache_key(identity, prompt.messages, params, sample),
        canonical_request(identity, prompt.messages, params, sample),
    )


def estimate_tokens(text: str) -> int:
    """A conservative token count: one per CJK character, one per 4 other characters."""
    cjk = count_cjk(text)
    return cjk + math.ceil((len(text) - cjk) / 4)


def prompt_tokens_estimate(messages: list[dict]) -> int:
    return sum(estimate_tokens(m["content"]) + 4 for m in messages) + 2


def completion_tokens_estimate(config: dict, style: str) -> int:
    return min(config["provider"]["max_tokens"], config["styles"][style]["max_chars"] + 8)


def cost_of(provider: dict, prompt_tokens: float, completion_tokens: float) -> float:
    price = provider.get("price") or {}
    return (
        prompt_tokens * price.get("input_per_1m", 0.0) + completion_tokens * price.get("output_per_1m", 0.0)
    ) / 1e6


def money(provider: dict, amount: float) -> str:
    currency = (provider.get("price") or {}).get("currency", "")
    return f"{amount:.4f} {currency}".strip()


@dataclass
class ShardEstimate:
    style: str
    round: int
    cells: int = 0
    skipped: int = 0
    cached: int = 0
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


def estimate_shards(
    config: dict, shards: list[tuple[str, int]], cache_path: str | Path
) -> list[ShardEstimate]:
    """Calls still to make per shard, with their expected tokens. Opens the cache read-only, spends nothing."""
    matrix = grid.config_matrix(config)
    cache = open_readonly(cache_path)
    total_pairs = len(config["grid"]["recipients"]) * len(config["grid"]["scenes"])
    out = []
    try:
        for style, round_ in shards:
            est = ShardEstimate(style, round_)
            completion = completion_tokens_estimate(config, style)
            for cell in grid.iter_cells(config, style, round_, matrix):
                est.cells += 1
                prompt = grid.build_prompt(config, cell)
                key, _ = cell_key(config, prompt)
                if cache is not None and key in cache:
                    est.cached += 1
                    continue
                est.calls += 1
                est.prompt_tokens += prompt_tokens_estimate(prompt.messages)
                est.completion_tokens += completion
            est.skipped = total_pairs - est.cells
            out.append(est)
    finally:
        if cache is not None:
            cache.close()
    return out


def _ljust(text: str, width: int) -> str:
    """Pad to a terminal width, counting CJK characters as two columns."""
    cols = sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)
    return text + " " * max(1, width - cols)


def format_estimate(config: dict, estimates: list[ShardEstimate]) -> str:
    provider = config["provider"]
    lines = [
        f"provider {provider['kind']} / {provider['model']} (estimate: 1 token per CJK character, "
        f"completion ≈ style max_chars)",
        f"{'shard':<24}{'cells':>7}{'skipped':>9}{'cached':>8}{'calls':>7}{'in tok':>10}{'out tok':>10}{'cost':>14}",
    ]
    for e in estimates:
        cost = cost_of(provider, e.prompt_tokens, e.completion_tokens)
        lines.append(
            f"{_ljust(e.style + '/round_' + str(e.round), 24)}{e.cells:>7}{e.skipped:>9}{e.cached:>8}{e.calls:>7}"
            f"{e.prompt_tokens:>10}{e.completion_tokens:>10}{money(provider, cost):>14}"
        )
    calls = sum(e.calls for e in estimates)
    pin = sum(e.prompt_tokens for e in estimates)
    pout = sum(e.completion_tokens for e in estimates)
    total = cost_of(provider, pin, pout)
    budget = provider.get("budget")
    lines.append(
        f"total: {calls} calls, ~{pin} input + ~{pout} output tokens, ~{money(provider, total)}"
        + (f" (budget {money(provider, budget)})" if budget is not None else "")
    )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- CLI


def selected_shards(config: dict, style: str | None, round_: int | None) -> list[tuple[str, int]]:
    styles = [style] if style else list(config["styles"])
    for s in styles:
        if s not in config["styles"]:
            raise ProviderError(f"--style {s}: not a style of this config ({', '.join(config['styles'])})")
    if round_ is not None and not 0 <= round_ < config["rounds"]:
        raise ProviderError(f"--round {round_}: this config has rounds 0..{config['rounds'] - 1}")
    rounds = [round_] if round_ is not None else list(range(config["rounds"]))
    return [(s, r) for s in styles for r in rounds]


def add_shard_arguments(parser) -> None:
    parser.add_argument("--config", help="config YAML (default: the project's config.yaml)")
    parser.add_argument("--style", help="only this style (default: all)")
    parser.add_argument("--round", type=int, help="only this round (default: all)")
    parser.add_argument("--cache", help="answer cache (default: the config's `cache`)")


def add_estimate_arguments(parser) -> None:
    add_shard_arguments(parser)


def run_estimate(args) -> int:
    config = load_config(args.config)
    selected = selected_shards(config, args.style, args.round)
    print(format_estimate(config, estimate_shards(config, selected, args.cache or config["cache"])))
    return 0
