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
import re
from collections import Counter
from collections.abc import Callable
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


# U+FFFD (what a decoder puts where bytes were not valid UTF-8) and control characters other than newline and
# tab: text that was cut inside a multi-byte character, decoded with the wrong codec, or is not text at all.
_BROKEN = re.compile(r"[\ufffd\x00-\x08\x0b-\x1f\x7f-\x9f]")


def rule_broken_text(text: str, meta: dict, cfg: dict, ctx: RuleContext) -> str | Drop:
    found = _BROKEN.findall(text)
    if found:
        first = found[0]
        return Drop(f"{len(found)} broken character(s) (U+{ord(first):04X}): not valid text")
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
    "broken_text": rule_broken_text,
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


def rules_by_set(rules_cfg: dict, names=None) -> dict:
    """None (records of no rule set) and each rule set in `names` (default: every one of clean.rule_sets),
    in order -> its rules."""
    by_set = {None: rules_cfg}
    for name in (rules_cfg.get("rule_sets") or {}) if names is None else names:
        if name not in by_set:
            by_set[name] = rule_set_rules(rules_cfg, name)
    return by_set
