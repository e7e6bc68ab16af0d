"""Secondary cleaning: rules that drop or repair records, each configured under `clean:` in the config.

A rule works on one record's answer (`output`) and either keeps it, repairs it (reported as before/after)
or drops the record (reported with the text). `input` is rewritten only by input_rewrite (Tianji's
refiner, off by default), and reported like any repair. Record rules run in the order of
RECORD_RULES; the repairs that peel text off the edges (meta_answer, first_line, trailing_remark,
wrapping_quotes, leading_punctuation) are repeated until none changes anything, because they uncover each
other (「好的，以下是祝福：“！啦～生日快乐”」). The set rules (exact_dedup, near_dedup) run last and keep the first
record of each group, in merged order (zhufu.data.dedup).
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import re
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

from zhufu.errors import ConfigError
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
        key = (rule, id(patterns))  # rule sets may give a rule other patterns
        if key not in self.compiled:
            self.compiled[key] = (
                patterns,
                [re.compile(p) for p in patterns],
            )  # holding patterns keeps its id
        return self.compiled[key][1]


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


def rule_trailing_remark(text: str, meta: dict, cfg: dict, ctx: RuleContext) -> str | Drop:
    """Strip notes and remarks after the blessing (（注：…）, 希望她会喜欢！, 可根据实际情况调整。); drop the
    record when nothing else is left. Each pattern must match up to the end of the answer."""
    regexes = ctx.regexes("trailing_remark", cfg["patterns"])
    out = text.rstrip()
    cut = True
    while cut and out:
        cut = False
        for rx in regexes:
            m = rx.search(out)
            if m:
                out, cut = out[: m.start()].rstrip(), True
                break
    if out == text.rstrip():
        return text
    if not any(ch.isalnum() for ch in out):
        return Drop("only a note about the answer, no blessing")
    return out


def rule_first_line(text: str, meta: dict, cfg: dict, ctx: RuleContext) -> str | Drop:
    """Keep only the first non-empty line, as the seed's cleaning does (off by default: it cuts letters)."""
    out = text.strip()
    first = out.split("\n", 1)[0].rstrip()
    return first if first != out else text


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
    ratio = chinese_ratio(text, cfg["latin_word_chars"])
    if ratio < cfg["min_ratio"]:
        return Drop(
            f"only {ratio:.0%} of the letters are Chinese (min {cfg['min_ratio']:.0%}, a Latin word counts as one)"
        )
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


def rule_peer_address(text: str, meta: dict, cfg: dict, ctx: RuleContext) -> str | Drop:
    """Tianji's optional peer rewrites (off by default): for a peer, plainer forms of address (姐姐 -> 姐)
    and no 尊敬的."""
    if meta.get("recipient") not in cfg["peers"]:
        return text
    out = text
    for word in cfg["remove"]:
        out = out.replace(word, "")
    for before, after in cfg["replacements"].items():
        out = out.replace(before, after)
    return out


def rewritten_input(record_id: str, meta: dict, cfg: dict) -> str | None:
    """Tianji's refiner: a 正常 festival input rewritten from one of its templates (the template chosen by
    the record's id, so reruns agree), or None when the record's style, scene or recipient does not qualify."""
    recipient, scene = meta.get("recipient"), (meta.get("scene") or "").strip()
    if recipient is None or meta.get("style") not in cfg["styles"] or scene not in cfg["scenes"]:
        return None
    digest = hashlib.sha256(f"input_rewrite\x1f{record_id}".encode()).digest()
    template = cfg["templates"][int.from_bytes(digest[:8], "big") % len(cfg["templates"])]
    return template.format(recipient=recipient, scene=scene)


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
    "first_line": rule_first_line,
    "trailing_remark": rule_trailing_remark,
    "wrapping_quotes": rule_wrapping_quotes,
    "leading_punctuation": rule_leading_punctuation,
    "list_items": rule_list_items,
    "chinese_ratio": rule_chinese_ratio,
    "char_repetition": rule_char_repetition,
    "honorific": rule_honorific,
    "peer_address": rule_peer_address,
    "length": rule_length,
    "emoji": rule_emoji,
}
REPEATED = ("meta_answer", "first_line", "trailing_remark", "wrapping_quotes", "leading_punctuation")
SET_RULES = ("exact_dedup", "near_dedup")
ALL_RULES = ("system_prompt", "input_rewrite", *RECORD_RULES, *SET_RULES)


def rule_set_rules(rules_cfg: dict, name: str) -> dict:
    """The rules of a named rule set: its settings (clean.rule_sets.<name>) merged over the clean rules."""
    sets = rules_cfg.get("rule_sets") or {}
    if name not in sets:
        raise ConfigError(
            f"clean.rule_sets: no rule set {name!r} (known: {', '.join(sorted(sets)) or 'none'})"
        )
    merged = dict(rules_cfg)
    for rule, settings in sets[name].items():
        if rule == "parse_meta":
            continue
        if rule not in ALL_RULES:
            raise ConfigError(f"clean.rule_sets.{name}.{rule}: unknown rule (rules: {', '.join(ALL_RULES)})")
        merged[rule] = {**rules_cfg[rule], **settings}
    return merged


@dataclass
class Verdict:
    """What the record rules decided for one answer."""

    text: str
    changes: list[tuple[str, str, str]] = field(default_factory=list)  # (rule, before, after)
    dropped: tuple[str, str] | None = None  # (rule, detail)


# The pattern lists of each rule that does nothing unless one of them matches (its verdict is then `text`).
PATTERN_KEYS = {
    "refusal": ("patterns",),
    "meta_answer": ("patterns", "only_patterns"),
    "trailing_remark": ("patterns",),
    "list_items": ("marker_patterns", "alternative_patterns"),
}
_SMALL_CLASS = 64


# Frequent characters of blessings, avoided when choosing which required characters to test for.
_COMMON = set(
    "的一是了我不人在有这个上们来到时大为你您生年和要也会家可过天能对小多心好起当成如事把还用样想开美从无情最前同日又行意祝福快乐愿新春节康健安平顺利幸万"
)


def _rarity(cls: frozenset) -> tuple[int, int]:
    return len(cls & _COMMON), len(cls)


def _char_class(items, ignorecase: bool) -> frozenset | None:
    """The characters a regex character class can match, when it is a small, plain set of literals."""
    from re import _constants as c

    chars: set[str] = set()
    for op, av in items:
        if op is c.LITERAL:
            chars.add(chr(av))
        elif op is c.RANGE and av[1] - av[0] < _SMALL_CLASS:
            chars.update(map(chr, range(av[0], av[1] + 1)))
        else:  # NEGATE, CATEGORY (\d, \s…), wide ranges
            return None
    if ignorecase and any(ch.lower() != ch.upper() for ch in chars):
        return None  # case folding could match characters outside the set
    return frozenset(chars) if len(chars) <= _SMALL_CLASS else None


def _required_classes(parsed, ignorecase: bool) -> list[frozenset]:
    """Sets of characters such that every match contains a character of each set (a necessary condition)."""
    from re import _constants as c

    required: list[frozenset] = []
    for op, av in parsed:
        if op is c.LITERAL:
            cls = _char_class([(op, av)], ignorecase)
        elif op is c.IN:
            cls = _char_class(av, ignorecase)
        elif op is c.SUBPATTERN:
            _, add, remove, sub = av
            flags = (ignorecase or bool(add & c.SRE_FLAG_IGNORECASE)) and not remove & c.SRE_FLAG_IGNORECASE
            required += _required_classes(sub, flags)
            continue
        elif op in (c.MAX_REPEAT, c.MIN_REPEAT, c.POSSESSIVE_REPEAT) and av[0] >= 1:
            required += _required_classes(av[2], ignorecase)
            continue
        elif op is c.BRANCH:
            union: set[str] = set()
            for alt in av[1]:
                options = _required_classes(alt, ignorecase)
                if not options:
                    break
                union |= min(options, key=_rarity)
            else:
                required.append(frozenset(union))
            continue
        else:  # AT, ANY, ASSERT (look-arounds), repeats that may be empty, …
            continue
        if cls is not None:
            required.append(cls)
    return required


def required_chars(patterns: list[str]) -> frozenset | None:
    """Characters of which every match of any of the patterns contains at least one; None when some pattern
    has no such set (the rule must then always run). A text that contains none of them cannot match.

    Read from the parsed patterns (re's own parser), so it holds for any configured pattern. Of each
    pattern's required sets the smallest is taken, preferring rare characters. Most answers contain none of
    the characters that refusals, preambles and notes need, and skip those rules without a regex search.
    """
    import re as _re
    from re import _parser

    union: set[str] = set()
    for pattern in patterns:
        try:
            parsed = _parser.parse(pattern)
        except Exception:  # noqa: BLE001 (an unusual pattern only loses the shortcut)
            return None
        classes = _required_classes(parsed, bool(parsed.state.flags & _re.IGNORECASE))
        if not classes:
            return None
        union |= min(classes, key=_rarity)
    return frozenset(union)


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


def _rules_by_set(rules_cfg: dict) -> dict:
    """None (no rule set) and each named rule set -> its rules."""
    return {
        None: rules_cfg,
        **{name: rule_set_rules(rules_cfg, name) for name in rules_cfg.get("rule_sets") or {}},
    }


def _init_worker(rules_cfg: dict, styles: dict, matrix: dict | None) -> None:
    _WORKER["args"] = (_rules_by_set(rules_cfg), RuleContext(styles=styles, matrix=matrix))


def _verdicts_chunk(items: list[tuple[str, dict]]) -> list[tuple | None]:
    """Verdicts in a compact form for the trip back: None when the rules neither changed nor dropped."""
    by_set, ctx = _WORKER["args"]
    out: list[tuple | None] = []
    for text, meta in items:
        v = apply_record_rules(text, meta, by_set[meta.get("rule_set")], ctx)
        out.append((v.text, v.changes, v.dropped) if v.changes or v.dropped else None)
    return out


def record_verdicts(
    items: list[tuple[str, dict]],
    rules_cfg: dict,
    styles: dict,
    matrix: dict | None,
    workers: int | None = None,
) -> list[Verdict]:
    """apply_record_rules over (text, meta) pairs, in order, each with the rules of its meta's rule_set (none:
    rules_cfg itself); large inputs are split across the CPU cores."""
    if workers is None:
        workers = min(len(os.sched_getaffinity(0)), 8) if len(items) >= 50_000 else 1
    if workers <= 1:
        ctx = RuleContext(styles=styles, matrix=matrix)
        by_set = _rules_by_set(rules_cfg)
        return [apply_record_rules(text, meta, by_set[meta.get("rule_set")], ctx) for text, meta in items]
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
