"""Which characters a rule's patterns need: a rule whose patterns need characters an answer lacks can't
match it, so the cleaner skips the rule (one C-level scan instead of every regex). Read from the parsed
patterns, so any configured pattern is handled safely; a pattern this can't reason about turns it off.
"""

from __future__ import annotations

import re
from re import _constants, _parser  # re's own parser (private; read only, with a fallback below)

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
    c = _constants

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
    c = _constants

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

    union: set[str] = set()
    for pattern in patterns:
        try:
            parsed = _parser.parse(pattern)
        except Exception:  # noqa: BLE001 (an unusual pattern only loses the shortcut)
            return None
        classes = _required_classes(parsed, bool(parsed.state.flags & re.IGNORECASE))
        if not classes:
            return None
        union |= min(classes, key=_rarity)
    return frozenset(union)
