"""The offline teacher's answer to a judge request (zhufu.model.judge): a rubric over the phrase bank.

Like the teacher's blessings, this is NOT a language model's opinion. It reads the fields the judge prompt
writes (【对象】【场景】【字数】【待评回答】) and scores 1 to 5: one point to start, and one for each of
- the recipient named (its name or one of its addresses in the phrase bank),
- the scene named or alluded to (a keyword, or a clause of one of the scene's phrases in the bank),
- the length inside the asked band,
- text without broken characters (U+FFFD).
It exists so that `evaluate.judge` runs offline end to end, through the real client, cache and ledger; its
scores say whether an answer reuses the bank's wording, which a real judge does not care about.
"""

from __future__ import annotations

import json
import re

from zhufu.teacher.compose import clauses
from zhufu.text import count_chars

MARKER = "【待评回答】"
_FIELD = re.compile(r"【(对象|场景|字数|待评回答)】(.*)")
_BAND = re.compile(r"(\d+)\D+(\d+)")


def is_judge_request(text: str) -> bool:
    return MARKER in text


def _fields(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in text.splitlines():
        m = _FIELD.match(line.strip())
        if m:
            fields[m[1]] = m[2].strip()
    return fields


def _clauses(value) -> list[str]:
    """Every clause of two characters or more in a phrase-bank entry (a phrase, a list or a mapping)."""
    if isinstance(value, str):
        return list(clauses(value))
    if isinstance(value, list):
        return [c for v in value for c in _clauses(v)]
    if isinstance(value, dict):
        return [c for v in value.values() for c in _clauses(v)]
    return []


def verdict(text: str, bank: dict) -> str:
    """The JSON verdict ({"score", "reason"}) for a judge prompt."""
    f = _fields(text)
    answer, recipient, scene = f.get("待评回答", ""), f.get("对象", ""), f.get("场景", "")
    checks = {}
    entry = bank["recipients"].get(recipient, {})
    addresses = [recipient, *(entry.get("address") or [])]
    checks["对象"] = any(a and a in answer for a in addresses)
    words = [scene, *_clauses(bank["scenes"].get(scene, {}))] if scene else []
    checks["场景"] = any(w and w in answer for w in words)
    band = _BAND.search(f.get("字数", ""))
    n = count_chars(answer)
    checks["字数"] = bool(band) and int(band[1]) <= n <= int(band[2])
    checks["文字完整"] = bool(answer) and "\ufffd" not in answer
    score = 1 + sum(checks.values())
    missing = [k for k, ok in checks.items() if not ok]
    reason = "离线评审（规则，不是大模型）：" + ("都符合" if not missing else "不符合：" + "、".join(missing))
    return json.dumps({"score": score, "reason": reason}, ensure_ascii=False)
