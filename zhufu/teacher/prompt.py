"""Reading a generation prompt: what `zhufu.grid.build_prompt` asks the teacher for, or a free-form request."""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_MAX_CHARS = 50
MAX_CHARS_CAP = 2000  # a longer limit asked for in a prompt is read as this one


@dataclass(frozen=True)
class Ask:
    """What a generation prompt asks for."""

    recipient: str
    scene: str
    style: str
    max_chars: int
    no_address: bool = False
    no_scene: bool = False
    no_wish_words: bool = False


def _field(text: str, label: str) -> str | None:
    m = re.search(label + r"\s*[：:]\s*([^；;，,。\n]+)", text)
    return m.group(1).strip() if m else None


def _detect_style(text: str, bank: dict) -> str:
    """The style whose keyword comes first in the style part of the prompt; 正常 if none does."""
    start = text.find("风格要求")
    segment = text[start:] if start >= 0 else text
    end = segment.find("对象称谓")
    segment = segment[:end] if end > 0 else segment
    best, best_pos = "正常", len(segment) + 1
    for name, style in bank["styles"].items():
        for keyword in [name, *style.get("keywords", [])]:
            pos = segment.find(keyword)
            if 0 <= pos < best_pos:
                best, best_pos = name, pos
    return best


def parse_prompt(text: str, bank: dict) -> Ask:
    """Recipient, scene, style, length limit and injected rules from a prompt built by grid.build_prompt.

    A free-form request (祝姐姐生日快乐，小红书风格) works too: known recipients and scenes are found by name.
    """
    recipient = _field(text, "对象称谓")
    scene = _field(text, "祝福场景")
    if recipient is None:
        recipient = next((r for r in sorted(bank["recipients"], key=len, reverse=True) if r in text), "")
    if scene is None:
        scene = next((s for s in sorted(bank["scenes"], key=len, reverse=True) if s in text), "")
        if not scene:
            scene = next(
                (s for s, v in bank["scenes"].items() if any(k in text for k in v.get("keywords", []))), ""
            )
    # (?<!\d): a run of digits is tried once from its start, not from every digit (quadratic on a long run)
    m = re.search(r"(?:少于|不超过|不多于|不要超过|最多|控制在)\s*(\d{1,6})\s*个?字", text) or re.search(
        r"(?<!\d)(\d{1,6})\s*个?字以内", text
    )
    max_chars = min(int(m.group(1)), MAX_CHARS_CAP) if m else DEFAULT_MAX_CHARS
    rules = [s for s in re.split(r"[。；\n]", text) if "不要" in s or "不能" in s or "避免" in s]
    return Ask(
        recipient=recipient,
        scene=scene,
        style=_detect_style(text, bank),
        max_chars=max(max_chars, 1),
        no_address=any("称谓" in s or "称呼" in s for s in rules),
        no_scene=any("场景" in s for s in rules),
        no_wish_words=any("愿你" in s or "祝你" in s for s in rules),
    )
