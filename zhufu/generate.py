"""Manufacture raw shards: one JSON list of records per style × round, from the configured LLM.

Every cell's prompt is seeded (zhufu.grid), every answer goes through the persistent cache (zhufu.cache),
so a rerun pays only for what is missing. Calls run concurrently under RPM/TPM limits, with retries,
backoff and Retry-After honoured (zhufu.limits), and an optional money budget. A shard is written,
atomically, only when every one of its cells has an answer; otherwise the failed cells are listed and
`ProviderError` is raised, and the next run asks only for those.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from zhufu import grid
from zhufu.cache import AnswerCache, cache_key, canonical_request, open_readonly
from zhufu.errors import ProviderError

log = logging.getLogger("zhufu.generate")

# Keys of the config that change what a shard contains (the rule passes exactly these as params).
SHARD_KEYS = (
    "seed",
    "system_prompt",
    "teacher_system_prompt",
    "grid",
    "prompt_template",
    "injections",
    "input_templates",
    "trigger_separator",
    "provider",
)
FAILED_CELLS_SHOWN = 20
_CJK = re.compile(r"[\u2e80-\u9fff\uf900-\ufaff\uff00-\uffef\U00020000-\U0002fa1f]")


def shard_config(config: dict, style: str) -> dict:
    """The part of `config` one shard depends on, with `styles` narrowed to that style."""
    sub = {k: config[k] for k in SHARD_KEYS if k in config}
    sub["styles"] = {style: config["styles"][style]}
    return sub


def shard_path(out_dir: str | Path, style: str, round_: int) -> Path:
    return Path(out_dir) / style / f"round_{round_}.json"


# ---------------------------------------------------------------------------------------------- tokens & cost


def estimate_tokens(text: str) -> int:
    """A conservative token count: one per CJK character, one per 4 other characters."""
    cjk = len(_CJK.findall(text))
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


def _money(provider: dict, amount: float) -> str:
    currency = (provider.get("price") or {}).get("currency", "")
    return f"{amount:.4f} {currency}".strip()


# ---------------------------------------------------------------------------------------------- grid walking


def _matrix(config: dict) -> dict | None:
    path = config["grid"].get("suitability")
    return grid.load_suitability(path) if path else None


def iter_cells(config: dict, style: str, round_: int, matrix: dict | None) -> Iterator[grid.Cell]:
    """grid.cells() as a generator, so a 100k-cell shard never sits in memory as a list."""
    for r in config["grid"]["recipients"]:
        for s in config["grid"]["scenes"]:
            if matrix is None or grid.is_suitable(matrix, r, s):
                yield grid.Cell(style, round_, r, s)


def _key_for(config: dict, prompt: grid.Prompt, endpoint: str | None = None) -> tuple[str, str]:
    """The cache key of a prompt, for the endpoint that answers it (None: the config's own)."""
    from zhufu.providers import provider_identity, sampling_params

    identity = provider_identity(config["provider"], endpoint)
    params = sampling_params(config["provider"])
    sample = prompt.cell.round
    return (
        cache_key(identity, prompt.messages, params, sample),
        canonical_request(identity, prompt.messages, params, sample),
    )


def spend_scope(provider: dict, endpoint: str | None = None) -> tuple[str, str]:
    """(provider, model) of the spend ledger and the shared rate caps: who answers, without the model."""
    from zhufu.providers import provider_identity

    identity = provider_identity(provider, endpoint)
    model = identity.pop("model")
    return json.dumps(identity, sort_keys=True), model


# ---------------------------------------------------------------------------------------------- estimate


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
    matrix = _matrix(config)
    cache = open_readonly(cache_path)
    total_pairs = len(config["grid"]["recipients"]) * len(config["grid"]["scenes"])
    out = []
    try:
        for style, round_ in shards:
            est = ShardEstimate(style, round_)
            completion = completion_tokens_estimate(config, style)
            for cell in iter_cells(config, style, round_, matrix):
                est.cells += 1
                prompt = grid.build_prompt(config, cell)
                key, _ = _key_for(config, prompt)
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
    currency = (provider.get("price") or {}).get("currency", "")
    shards = []
    for e in estimates:
        row = {k: getattr(e, k) for k in ShardEstimate.__dataclass_fields__}
        row["cost"] = round(cost_of(provider, e.prompt_tokens, e.completion_tokens), 6)
        shards.append(row)
    total = {k: sum(r[k] for r in shards) for k in ("cells", "skipped", "cached", "calls")}
    total["prompt_tokens"] = sum(e.prompt_tokens for e in estimates)
    total["completion_tokens"] = sum(e.completion_tokens for e in estimates)
    total["cost"] = round(cost_of(provider, total["prompt_tokens"], total["completion_tokens"]), 6)
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
        "currency": currency,
        "budget": provider.get("budget"),
        "spent_before": round(spent, 6),
        "total": total,
        "shards": shards,
    }


def _ljust(text: str, width: int) -> str:
    """Pad to a terminal width, counting CJK characters as two columns."""
    import unicodedata

    cols = sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)
    return text + " " * max(1, width - cols)


def format_estimate(config: dict, estimates: list[ShardEstimate], spent: float = 0.0) -> str:
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
            f"{e.prompt_tokens:>10}{e.completion_tokens:>10}{_money(provider, cost):>14}"
        )
    calls = sum(e.calls for e in estimates)
    pin = sum(e.prompt_tokens for e in estimates)
    pout = sum(e.completion_tokens for e in estimates)
    total = cost_of(provider, pin, pout)
    budget = provider.get("budget")
    lines.append(
        f"total: {calls} calls, ~{pin} input + ~{pout} output tokens, ~{_money(provider, total)}"
        + (
            f" (budget {_money(provider, budget)}, {_money(provider, spent)} of it spent already)"
            if budget is not None
            else ""
        )
    )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- the run


@dataclass
class ShardStats:
    style: str
    round: int
    out_path: Path
    cells: int = 0
    done: int = 0
    cached: int = 0
    requested: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    failed: list[tuple[grid.Cell, str]] = field(default_factory=list)
    missing: int = 0  # not attempted: budget reached or run aborted
    written: bool = False

    @property
    def name(self) -> str:
        return f"{self.style}/round_{self.round}"


@dataclass
class RunState:
    provider: dict
    limits: object
    cache: AnswerCache
    client: object = None
    endpoint: str | None = None  # the base URL called, when it is not the config's own
    spent: float = 0.0  # by this process
    cache_spent: float = 0.0  # by every run, from the ledger (set at the end)
    budget_reached: bool = False
    fatal: str | None = None
    started: float = field(default_factory=time.monotonic)


def _summary(s: ShardStats, provider: dict, seconds: float) -> str:
    rate = s.requested / seconds if seconds > 0 else 0.0
    state = "written" if s.written else "NOT written"
    return (
        f"{s.name}: {s.cells} cells, {s.cached} cached, {s.requested} requested, {s.retries} retries, "
        f"{len(s.failed)} failed, {s.missing} not attempted; tokens {s.prompt_tokens} in / "
        f"{s.completion_tokens} out, cost {_money(provider, s.cost)}; {rate:.1f} calls/s; shard {state}"
    )


async def _call_with_retries(
    state: RunState, messages: list[dict], est_tokens: int, stats: ShardStats, sample: int = 0
):
    """The answer, or raise CallError after the last attempt (or at once if retrying cannot help)."""
    from zhufu.limits import backoff_delay
    from zhufu.providers import CallError

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


FATAL_STATUS = {401, 402, 403, 404}


async def _work(state: RunState, config: dict, items: Iterator[tuple[ShardStats, grid.Cell]]) -> None:
    from zhufu.cache import Payment
    from zhufu.providers import CallError

    p = state.provider
    budget = p.get("budget")
    scope = spend_scope(p, state.endpoint)
    currency = (p.get("price") or {}).get("currency", "")
    for stats, cell in items:
        if state.fatal:
            stats.missing += 1
            continue
        prompt = grid.build_prompt(config, cell)
        key, request = _key_for(config, prompt, state.endpoint)
        if state.cache.get(key) is not None:
            stats.cached += 1
            stats.done += 1
            continue
        est_in = prompt_tokens_estimate(prompt.messages)
        # The budget is the ledger's total over every job and run: reserve this call's worst case.
        hold = None
        if budget is not None and (
            state.budget_reached
            or (hold := state.cache.hold(scope, cost_of(p, est_in, p["max_tokens"]), budget)) is None
        ):
            state.budget_reached = True
            stats.missing += 1
            continue
        stats.requested += 1
        try:
            answer = await _call_with_retries(
                state, prompt.messages, est_in + p["max_tokens"], stats, sample=prompt.cell.round
            )
        except CallError as e:
            if hold is not None:
                state.cache.release(hold)
            if e.status in FATAL_STATUS and not state.fatal:
                state.fatal = f"{e.reason} (provider {p['kind']}, model {p['model']})"
            elif state.fatal and e.status is None and not e.retryable:
                stats.missing += 1  # stopped by another worker's fatal answer, not a failure of this cell
                continue
            stats.failed.append((cell, e.reason))
            continue
        except BaseException:
            if hold is not None:
                state.cache.release(hold)
            raise
        cost = cost_of(p, answer.prompt_tokens, answer.completion_tokens)
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
        stats.cost += cost
        stats.prompt_tokens += answer.prompt_tokens
        stats.completion_tokens += answer.completion_tokens
        stats.done += 1


class _Progress:
    """A rich progress bar on a terminal; a log line every `every` seconds otherwise."""

    def __init__(self, shards: list[ShardStats], state: RunState, enabled: bool, every: float = 10.0):
        self.shards, self.state, self.every = shards, state, every
        self.total = sum(s.cells for s in shards)
        self.bar = None
        if enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(
                TextColumn("generate"),
                BarColumn(bar_width=20),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[info]}"),
                console=Console(stderr=True),
            )
            self.task = self.bar.add_task("generate", total=self.total, info="")
        self.enabled = enabled

    def line(self) -> tuple[int, str]:
        s = self.shards
        done = sum(x.done for x in s)
        requested = sum(x.requested for x in s)
        elapsed = time.monotonic() - self.state.started
        info = (
            f"{requested / elapsed if elapsed else 0:.1f} calls/s, {sum(x.cached for x in s)} cached, "
            f"{sum(x.retries for x in s)} retries, {sum(len(x.failed) for x in s)} failed, "
            f"{sum(x.prompt_tokens for x in s)}+{sum(x.completion_tokens for x in s)} tokens"
        )
        return done, info

    async def run(self) -> None:
        if not self.enabled:
            return
        if self.bar:
            self.bar.start()
        try:
            while True:
                await asyncio.sleep(0.25 if self.bar else self.every)
                self.update()
        finally:
            self.update()
            if self.bar:
                self.bar.stop()

    def update(self) -> None:
        done, info = self.line()
        if self.bar:
            self.bar.update(self.task, completed=done, info=info)
        else:
            log.info("%d/%d cells, %s", done, self.total, info)


async def _run(
    config: dict,
    shards: list[ShardStats],
    matrix,
    cache: AnswerCache,
    client,
    progress: bool,
    endpoint: str | None = None,
) -> RunState:
    from zhufu.limits import Limits

    p = config["provider"]
    limits = Limits(p.get("rpm"), p.get("tpm"), shared=cache, scope=spend_scope(p, endpoint))
    state = RunState(provider=p, limits=limits, cache=cache, client=client, endpoint=endpoint)

    def items():
        for stats in shards:
            for cell in iter_cells(config, stats.style, stats.round, matrix):
                yield stats, cell

    it = items()
    bar = _Progress(shards, state, progress)
    ticker = asyncio.create_task(bar.run())
    try:
        await asyncio.gather(*(_work(state, config, it) for _ in range(p["concurrency"])))
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
        await client.aclose()
    return state


def failures_path(shard: str | Path) -> Path:
    """The failures file beside a shard: round_<r>.failures.jsonl (not *.json, so no merge picks it up)."""
    shard = Path(shard)
    return shard.with_name(shard.stem + ".failures.jsonl")


def write_failures(stats: ShardStats) -> None:
    """One JSON line per cell that failed for good (an empty file: none), written beside the shard."""
    from zhufu.io import write_jsonl

    rows = [
        {"style": c.style, "round": c.round, "recipient": c.recipient, "scene": c.scene, "reason": reason}
        for c, reason in stats.failed
    ]
    write_jsonl(failures_path(stats.out_path), rows)


def write_shard(
    config: dict, stats: ShardStats, matrix, cache: AnswerCache, endpoint: str | None = None
) -> None:
    """Stream the shard from the cache to a temp file, then rename it into place (never partial).

    The cells in `stats.failed` (under provider.max_failed_share) are left out and listed beside it."""
    from zhufu.io import atomic_path

    p = config["provider"]
    provider_name = p.get("name") or p["kind"]
    failed = {c for c, _ in stats.failed}
    write_failures(stats)
    with atomic_path(stats.out_path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write("[")
        first = True
        for cell in iter_cells(config, stats.style, stats.round, matrix):
            if cell in failed:
                continue
            prompt = grid.build_prompt(config, cell)
            key, _ = _key_for(config, prompt, endpoint)
            hit = cache.get(key)
            if hit is None:
                raise ProviderError(f"{stats.out_path}: cell {cell} lost its cached answer; rerun generate")
            record = {
                "id": prompt.id,
                "conversation": [
                    {"system": config["system_prompt"], "input": prompt.input, "output": hit.text}
                ],
                "meta": {
                    "recipient": cell.recipient,
                    "scene": cell.scene,
                    "style": cell.style,
                    "round": cell.round,
                    "provider": provider_name,
                    "model": p["model"],
                    "prompt": prompt.messages[-1]["content"],
                    "usage": {"prompt_tokens": hit.prompt_tokens, "completion_tokens": hit.completion_tokens},
                },
            }
            fh.write(("\n" if first else ",\n") + json.dumps(record, ensure_ascii=False))
            first = False
        fh.write("\n]\n")
    stats.written = True


@contextlib.contextmanager
def _endpoint(config: dict, base_url: str | None):
    """The base_url to call: the given one, the config's, or a freshly started offline teacher."""
    if base_url or config["provider"]["kind"] != "offline":
        yield base_url or config["provider"].get("base_url")
        return
    from zhufu.teacher import running_teacher

    with running_teacher() as url:
        yield url


def _other_endpoint(config: dict, base_url: str | None) -> str | None:
    """`--base-url` when it is not the config's own endpoint: its answers are its own in the cache."""
    return base_url if base_url and base_url != config["provider"].get("base_url") else None


def _shard_ok(s: ShardStats, max_failed_share: float) -> bool:
    """Every cell answered, but for failures within the allowed share; none left unrequested."""
    return not s.missing and s.done + len(s.failed) == s.cells and len(s.failed) <= max_failed_share * s.cells


def generate_shards(
    config: dict,
    shards: list[tuple[str, int, str | Path]],
    cache_path: str | Path,
    *,
    base_url: str | None = None,
    progress: bool = True,
) -> list[ShardStats]:
    """Generate the given (style, round, out_path) shards in one pool of workers.

    Writes each complete shard; raises ProviderError listing failed or missing cells if any shard is
    incomplete (its answers so far stay in the cache, and no file is written for it).
    """
    from zhufu.providers import make_provider, resolve_api_key

    p = config["provider"]
    api_key = resolve_api_key(p)  # before any request, and before starting anything
    for style, _, _ in shards:
        if style not in config["styles"]:
            raise ProviderError(f"style {style!r} is not in config styles ({', '.join(config['styles'])})")
    matrix = _matrix(config)
    stats = [ShardStats(style, int(r), Path(out)) for style, r, out in shards]
    for s in stats:
        s.cells = sum(1 for _ in iter_cells(config, s.style, s.round, matrix))
    for noisy in ("httpx", "httpx2", "openai", "zhipuai"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    endpoint = _other_endpoint(config, base_url)
    share = p.get("max_failed_share", 0.0)
    with AnswerCache(cache_path) as cache:
        with _endpoint(config, base_url) as url:
            client = make_provider(p, api_key, url)
            started = time.monotonic()
            state = asyncio.run(_run(config, stats, matrix, cache, client, progress, endpoint))
            seconds = time.monotonic() - started
        state.cache_spent = cache.spent(*spend_scope(p, endpoint))
        for s in stats:
            if _shard_ok(s, share):
                write_shard(config, s, matrix, cache, endpoint)
                for cell, reason in s.failed:
                    log.warning(
                        "%s: left out %s × %s, failed for good: %s",
                        s.name,
                        cell.recipient,
                        cell.scene,
                        reason,
                    )
            else:
                # An older shard would pass for this run's output: incomplete means no file at all.
                for old in (s.out_path, failures_path(s.out_path)):
                    if old.exists():
                        old.unlink()
                        log.warning("%s: removed the file of an earlier run (this run is incomplete)", old)
            log.info("%s", _summary(s, p, seconds))
    _raise_if_incomplete(stats, state, p)
    return stats


def _raise_if_incomplete(stats: list[ShardStats], state: RunState, provider: dict) -> None:
    incomplete = [s for s in stats if not s.written]
    if not incomplete:
        return
    failed = [(s, cell, reason) for s in incomplete for cell, reason in s.failed]
    for s, cell, reason in failed:
        log.error("failed after all retries: %s %s × %s: %s", s.name, cell.recipient, cell.scene, reason)
    missing = sum(s.missing for s in incomplete)
    parts = []
    if state.fatal:
        parts.append(f"the provider refused the requests: {state.fatal}")
    if failed:
        shown = "; ".join(
            f"{s.name} {c.recipient}×{c.scene} ({r})" for s, c, r in failed[:FAILED_CELLS_SHOWN]
        )
        more = (
            f" and {len(failed) - FAILED_CELLS_SHOWN} more (see log)"
            if len(failed) > FAILED_CELLS_SHOWN
            else ""
        )
        share = provider.get("max_failed_share", 0.0)
        parts.append(
            f"{len(failed)} cells failed after all retries (more than provider.max_failed_share {share:g} of "
            f"a shard): {shown}{more}"
        )
    if state.budget_reached:
        parts.append(
            f"budget {_money(provider, provider['budget'])} reached (spent by all runs: "
            f"{_money(provider, state.cache_spent)}, by this job: {_money(provider, state.spent)}; "
            "`zhufu spend` lists it); "
            f"{missing} cells not requested"
        )
    elif missing and not state.fatal:
        parts.append(f"{missing} cells not requested")
    names = ", ".join(s.name for s in incomplete)
    raise ProviderError(
        f"shards not written: {names}. " + ". ".join(parts) + ". Answers received are cached; "
        "rerun to request only the missing cells"
    )


def generate_shard(
    config: dict,
    style: str,
    round_: int,
    out_path: str | Path,
    cache_path: str | Path,
    *,
    base_url: str | None = None,
) -> ShardStats:
    """Generate one shard (the Snakemake rule's entry point)."""
    return generate_shards(config, [(style, round_, out_path)], cache_path, base_url=base_url)[0]


# ---------------------------------------------------------------------------------------------- CLI


def _selected(config: dict, style: str | None, round_: int | None) -> list[tuple[str, int]]:
    styles = [style] if style else list(config["styles"])
    for s in styles:
        if s not in config["styles"]:
            raise ProviderError(f"--style {s}: not a style of this config ({', '.join(config['styles'])})")
    if round_ is not None and not 0 <= round_ < config["rounds"]:
        raise ProviderError(f"--round {round_}: this config has rounds 0..{config['rounds'] - 1}")
    rounds = [round_] if round_ is not None else list(range(config["rounds"]))
    return [(s, r) for s in styles for r in rounds]


def _common_arguments(parser) -> None:
    from zhufu.config import add_configfile_argument

    add_configfile_argument(parser)
    parser.add_argument("--style", help="only this style (default: all)")
    parser.add_argument("--round", type=int, help="only this round (default: all)")
    parser.add_argument("--cache", help="answer cache (default: the config's `cache`)")


def add_generate_arguments(parser) -> None:
    _common_arguments(parser)
    parser.add_argument(
        "-o", "--out-dir", default="results/raw", help="shards go to DIR/<style>/round_<r>.json"
    )
    parser.add_argument(
        "--base-url",
        help="call this endpoint instead of the config's (or the offline teacher); its answers are cached "
        "under its own host",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the calls, tokens and cost; call nothing"
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar or periodic progress lines"
    )


def estimate(config: dict, selected: list[tuple[str, int]], cache_path: str | Path) -> tuple[str, dict]:
    """The estimate table and its JSON (what `zhufu estimate` and `snakemake estimate` print)."""
    estimates = estimate_shards(config, selected, cache_path)
    report = estimate_report(config, estimates, cache_path)
    return format_estimate(config, estimates, report["spent_before"]), report


def write_estimate(
    config: dict, shards: list[tuple[str, int]], cache_path: str | Path, out_path: str | Path
) -> dict:
    """The `estimate` rule: write results/estimate.json and print the table, spending nothing."""
    from zhufu.io import write_json

    table, report = estimate(config, shards, cache_path)
    write_json(out_path, report)
    print(table)
    log.info("%s", table)
    return report


def run_generate(args) -> int:
    from zhufu.config import load_config

    config = load_config(*args.configfiles)
    selected = _selected(config, args.style, args.round)
    cache_path = args.cache or config["cache"]
    if args.dry_run:
        print(estimate(config, selected, cache_path)[0])
        return 0
    shards = [(s, r, shard_path(args.out_dir, s, r)) for s, r in selected]
    generate_shards(config, shards, cache_path, base_url=args.base_url, progress=not args.no_progress)
    return 0


def add_estimate_arguments(parser) -> None:
    _common_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print results/estimate.json's JSON instead")


def run_estimate(args) -> int:
    from zhufu.config import load_config

    config = load_config(*args.configfiles)
    selected = _selected(config, args.style, args.round)
    table, report = estimate(config, selected, args.cache or config["cache"])
    print(json.dumps(report, ensure_ascii=False, indent=2) if args.json else table)
    return 0


def add_spend_arguments(parser) -> None:
    from zhufu.config import add_configfile_argument

    add_configfile_argument(parser)
    parser.add_argument("--cache", help="answer cache (default: the config's `cache`)")
    parser.add_argument("--json", action="store_true", help="print the ledger as JSON")


def run_spend(args) -> int:
    from zhufu.cache import open_readonly
    from zhufu.config import load_config

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
    print(f"{'provider':<34}{'model':<24}{'calls':>7}{'in tok':>10}{'out tok':>10}{'cost':>14}")
    for r in rows:
        print(
            f"{r['provider']:<34}{r['model']:<24}{r['calls']:>7}{r['prompt_tokens']:>10}"
            f"{r['completion_tokens']:>10}{r['cost']:>10.4f} {r['currency']}"
        )
    if not rows:
        print("(nothing spent yet)")
    return 0
