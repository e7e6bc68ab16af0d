"""What a config would spend, before spending it: calls still to make, their tokens and their cost
(`zhufu estimate`, the estimate rule, `zhufu generate --dry-run`), the ledger's spending (`zhufu spend`),
and the shard selection of the `generate` and `estimate` commands.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from zhufu import grid
from zhufu.config import add_configfile_argument, load_config
from zhufu.errors import ProviderError
from zhufu.generate.cache import open_readonly
from zhufu.generate.keys import cell_key, spend_scope
from zhufu.generate.pricing import completion_tokens_estimate, cost_of, money, prompt_tokens_estimate
from zhufu.io import write_json


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


def estimate_report(config: dict, estimates: list[ShardEstimate], cache_path: str | Path) -> dict:
    """The estimate as JSON (results/estimate.json, `zhufu estimate --json`): per shard and in total."""
    provider = config["provider"]
    batch = bool(provider.get("batch"))
    shards = []
    for e in estimates:
        row = {k: getattr(e, k) for k in ShardEstimate.__dataclass_fields__}
        row["cost"] = round(cost_of(provider, e.prompt_tokens, e.completion_tokens, batch=batch), 6)
        shards.append(row)
    total = {k: sum(r[k] for r in shards) for k in ("cells", "skipped", "cached", "calls")}
    total["prompt_tokens"] = sum(e.prompt_tokens for e in estimates)
    total["completion_tokens"] = sum(e.completion_tokens for e in estimates)
    total["cost"] = round(
        cost_of(provider, total["prompt_tokens"], total["completion_tokens"], batch=batch), 6
    )
    cache = open_readonly(cache_path)
    try:
        spent = cache.spent(*spend_scope(provider)) if cache is not None else 0.0
    finally:
        if cache is not None:
            cache.close()
    return {
        "provider": provider.get("name") or provider["kind"],
        "kind": provider["kind"],
        "model": provider["model"],
        "currency": (provider.get("price") or {}).get("currency", ""),
        "budget": provider.get("budget"),
        "via": "batch" if batch else "direct",
        "spent_before": round(spent, 6),
        "total": total,
        "shards": shards,
    }


def _ljust(text: str, width: int) -> str:
    """Pad to a terminal width, counting CJK characters as two columns."""
    cols = sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)
    return text + " " * max(1, width - cols)


def format_estimate(config: dict, estimates: list[ShardEstimate], spent: float = 0.0) -> str:
    provider = config["provider"]
    batch = bool(provider.get("batch"))
    via = "batch API prices" if batch else "direct prices"
    lines = [
        f"provider {provider['kind']} / {provider['model']} (estimate: 1 token per CJK character, "
        f"completion ≈ style max_chars; {via})",
        f"{'shard':<24}{'cells':>7}{'skipped':>9}{'cached':>8}{'calls':>7}{'in tok':>10}{'out tok':>10}{'cost':>14}",
    ]
    for e in estimates:
        cost = cost_of(provider, e.prompt_tokens, e.completion_tokens, batch=batch)
        lines.append(
            f"{_ljust(e.style + '/round_' + str(e.round), 24)}{e.cells:>7}{e.skipped:>9}{e.cached:>8}{e.calls:>7}"
            f"{e.prompt_tokens:>10}{e.completion_tokens:>10}{money(provider, cost):>14}"
        )
    calls = sum(e.calls for e in estimates)
    pin = sum(e.prompt_tokens for e in estimates)
    pout = sum(e.completion_tokens for e in estimates)
    total = cost_of(provider, pin, pout, batch=batch)
    budget = provider.get("budget")
    lines.append(
        f"total: {calls} calls, ~{pin} input + ~{pout} output tokens, ~{money(provider, total)}"
        + (
            f" (budget {money(provider, budget)}, {money(provider, spent)} of it spent already)"
            if budget is not None
            else ""
        )
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
    add_configfile_argument(parser)
    parser.add_argument("--style", help="only this style (default: all)")
    parser.add_argument("--round", type=int, help="only this round (default: all)")
    parser.add_argument("--cache", help="answer cache (default: the config's `cache`)")


def estimate(config: dict, selected: list[tuple[str, int]], cache_path: str | Path) -> tuple[str, dict]:
    """The estimate table and its JSON (what `zhufu estimate` and `snakemake estimate` print)."""
    estimates = estimate_shards(config, selected, cache_path)
    report = estimate_report(config, estimates, cache_path)
    return format_estimate(config, estimates, report["spent_before"]), report


def write_estimate(
    config: dict, shards: list[tuple[str, int]], cache_path: str | Path, out_path: str | Path
) -> dict:
    """The `estimate` rule: write results/estimate.json and print the table, spending nothing."""
    table, report = estimate(config, shards, cache_path)
    write_json(out_path, report)
    print(table)
    return report


def add_estimate_arguments(parser) -> None:
    add_shard_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print results/estimate.json's JSON instead")


def run_estimate(args) -> int:
    config = load_config(*args.configfiles)
    selected = selected_shards(config, args.style, args.round)
    table, report = estimate(config, selected, args.cache or config["cache"])
    print(json.dumps(report, ensure_ascii=False, indent=2) if args.json else table)
    return 0


def add_spend_arguments(parser) -> None:
    add_configfile_argument(parser)
    parser.add_argument("--cache", help="answer cache (default: the config's `cache`)")
    parser.add_argument("--json", action="store_true", help="print the ledger as JSON")


def run_spend(args) -> int:
    """The spend ledger of the cache: every paid answer of every run, per provider and model."""
    config = load_config(*args.configfiles)
    cache_path = args.cache or config["cache"]
    cache = open_readonly(cache_path)
    rows = cache.spend_table() if cache is not None else []
    if cache is not None:
        cache.close()
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return 0
    print(f"spend ledger of {cache_path} (every paid answer, all runs)")
    print(f"{'provider':<34}{'model':<24}{'via':<8}{'calls':>7}{'in tok':>10}{'out tok':>10}{'cost':>14}")
    for r in rows:
        print(
            f"{r['provider']:<34}{r['model']:<24}{r['via']:<8}{r['calls']:>7}{r['prompt_tokens']:>10}"
            f"{r['completion_tokens']:>10}{r['cost']:>10.4f} {r['currency']}"
        )
    if not rows:
        print("(nothing spent yet)")
    return 0
