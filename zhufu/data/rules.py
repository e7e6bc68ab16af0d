"""Secondary cleaning: rules that drop or repair records, each configured under `clean:` in the config.

A rule works on one record's answer (`output`) and either keeps it, repairs it (reported as before/after)
or drops the record (reported with the text). `input` is never rewritten. Record rules run in the order of
RECORD_RULES; the three repairs that peel text off the edges (meta_answer, wrapping_quotes,
leading_punctuation) are repeated until none changes anything, because they uncover each other
(「好的，以下是祝福：“！啦～生日快乐”」). The set rules (exact_dedup, near_dedup) run last and keep the first
record of each group, in merged order (zhufu.data.dedup).
"""

from __future__ import annotations

import multiprocessing
import os
import re
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

from zhufu.grid import is_suitable
from zhufu.text import chinese_ratio, count_chars, count_emoji

# Punctuation that may stray at the start of an answer. Opening quotes and brackets are not in it.
LEADING_PUNCT = set("!！。，,、；;：:？?…~～·.—-_ \t\r\n　")
CLOSING_OF = {'"': '"', "“": "”", "「": "」", "『": "』", "'": "'", "‘": "’", "＂": "＂"}


@dataclass
class Drop:
    """A verdict: drop the record. `detail` says why, for the report."""

    detail: str


@dataclass
class RuleContext:
    styles: dict
    matrix: dict | None = None
    compiled: dict = field(default_factory=dict)

    def regexes(self, rule: str, patterns: list[str]) -> list[re.Pattern]:
        """The patterns, compiled once. Kept apart, not joined into one alternation: a pattern that starts
        with a literal (作为…, 抱歉…) is searched with re's fast prefix scan, which an alternation loses."""
        if rule not in self.compiled:
            self.compiled[rule] = [re.compile(p) for p in patterns]
        return self.compiled[rule]


# A rule: (text, meta, rule config, context) -> new text (same text: unchanged) or Drop.
Rule = Callable[[str, dict, dict, RuleContext], "str | Drop"]


def rule_suitability(text: str, meta: dict, cfg: dict, ctx: RuleContext) -> str | Drop:
    r, s = meta.get("recipient"), meta.get("scene")
    if ctx.matrix is None or r is None or s is None:
        return text
    if not is_suitable(ctx.matrix, r, s):
        return Drop(f"{r} × {s} is marked unsuitable in the suitability matrix")
    return text


def rule_refusal(text: str, meta: dict, cfg: dict, ctx: RuleContext) -> str | Drop:
    for rx in ctx.regexes("refusal", cfg["patterns"]):
        m = rx.search(text)
        if m:
            return Drop(f"refusal or AI self-talk: {m.group(0)!r}")
    return text


def rule_meta_answer(text: str, meta: dict, cfg: dict, ctx: RuleContext) -> str | Drop:
    """Strip a preamble (好的，以下是…：) when a blessing follows it; drop when nothing does."""
    regexes = ctx.regexes("meta_answer", cfg["patterns"])
    out = text.strip()
    stripped = True
    while stripped:
        stripped = False
        for rx in regexes:
            m = rx.match(out)
            if m and m.end():
                out, stripped = out[m.end() :].strip(), True
                break
    stripped = out != text.strip()
    if stripped and not any(ch.isalnum() for ch in out):
        return Drop("a preamble with no blessing after it")
    for rx in ctx.regexes("meta_answer_only", cfg["only_patterns"]):
        if rx.fullmatch(out):
            return Drop("only talk about the answer, no blessing")
    return out if stripped else text


def rule_wrapping_quotes(text: str, meta: dict, cfg: dict, ctx: RuleContext) -> str | Drop:
    if not text or (text[0] not in CLOSING_OF and not text[0].isspace()):
        return text
    out = text.strip()
    while len(out) >= 2 and out[0] in CLOSING_OF:
        opening, closing = out[0], CLOSING_OF[out[0]]
        inner = out[1:]
        # allow a full stop after the closing quote: “…”。
        tail = inner.rstrip("。.")
        if not tail.endswith(closing):
            break
        inner = tail[:-1]
        if opening in inner or closing in inner:
            break
        out = inner.strip()
    return out if out != text.strip() else text


def rule_leading_punctuation(text: str, meta: dict, cfg: dict, ctx: RuleContext) -> str | Drop:
    """Strip stray punctuation, and single particles between punctuation, from the start (「！啦～」「。哦！」)."""
    particles = cfg["particles"]
    if not text or (text[0] not in LEADING_PUNCT and text[0] not in particles):
        return text
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in LEADING_PUNCT:
            i += 1
        elif ch in particles and i + 1 < n and text[i + 1] in LEADING_PUNCT and text[i + 1] not in " \t":
            # a lone particle (not 哈哈) at the start or after punctuation: 啦～ / 。哦！
            i += 1
        else:
            break
    if i == 0 or i >= n:
        return text
    return text[i:]


def rule_list_items(text: str, meta: dict, cfg: dict, ctx: RuleContext) -> str | Drop:
    markers = 0
    for rx in ctx.regexes("list_items", cfg["marker_patterns"]):
        markers += len(rx.findall(text))
    if markers >= cfg["min_markers"]:
        return Drop(f"a list of {markers} items, not one blessing")
    for rx in ctx.regexes("list_items_alt", cfg["alternative_patterns"]):
        m = rx.search(text)
        if m:
            return Drop(f"several alternatives in one answer: {m.group(0)!r}")
    return text


def rule_chinese_ratio(text: str, meta: dict, cfg: dict, ctx: RuleContext) -> str | Drop:
    ratio = chinese_ratio(text)
    if ratio < cfg["min_ratio"]:
        return Drop(f"only {ratio:.0%} of the letters are Chinese (min {cfg['min_ratio']:.0%})")
    return text


def repetition_ratio(text: str, n: int) -> float:
    """Share of character n-gram occurrences that belong to an n-gram seen more than once.

    Like data-juicer's character_repetition_filter it counts repeated character n-grams, but it does not
    keep only the top sqrt(#distinct) n-grams: on a short text that selection is empty exactly when every
    n-gram repeats (快乐快乐快乐… scores 0), so it cannot catch the repetition short blessings have.
    """
    text = "".join(text.split())
    total = len(text) - n + 1
    if total < 1:
        return 0.0
    grams = [text[i : i + n] for i in range(total)]
    if len(set(grams)) == total:
        return 0.0
    counts = Counter(grams)
    return sum(c for c in counts.values() if c > 1) / total


def rule_char_repetition(text: str, meta: dict, cfg: dict, ctx: RuleContext) -> str | Drop:
    # Fast bound: a repeated n-gram's later occurrence holds only characters seen before, and the repeated
    # share is at most twice the later occurrences, so it is ≤ 2·(len − distinct chars)/(n-grams).
    n, squeezed = cfg["ngram"], "".join(text.split())
    total = len(squeezed) - n + 1
    if total < 1 or 2 * (len(squeezed) - len(set(squeezed))) <= cfg["max_ratio"] * total:
        return text
    ratio = repetition_ratio(text, n)
    if ratio > cfg["max_ratio"]:
        return Drop(
            f"{ratio:.0%} of the {cfg['ngram']}-character n-grams repeat (max {cfg['max_ratio']:.0%})"
        )
    return text


_YOU_INFORMAL = re.compile(r"(?<!迷)你(?!们)")
_YOU_FORMAL = re.compile(r"您")


def rule_honorific(text: str, meta: dict, cfg: dict, ctx: RuleContext) -> str | Drop:
    """Address elders with 您 and peers with 你. The whole recipient name decides, never a substring of
    it: 邻居赵大妈 is an elder even though 邻居 alone is a peer (Tianji's substring rule got this wrong)."""
    recipient = meta.get("recipient")
    if recipient is None:
        return text
    if recipient in cfg["elders"]:
        return _YOU_INFORMAL.sub("您", text)
    if recipient in cfg["peers"]:
        return _YOU_FORMAL.sub("你", text)
    return text


def rule_length(text: str, meta: dict, cfg: dict, ctx: RuleContext) -> str | Drop:
    style = ctx.styles.get(meta.get("style"))
    if style is None:
        return text
    n = count_chars(text)
    lo, hi = style.get("min_chars", 0), style["max_chars"]
    if n < lo:
        return Drop(f"{n} chars, below the {meta['style']} band {lo}–{hi}")
    if n > hi:
        return Drop(f"{n} chars, above the {meta['style']} band {lo}–{hi}")
    return text


def rule_emoji(text: str, meta: dict, cfg: dict, ctx: RuleContext) -> str | Drop:
    style = ctx.styles.get(meta.get("style"))
    band = style.get("emoji") if style else None
    if not band:
        return text
    n = count_emoji(text)
    lo, hi = band.get("min", 0), band.get("max", n)
    if not lo <= n <= hi:
        return Drop(f"{n} emoji, outside the {meta['style']} band {lo}–{hi}")
    return text


# Record rules in the order they run. The repairs in REPEATED run again until none changes the text.
RECORD_RULES: dict[str, Rule] = {
    "suitability": rule_suitability,
    "refusal": rule_refusal,
    "meta_answer": rule_meta_answer,
    "wrapping_quotes": rule_wrapping_quotes,
    "leading_punctuation": rule_leading_punctuation,
    "list_items": rule_list_items,
    "chinese_ratio": rule_chinese_ratio,
    "char_repetition": rule_char_repetition,
    "honorific": rule_honorific,
    "length": rule_length,
    "emoji": rule_emoji,
}
REPEATED = ("meta_answer", "wrapping_quotes", "leading_punctuation")
SET_RULES = ("exact_dedup", "near_dedup")
ALL_RULES = ("system_prompt", *RECORD_RULES, *SET_RULES)


@dataclass
class Verdict:
    """What the record rules decided for one answer."""

    text: str
    changes: list[tuple[str, str, str]] = field(default_factory=list)  # (rule, before, after)
    dropped: tuple[str, str] | None = None  # (rule, detail)


def _plan(rules_cfg: dict, ctx: RuleContext) -> tuple[list, list, list]:
    """The enabled rules as (name, function, config) steps: before the repairs, the repairs, after them."""
    key = ("plan", id(rules_cfg))
    if key not in ctx.compiled:
        steps: tuple[list, list, list] = ([], [], [])
        part = 0
        for name, fn in RECORD_RULES.items():
            if name in REPEATED:
                part = 1
            elif part == 1:
                part = 2
            if rules_cfg[name].get("enabled", True):
                steps[part].append((name, fn, rules_cfg[name]))
        ctx.compiled[key] = (rules_cfg, steps)  # holding rules_cfg keeps its id from being reused
    return ctx.compiled[key][1]


def _run_steps(steps, text: str, meta: dict, ctx: RuleContext, changes: list) -> tuple[str, tuple | None]:
    """Apply each rule in turn; record what it changed; stop at the first that drops the record."""
    for name, fn, cfg in steps:
        result = fn(text, meta, cfg, ctx)
        if result.__class__ is Drop:
            return text, (name, result.detail)
        if result is not text and result != text:
            changes.append((name, text, result))
            text = result
    return text, None


def apply_record_rules(text: str, meta: dict, rules_cfg: dict, ctx: RuleContext) -> Verdict:
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
    _WORKER["args"] = (rules_cfg, RuleContext(styles=styles, matrix=matrix))


def _verdicts_chunk(items: list[tuple[str, dict]]) -> list[tuple | None]:
    """Verdicts in a compact form for the trip back: None when the rules neither changed nor dropped."""
    rules_cfg, ctx = _WORKER["args"]
    out: list[tuple | None] = []
    for text, meta in items:
        v = apply_record_rules(text, meta, rules_cfg, ctx)
        out.append((v.text, v.changes, v.dropped) if v.changes or v.dropped else None)
    return out


def record_verdicts(
    items: list[tuple[str, dict]],
    rules_cfg: dict,
    styles: dict,
    matrix: dict | None,
    workers: int | None = None,
) -> list[Verdict]:
    """apply_record_rules over (text, meta) pairs, in order; large inputs are split across the CPU cores."""
    if workers is None:
        workers = min(len(os.sched_getaffinity(0)), 8) if len(items) >= 50_000 else 1
    if workers <= 1:
        ctx = RuleContext(styles=styles, matrix=matrix)
        return [apply_record_rules(text, meta, rules_cfg, ctx) for text, meta in items]
    size = max(5_000, len(items) // (workers * 2) + 1)
    chunks = [items[i : i + size] for i in range(0, len(items), size)]
    with ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("fork"),
        initializer=_init_worker,
        initargs=(rules_cfg, styles, matrix),
    ) as pool:
        results = [r for chunk in pool.map(_verdicts_chunk, chunks) for r in chunk]
    return [Verdict(text) if r is None else Verdict(*r) for (text, _), r in zip(items, results, strict=True)]
