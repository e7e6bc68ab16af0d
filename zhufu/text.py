"""The one vocabulary of text in Zhufu: what an emoji is, what a Han character is, how long a text is.

The teacher, the cleaner and the evaluation all count with these functions, so a 小红书 answer that has two
emoji has two for the cleaning rule, for the tests of the teacher and for the metrics. An emoji is one
visible pictograph: a ZWJ sequence (👨‍👩‍👦), a skin-tone modifier or a variation selector (❤️) is part of
the emoji it follows, not an emoji of its own. A length is what a reader sees: code points, without
whitespace and emoji joiners (characters, not bytes).
"""

from __future__ import annotations

import re

# Pictographs, dingbats and symbols, plus the joiners and modifiers that glue one visible emoji together.
EMOJI_BASE = (
    "\U0001f000-\U0001f02f\U0001f0a0-\U0001f0ff\U0001f100-\U0001f1ff\U0001f200-\U0001f2ff"
    "\U0001f300-\U0001f5ff\U0001f600-\U0001f64f\U0001f680-\U0001f6ff\U0001f700-\U0001f7ff"
    "\U0001f800-\U0001f8ff\U0001f900-\U0001f9ff\U0001fa00-\U0001faff\u2600-\u27bf\u2b50\u2b55"
    "\u2b06\u2b07\u2b05\u2934\u2935\u3030\u303d\u3297\u3299\u00a9\u00ae\u203c\u2049\u2122\u2139"
)
EMOJI_RE = re.compile(
    f"[{EMOJI_BASE}](?:\ufe0f|[\U0001f3fb-\U0001f3ff])*(?:\u200d[{EMOJI_BASE}](?:\ufe0f)?)*"
)

_HAN = "\u4e00-\u9fff\u3400-\u4dbf\U00020000-\U0002fa1f\uf900-\ufaff"
HAN_RE = re.compile(f"[{_HAN}]")
NON_HAN_LETTER_RE = re.compile(f"[^\\W\\d_{_HAN}]")  # Latin, kana, …: any Unicode letter that is not Han
_NOT_COUNTED = re.compile("[\\s\ufe0f\u200d]")
# What a tokenizer likely spends one token on: CJK ideographs, radicals, kana, full-width forms.
_CJK_WIDE = re.compile(r"[\u2e80-\u9fff\uf900-\ufaff\uff00-\uffef\U00020000-\U0002fa1f]")


def count_chars(text: str) -> int:
    """Characters a reader sees: code points, without whitespace and emoji joiners (chars, not bytes)."""
    return len(text) - len(_NOT_COUNTED.findall(text))


def count_emoji(text: str) -> int:
    return len(EMOJI_RE.findall(text))


def is_emoji(ch: str) -> bool:
    return EMOJI_RE.match(ch) is not None


_LATIN_WORD_RE = re.compile(r"[A-Za-z]+")


def chinese_ratio(text: str, word_chars: int = 8) -> float:
    """Han characters among all letters, where a Latin word counts as one letter per `word_chars` (rounded
    up): Happy, Birthday, buff, yyds and OK weigh one each, like the one syllable of a Han character, so a
    Chinese blessing with an English set phrase passes, while an English answer (no Han) or a garbled one
    (long runs of letters) does not. Other letters (kana, Cyrillic, …) count one each; digits, punctuation
    and emoji do not count."""
    others = NON_HAN_LETTER_RE.findall(text)
    if not others:  # the usual case: one scan
        return 1.0 if HAN_RE.search(text) else 0.0
    han = len(HAN_RE.findall(text))
    latin = _LATIN_WORD_RE.findall(text)
    weight = len(others) - sum(map(len, latin)) + sum(-(-len(w) // word_chars) for w in latin)
    return han / (han + weight)


def count_cjk(text: str) -> int:
    """Wide (CJK) characters, for token estimates: ideographs, radicals, kana and full-width forms."""
    return len(_CJK_WIDE.findall(text))
