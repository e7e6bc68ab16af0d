"""Run the record rules of zhufu.data.rules over answers: the plan (enabled rules in order, the repairs
repeated until stable, each rule's required characters), one answer's Verdict, and many answers' verdicts,
split across the CPU cores for large inputs.
"""

from __future__ import annotations

import multiprocessing
import os
import re
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

from zhufu.data.prefilter import PATTERN_KEYS, required_chars
from zhufu.data.rules import RECORD_RULES, REPEATED, Drop, RuleContext, rules_by_set


@dataclass
class Verdict:
    """What the record rules decided for one answer."""

    text: str
    changes: list[tuple[str, str, str]] = field(default_factory=list)  # (rule, before, after)
    dropped: tuple[str, str] | None = None  # (rule, detail)


def _plan(rules_cfg: dict, ctx: RuleContext) -> tuple[list, list, list]:
    """The enabled rules as (name, function, config, required characters) steps: before the repairs, the
    repairs, after them."""
    key = ("plan", id(rules_cfg))
    if key not in ctx.compiled:
        steps: tuple[list, list, list] = ([], [], [])
        part = 0
        for name, fn in RECORD_RULES.items():
            if name in REPEATED:
                part = 1
            elif part == 1:
                part = 2
            cfg = rules_cfg[name]
            if cfg.get("enabled", True):
                keys = PATTERN_KEYS.get(name)
                needs = required_chars([p for k in keys for p in cfg[k]]) if keys else None
                if needs is not None:  # one C-level scan, cheaper than a set operation on the text
                    needs = re.compile("[" + "".join(map(re.escape, sorted(needs))) + "]").search
                if name == "suitability" and not ctx.matrix:
                    continue  # no matrix, nothing to check
                steps[part].append((name, fn, cfg, needs))
        ctx.compiled[key] = (rules_cfg, steps)  # holding rules_cfg keeps its id from being reused
    return ctx.compiled[key][1]


def _run_steps(steps, text: str, meta: dict, ctx: RuleContext, changes: list) -> tuple[str, tuple | None]:
    """Apply each rule in turn; record what it changed; stop at the first that drops the record. A rule
    whose patterns need characters the text lacks is skipped: it would return the text unchanged."""
    for name, fn, cfg, needs in steps:
        if needs is not None and needs(text) is None:
            continue
        result = fn(text, meta, cfg, ctx)
        if result.__class__ is Drop:
            return text, (name, result.detail)
        if result is not text and result != text:
            changes.append((name, text, result))
            text = result
    return text, None


def record_verdict(text: str, meta: dict, rules_cfg: dict, ctx: RuleContext) -> Verdict:
    """One answer through the record rules: its repaired text, each change, and the first drop (or None)."""
    before_repairs, repairs, after_repairs = _plan(rules_cfg, ctx)
    changes: list[tuple[str, str, str]] = []
    text, drop = _run_steps(before_repairs, text, meta, ctx, changes)
    # Repairs can uncover each other (quotes around a preamble around stray punctuation): repeat until stable.
    for _ in range(4):
        if drop:
            break
        start = text
        text, drop = _run_steps(repairs, text, meta, ctx, changes)
        if text == start:
            break
    if not drop:
        text, drop = _run_steps(after_repairs, text, meta, ctx, changes)
    return Verdict(text, changes, drop)


_WORKER: dict = {}


def _init_worker(rules_cfg: dict, styles: dict, matrix: dict | None) -> None:
    _WORKER["args"] = (rules_by_set(rules_cfg), RuleContext(styles=styles, matrix=matrix))


def _verdicts_chunk(items: list[tuple[str, dict]]) -> list[tuple | None]:
    """Verdicts in a compact form for the trip back: None when the rules neither changed nor dropped."""
    by_set, ctx = _WORKER["args"]
    out: list[tuple | None] = []
    for text, meta in items:
        v = record_verdict(text, meta, by_set[meta.get("rule_set")], ctx)
        out.append((v.text, v.changes, v.dropped) if v.changes or v.dropped else None)
    return out


def usable_cpus() -> int:
    """The worker processes the clean stage uses by default: the CPUs this process may run on, up to 8."""
    return min(len(os.sched_getaffinity(0)), 8)


def record_verdicts(
    items: list[tuple[str, dict]],
    rules_cfg: dict,
    styles: dict,
    matrix: dict | None,
    workers: int | None = None,
) -> list[Verdict]:
    """record_verdict over (text, meta) pairs, in order, each with the rules of its meta's rule_set (none:
    rules_cfg itself); large inputs are split across the CPU cores."""
    return list(iter_record_verdicts(items, rules_cfg, styles, matrix, workers))


def iter_record_verdicts(
    items: list[tuple[str, dict]],
    rules_cfg: dict,
    styles: dict,
    matrix: dict | None,
    workers: int | None = None,
) -> Iterator[Verdict]:
    """record_verdicts one at a time, each Verdict made when it is asked for (a million of them held at
    once took a few hundred megabytes)."""
    if workers is None:
        workers = usable_cpus() if len(items) >= 50_000 else 1
    if workers <= 1:
        ctx = RuleContext(styles=styles, matrix=matrix)
        by_set = rules_by_set(rules_cfg)
        return (record_verdict(text, meta, by_set[meta.get("rule_set")], ctx) for text, meta in items)
    size = max(5_000, len(items) // (workers * 2) + 1)
    chunks = [items[i : i + size] for i in range(0, len(items), size)]
    with ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("fork"),
        initializer=_init_worker,
        initargs=(rules_cfg, styles, matrix),
    ) as pool:
        results = [r for chunk in pool.map(_verdicts_chunk, chunks) for r in chunk]
    return (Verdict(text) if r is None else Verdict(*r) for (text, _), r in zip(items, results, strict=True))
