"""Manufacture raw shards: one JSON list of records per style × round, from the configured LLM.

Every cell's prompt is seeded (zhufu.grid), every answer goes through the persistent cache (zhufu.generate.cache),
so a rerun pays only for what is missing. Calls run concurrently under RPM/TPM limits, with retries,
backoff and Retry-After honoured (zhufu.generate.limits), and an optional money budget; with
`provider.batch` they go through the provider's batch API instead (zhufu.generate.batch). A shard is written,
atomically, only when every one of its cells has an answer; otherwise the failed cells are listed and
`ProviderError` is raised, and the next run asks only for those.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from zhufu import grid
from zhufu.config import load_config
from zhufu.errors import ProviderError
from zhufu.generate.batch import generate_by_batch
from zhufu.generate.cache import AnswerCache
from zhufu.generate.engine import FATAL_STATUS, RunState, call_with_retries, store_paid
from zhufu.generate.estimate import add_shard_arguments, estimate, selected_shards
from zhufu.generate.keys import cell_key, spend_scope
from zhufu.generate.limits import Limits
from zhufu.generate.local import LOG_DIR_ENV, serving
from zhufu.generate.pricing import cost_of, money, prompt_tokens_estimate
from zhufu.generate.progress import RunProgress
from zhufu.generate.providers import CallError, make_batches, make_provider, resolve_api_key
from zhufu.io import atomic_path, write_jsonl

log = logging.getLogger("zhufu.generate")

FAILED_CELLS_SHOWN = 20


def shard_path(out_dir: str | Path, style: str, round_: int) -> Path:
    return Path(out_dir) / style / f"round_{round_}.json"


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


def _summary(s: ShardStats, provider: dict, seconds: float) -> str:
    rate = s.requested / seconds if seconds > 0 else 0.0
    state = "written" if s.written else "NOT written"
    return (
        f"{s.name}: {s.cells} cells, {s.cached} cached, {s.requested} requested, {s.retries} retries, "
        f"{len(s.failed)} failed, {s.missing} not attempted; tokens {s.prompt_tokens} in / "
        f"{s.completion_tokens} out, cost {money(provider, s.cost)}; {rate:.1f} calls/s; shard {state}"
    )


async def _work(state: RunState, config: dict, items: Iterator[tuple[ShardStats, grid.Cell]]) -> None:
    p = state.provider
    budget = p.get("budget")
    scope = spend_scope(p, state.endpoint)
    for stats, cell in items:
        if state.fatal:
            stats.missing += 1
            continue
        prompt = grid.build_prompt(config, cell)
        key, request = cell_key(config, prompt, state.endpoint)
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
            answer = await call_with_retries(
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
        cost = store_paid(state, key, request, answer, scope, hold)
        stats.cost += cost
        stats.prompt_tokens += answer.prompt_tokens
        stats.completion_tokens += answer.completion_tokens
        stats.done += 1


async def _run(
    config: dict,
    shards: list[ShardStats],
    matrix,
    cache: AnswerCache,
    client,
    progress: bool,
    endpoint: str | None = None,
) -> RunState:
    p = config["provider"]
    limits = Limits(p.get("rpm"), p.get("tpm"), shared=cache, scope=spend_scope(p, endpoint))
    state = RunState(provider=p, limits=limits, cache=cache, client=client, endpoint=endpoint)

    def items():
        for stats in shards:
            for cell in grid.iter_cells(config, stats.style, stats.round, matrix):
                yield stats, cell

    it = items()
    bar = RunProgress(shards, state, progress)
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
    p = config["provider"]
    provider_name = p.get("name") or p["kind"]
    failed = {c for c, _ in stats.failed}
    write_failures(stats)
    with atomic_path(stats.out_path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write("[")
        first = True
        for cell in grid.iter_cells(config, stats.style, stats.round, matrix):
            if cell in failed:
                continue
            prompt = grid.build_prompt(config, cell)
            key, _ = cell_key(config, prompt, endpoint)
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
    p = config["provider"]
    api_key = resolve_api_key(p)  # before any request, and before starting anything
    for style, _, _ in shards:
        if style not in config["styles"]:
            raise ProviderError(f"style {style!r} is not in config styles ({', '.join(config['styles'])})")
    matrix = grid.config_matrix(config)
    stats = [ShardStats(style, int(r), Path(out)) for style, r, out in shards]
    for s in stats:
        s.cells = sum(1 for _ in grid.iter_cells(config, s.style, s.round, matrix))
    for noisy in ("httpx", "httpx2", "openai", "zhipuai"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    endpoint = _other_endpoint(config, base_url)
    share = p.get("max_failed_share", 0.0)
    with AnswerCache(cache_path) as cache:
        with serving(p, api_key, base_url) as (url, key):
            started = time.monotonic()
            if p.get("batch"):  # the batch API: one process, one batch (zhufu.generate.batch)
                batches = make_batches(p, key, url)
                try:
                    state = generate_by_batch(config, stats, matrix, cache, batches, endpoint)
                finally:
                    batches.close()
            else:
                client = make_provider(p, key, url)
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
            f"budget {money(provider, provider['budget'])} reached (spent by all runs: "
            f"{money(provider, state.cache_spent)}, by this job: {money(provider, state.spent)}; "
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


def generate_local_shards(
    config: dict,
    rounds: list[int],
    out_paths: list[str | Path],
    cache_path: str | Path,
    *,
    log_path: str | Path | None = None,
) -> list[ShardStats]:
    """Every shard in one job with one local teacher (the generate_local rule): `out_paths` are
    <dir>/<style>/round_<r>.json; the server's log goes beside `log_path`."""
    if log_path is not None:
        os.environ[LOG_DIR_ENV] = str(Path(log_path).resolve().parent)
    shards = []
    for out in out_paths:
        out = Path(out)
        style, round_ = out.parent.name, int(out.stem.removeprefix("round_"))
        if round_ not in rounds:
            raise ProviderError(f"{out}: round {round_} is not one of the run's rounds {rounds}")
        shards.append((style, round_, out))
    return generate_shards(config, shards, cache_path)


# ---------------------------------------------------------------------------------------------- CLI


def add_generate_arguments(parser) -> None:
    add_shard_arguments(parser)
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


def run_generate(args) -> int:
    config = load_config(*args.configfiles)
    selected = selected_shards(config, args.style, args.round)
    cache_path = args.cache or config["cache"]
    if args.dry_run:
        print(estimate(config, selected, cache_path)[0])
        return 0
    shards = [(s, r, shard_path(args.out_dir, s, r)) for s, r in selected]
    generate_shards(config, shards, cache_path, base_url=args.base_url, progress=not args.no_progress)
    return 0
