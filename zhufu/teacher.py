"""Zhufu's offline teacher: an OpenAI-compatible HTTP server that composes blessings from a phrase bank.

It is a stand-in so that the default workflow runs with no API key and no GPU. It is NOT a language
model: it reads the recipient, scene, style, length limit and extra rules out of the generation prompt
that `zhufu.grid.build_prompt` writes, and assembles a Chinese blessing from `resources/phrases.yaml`.
Every answer says so (`system_fingerprint`), and so does the `zhufu serve-teacher` banner.

Answers are reproducible: the random choices are seeded by a hash of the request's messages,
temperature and `seed`, so the same request always gets the same answer and different cells differ.

Endpoints: `POST /v1/chat/completions` (also `/chat/completions` and ZhipuAI's
`/api/paas/v4/chat/completions`), `GET /v1/models`, and `GET /zhufu/stats`, which returns
`{"requests": n, ...}`: the chat-completion requests received so far.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

from zhufu.config import ROOT
from zhufu.errors import ConfigError, ProviderError, not_utf8

log = logging.getLogger(__name__)

DEFAULT_PHRASES = ROOT / "resources" / "phrases.yaml"
DEFAULT_MODEL = "zhufu-offline-teacher"
FINGERPRINT = "zhufu-offline-teacher (phrase bank, not an LLM)"
CHAT_PATHS = {"/v1/chat/completions", "/chat/completions", "/api/paas/v4/chat/completions"}
STATS_PATHS = {"/zhufu/stats", "/v1/zhufu/stats"}
MODELS_PATHS = {"/v1/models", "/models", "/api/paas/v4/models"}
DEFAULT_MAX_CHARS = 50
MAX_CHARS_CAP = 2000  # a longer limit asked for in a prompt is read as this one
# The HTTP API refuses a body over this size (413), and gives up on a client that sends nothing for
# REQUEST_TIMEOUT_S seconds (a short body, a stalled or slow client): no request can hold a thread forever.
MAX_BODY_BYTES = 1 << 20
REQUEST_TIMEOUT_S = 15.0
WISH_WORDS = ("愿你", "祝你", "愿您", "祝您")
PARTICLES = "呀哦呢啦哟鸭吧嘛"
# Pictographs, dingbats and symbols: what a reader counts as an emoji.
EMOJI_RE = re.compile("[\U0001f000-\U0001faff\u2600-\u27bf\u2b00-\u2bff]")


# ---------------------------------------------------------------------------------------------------------
# The phrase bank


@lru_cache(maxsize=8)
def load_phrases(path: str | Path = DEFAULT_PHRASES) -> dict:
    """Read and check the phrase bank; a ConfigError names the file and the missing key."""
    p = Path(path)
    try:
        with open(p, encoding="utf-8") as fh:
            bank = yaml.safe_load(fh)
    except FileNotFoundError:
        raise ConfigError(
            f"{p}: phrase bank not found (pass --phrases PATH or restore resources/phrases.yaml)"
        ) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: {not_utf8(e)}") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot be read ({e.strerror or e})") from None
    if not isinstance(bank, dict):
        raise ConfigError(f"{p}: expected a mapping with categories, recipients, scenes, styles, general")
    for key in ("categories", "recipients", "scenes", "styles", "general"):
        if not isinstance(bank.get(key), dict) or not bank[key]:
            raise ConfigError(f"{p}: key '{key}' is missing or empty")
        for name, entry in bank[key].items():
            if key == "general":
                ok = isinstance(entry, list) and all(isinstance(x, str) for x in entry)
                if not ok:
                    raise ConfigError(f"{p}: general.{name} must be a list of phrases")
                continue
            if not isinstance(entry, dict):
                raise ConfigError(f"{p}: {key}.{name} must be a mapping")
            for field, value in entry.items():
                if isinstance(value, list) and not all(isinstance(x, str) for x in value):
                    raise ConfigError(f"{p}: {key}.{name}.{field} must be a list of strings")
    for name, cat in bank["categories"].items():
        if not cat.get("wish"):
            raise ConfigError(f"{p}: categories.{name}.wish must list at least one phrase")
    for name, entry in bank["recipients"].items():
        if entry.get("category") not in bank["categories"]:
            raise ConfigError(
                f"{p}: recipients.{name}.category {entry.get('category')!r} is not in categories"
            )
    for name, scene in bank["scenes"].items():
        for key in ("greet", "wish", "cute", "formal_open", "formal"):
            if not scene.get(key):
                raise ConfigError(f"{p}: scenes.{name}.{key} must list at least one phrase")
    return bank


# ---------------------------------------------------------------------------------------------------------
# Reading the generation prompt


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


# ---------------------------------------------------------------------------------------------------------
# Composing a blessing


def _category(recipient: str, bank: dict) -> tuple[str, bool]:
    """(category, honorific) of a recipient: from its entry, else from hints in its name."""
    entry = bank["recipients"].get(recipient)
    if entry:
        cat = entry["category"]
    else:
        hints = bank.get("category_hints", {})
        cat = next((c for c, words in hints.items() if any(w in recipient for w in words)), "peer")
        cat = cat if cat in bank["categories"] else next(iter(bank["categories"]))
        entry = {}
    honorific = entry.get("honorific", bank["categories"][cat].get("honorific", False))
    return cat, bool(honorific)


class _Composer:
    """One answer's worth of seeded choices over the phrase bank, with the prompt's rules applied."""

    def __init__(self, ask: Ask, bank: dict, rng: random.Random):
        self.ask, self.bank, self.rng = ask, bank, rng
        self.category, self.honorific = _category(ask.recipient, bank)
        self.cat = bank["categories"][self.category]
        self.scene = bank["scenes"].get(ask.scene)
        self.style = bank["styles"].get(ask.style, {})
        entry = bank["recipients"].get(ask.recipient, {})
        self.addresses = list(entry.get("address") or ([ask.recipient] if ask.recipient else []))
        banned: list[str] = []
        if ask.no_address:
            banned += [ask.recipient, *self.addresses]
        if ask.no_scene and ask.scene:
            banned += [ask.scene, *(self.scene or {}).get("keywords", [])]
        if ask.no_wish_words:
            banned += list(WISH_WORDS)
        self.banned = [b for b in banned if b]

    def you(self, text: str) -> str:
        return text.replace("你", "您") if self.honorific else text

    def ok(self, text: str) -> bool:
        return not any(b in text for b in self.banned)

    def pool(self, *sources: list[str] | None) -> list[str]:
        """Allowed phrases from the first source that has any, shuffled."""
        for source in sources:
            items = [self.you(s) for s in source or []]
            items = [s for s in items if self.ok(s)]
            if items:
                self.rng.shuffle(items)
                return items
        return []

    def scene_pool(self, key: str) -> list[str]:
        return self.pool(
            (self.scene or {}).get(key), self.bank["general"].get(key), self.bank["general"]["wish"]
        )

    def cat_pool(self, key: str) -> list[str]:
        return self.pool(self.cat.get(key), self.cat["wish"])

    def address(self, prefix: str = "") -> list[str]:
        if self.ask.no_address or not self.addresses:
            return []
        names = self.addresses[:]
        self.rng.shuffle(names)
        return [self.you(prefix) + n for n in names]

    def wish_prefixes(self) -> list[str]:
        options = ["愿你", "祝你", "盼你", ""] if not self.ask.no_wish_words else ["盼你", "", "但愿"]
        self.rng.shuffle(options)
        return [self.you(o) for o in options]

    def wished(self, phrases: list[str], end: str) -> list[str]:
        """Phrases with a wish verb in front (愿你…), then bare, so the slot can pick by length."""
        prefixes = self.wish_prefixes()
        out = [p + s + end for s in phrases for p in (prefixes[:2] if _takes_prefix(s) else [""])]
        return [o for o in out if self.ok(o)]

    def greetings(self) -> list[str]:
        if self.scene is None:
            return self.pool(self.bank["general"]["greet"])
        return self.pool(self.scene["greet"])

    def emoji(self, n: int) -> list[str]:
        pool = list((self.scene or {}).get("emoji", [])) or list(self.style.get("emoji", ["✨"]))
        general = list(self.bank["styles"].get("小红书", {}).get("emoji", ["✨"]))
        picks = [self.rng.choice(pool)] + [self.rng.choice(general) for _ in range(max(0, n - 1))]
        return picks[:n]


def _takes_prefix(phrase: str) -> bool:
    """Whether 愿你/祝你 reads well in front: not before a statement (…是…) or a phrase that names 你 itself."""
    return not any(w in phrase for w in ("你", "您", "是", "里"))


def _clauses(text: str) -> set[str]:
    return {c for c in re.split(r"[，。！、；：\s]", text) if len(c) >= 2}


def _fit(slots: list[tuple[list[str], bool]], limit: int, target: int) -> str:
    """Pick one candidate per slot, in order, so the text stays within `limit` (and near `target`).

    A required slot always gets something (its shortest candidate if nothing fits); an optional one is
    filled only while the text is shorter than `target`.
    """
    out: list[str] = []
    used = 0
    for i, (cands, required) in enumerate(slots):
        if not cands:
            continue
        reserve = sum(min(map(len, c)) for c, req in slots[i + 1 :] if req and c)
        room = limit - used - reserve
        if not required:
            room = min(room, target - used - reserve)
        seen = _clauses("".join(out))
        fresh = [c for c in cands if not (_clauses(c) & seen)] or (cands if required else [])
        choice = next((c for c in fresh if len(c) <= room), None)
        if choice is None and required and fresh:
            choice = min(fresh, key=len)
        if choice:
            out.append(choice)
            used += len(choice)
    return "".join(out)


def _truncate(text: str, limit: int) -> str:
    """Cut at the last clause boundary within `limit` characters (hard cut if there is none)."""
    if len(text) <= limit:
        return text
    head = text[:limit]
    cut = max(head.rfind(p) for p in "，。！；：")
    return head[: cut + 1] if cut >= max(2, limit // 3) else head


def _end(text: str, mark: str = "。") -> str:
    text = text.rstrip("，、；： ")
    return text if not text or text[-1] in "。！？…" else text + mark


def compose(ask: Ask, bank: dict, rng: random.Random) -> str:
    """A blessing for `ask`, strictly shorter than ask.max_chars characters."""
    c = _Composer(ask, bank, rng)
    limit = max(1, ask.max_chars - 1)
    builder = _STYLES.get(ask.style, _normal)
    text = builder(c, limit)
    text = _truncate(text, limit)
    return text or _truncate(c.pool(bank["general"]["wish"])[0] + "。", limit)


def _target(c: _Composer, limit: int, low: float, high: float = 1.0) -> int:
    return c.rng.randint(min(limit, max(8, int(limit * low))), max(8, int(limit * high)))


def _normal(c: _Composer, limit: int) -> str:
    greet = [g + "！" for g in c.greetings()]
    address = [a + "，" for a in c.address()]
    wishes = c.wished(c.scene_pool("wish"), "。")
    extra = [w + "。" for w in c.cat_pool("wish")]
    target = _target(c, limit, 0.55)
    if c.rng.random() < 0.25 and greet:
        slots = [(address, False), (c.wished(c.scene_pool("wish"), "，"), True), (greet, True)]
    else:
        slots = [(address, False), (greet, True), (wishes, not greet), (extra, False)]
    return _end(_fit(slots, limit, target), "！")


def _xiaohongshu(c: _Composer, limit: int) -> str:
    particles = c.style.get("particles", ["呀"])
    n_emoji = c.rng.choice([1, 2, 2])
    scene_emoji, general_emoji = c.emoji(2)
    mid_emoji = scene_emoji if n_emoji == 2 else ""
    end_emoji = general_emoji if n_emoji == 2 else c.rng.choice([scene_emoji, general_emoji])
    end_particle = c.rng.choice(particles)
    budget = limit - 3
    opener = c.pool(c.style.get("openers")) if c.rng.random() < 0.35 else []
    dear = "亲爱的" if c.category in {"sibling", "peer"} and c.rng.random() < 0.5 else ""
    names = c.address(dear)
    greets = c.greetings()
    heads = []
    for g in greets[:3]:
        for n in names[:2] or [""]:
            particle = c.rng.choice([p for p in particles if p != end_particle]) if mid_emoji else ""
            heads.append(f"{n}{g}{particle}{mid_emoji}" + ("" if mid_emoji else "！"))
    if not heads:
        heads = [f"{n}{mid_emoji}" if mid_emoji else f"{n}，" for n in names[:2]]
    cute = [s + "，" for s in c.scene_pool("cute")]
    more = [s + "，" for s in c.cat_pool("cute") + c.scene_pool("wish")]
    closers = [s + "，" for s in c.pool(c.style.get("closers"))]
    target = _target(c, budget, 0.6)
    slots = [(opener, False), (heads, False), (cute, True), (more, False), (closers, False)]
    body = _fit(slots, budget, target).rstrip("，！。 ")
    if mid_emoji and mid_emoji not in body:
        end_emoji = mid_emoji + end_emoji
    if body and body[-1] in PARTICLES:
        end_particle = ""
    tail = end_particle + end_emoji if limit >= 6 else ""
    return _truncate(body, max(1, limit - len(tail))) + tail


def _serious(c: _Composer, limit: int) -> str:
    honour = "敬爱的" if c.category in {"grandparent", "parent", "teacher"} else "尊敬的"
    if c.category in {"sibling", "peer"}:
        honour = "亲爱的"
    address = [a + "：" for a in c.address(honour)]
    opening = [s + "，" for s in c.scene_pool("formal_open")]
    formal = [s + "。" for s in c.scene_pool("formal")]
    cat_formal = [s + "。" for s in c.cat_pool("formal")]
    wishes = c.wished(c.scene_pool("wish") + c.cat_pool("wish"), "。")
    closers = [s + "！" for s in c.pool(c.style.get("closers"))]
    target = _target(c, limit, 0.65)
    slots = [
        (address, False),
        (opening, True),
        (formal, True),
        (cat_formal, False),
        (wishes, False),
        (closers, False),
    ]
    return _end(_fit(slots, limit, target))


def _plain(c: _Composer, limit: int) -> str:
    opener = c.pool(c.style.get("openers"))
    address = [a + "，" for a in c.address()]
    greet = [g + "！" for g in c.greetings()]
    connectors = [c.you(x) for x in c.style.get("connectors", ["就盼着你"])]
    wishes = [c.rng.choice(connectors) + s + "，" for s in c.scene_pool("wish")]
    wishes = [w for w in wishes if c.ok(w)]
    extra = [s + "。" for s in c.cat_pool("wish")]
    closers = [c.you(s) + "。" for s in c.pool(c.style.get("closers"))]
    target = _target(c, limit, 0.6)
    slots = [
        (opener, False),
        (address, False),
        (greet, False),
        (wishes, True),
        (extra, False),
        (closers, False),
    ]
    return _end(_fit(slots, limit, target))


def _literary(c: _Composer, limit: int) -> str:
    lines = [s + "。" for s in c.scene_pool("literary")]
    general = [s + "。" for s in c.pool(c.bank["general"].get("literary"))]
    address = [a + "，" for a in c.address()]
    wishes = c.wished(c.scene_pool("wish"), "。")
    closers = [s + "。" for s in c.pool(c.style.get("closers"))]
    target = _target(c, limit, 0.6)
    slots = [(lines, True), (address, False), (wishes, False), (general, False), (closers, False)]
    return _end(_fit(slots, limit, target))


def _classical(c: _Composer, limit: int) -> str:
    suffix = {"superior": "钧鉴：", "sibling": "如晤：", "peer": "如晤："}.get(c.category, "尊鉴：")
    address = [a + suffix for a in c.address()]
    opener = c.pool(c.style.get("openers")) if not address else []
    lines = [s + "。" for s in c.scene_pool("classical")]
    cat_lines = [s + "。" for s in c.pool(c.cat.get("classical"))]
    more = lines[1:] + [s + "。" for s in c.pool(c.bank["general"].get("classical"))]
    closers = [s + "。" for s in c.pool(c.style.get("closers"))]
    target = _target(c, limit, 0.5)
    slots = [
        (opener, False),
        (address, False),
        (lines, True),
        (cat_lines, False),
        (more, False),
        (closers, False),
    ]
    return _end(_fit(slots, limit, target))


def _playful(c: _Composer, limit: int) -> str:
    address = [a + "！" for a in c.address()]
    greet = [g + "！" for g in c.greetings()]
    prefixes = c.wish_prefixes()
    playful = [p + s + "，" for s in c.scene_pool("playful") for p in prefixes[:2]]
    general = [s + "，" for s in c.pool(c.style.get("general"))]
    emoji = c.rng.choice(c.style.get("emoji", ["🤣"])) if c.rng.random() < 0.6 else ""
    budget = limit - len(emoji)
    target = _target(c, budget, 0.6)
    slots = [(address, False), (greet, False), ([p for p in playful if c.ok(p)], True), (general, False)]
    return _end(_fit(slots, budget, target), "！") + emoji


def _long(c: _Composer, limit: int) -> str:
    honour = "亲爱的" if c.category in {"sibling", "peer", "parent", "grandparent"} else "尊敬的"
    address = [a + "：" for a in c.address(honour)]
    opening = [s + "，" for s in c.scene_pool("formal_open")]
    greet = [g + "！" for g in c.greetings()]
    connectors = [c.you(x) for x in c.style.get("connectors", ["回想这一路，"])]
    literary = [c.rng.choice(connectors) + s + "。" for s in c.scene_pool("literary")]
    wishes = c.scene_pool("wish")
    pairs = [
        f"{p}{a}，{b}。" for a, b in zip(wishes, wishes[1:], strict=False) for p in c.wish_prefixes()[:1]
    ]
    cat = [f"{a}，{b}。" for a, b in zip(c.cat_pool("wish"), c.cat_pool("formal"), strict=False)]
    closers = [c.you(s) + "。" for s in c.pool(c.style.get("closers"))]
    more = [s + "。" for s in c.scene_pool("formal")]
    target = _target(c, limit, 0.8)
    slots = [
        (address, False),
        (opening, True),
        (greet, False),
        (literary, False),
        ([p for p in pairs if c.ok(p)], True),
        ([x for x in cat if c.ok(x)], False),
        (more, False),
        (closers, False),
    ]
    return _end(_fit(slots, limit, target))


def _poem(c: _Composer, limit: int) -> str:
    lines = [s + "。" for s in c.scene_pool("poem")]
    general = [s + "。" for s in c.pool(c.style.get("general"), c.bank["general"].get("poem"))]
    names = c.address()
    greets = [g for g in c.greetings() if not g.startswith(("恭喜", "预祝", "祝"))]
    leads = c.style.get("wish_lead", ["谨祝"])
    dedications = [f"——{c.rng.choice(leads)}{n}{g}。" for n in names[:2] for g in greets[:2]]
    dedications += [f"——{c.rng.choice(leads)}{w}。" for w in c.cat_pool("wish") if _takes_prefix(w)][:2]
    dedications += ["——" + d for d in c.pool(c.style.get("dedications", ["以诗为贺。"]))[:1]]
    dedications = [d for d in dedications if c.ok(d)]
    c.rng.shuffle(dedications)
    target = _target(c, limit, 0.7)
    second = lines[1:] + general
    c.rng.shuffle(second)
    slots = [(lines, True), (second, False), (dedications, False)]
    return _end(_fit(slots, limit, target))


_STYLES = {
    "小红书": _xiaohongshu,
    "正常": _normal,
    "严肃": _serious,
    "白话": _plain,
    "文艺": _literary,
    "文言文": _classical,
    "放飞自我": _playful,
    "祝福长文": _long,
    "诗词赋": _poem,
}


# ---------------------------------------------------------------------------------------------------------
# The OpenAI-shaped API


def request_seed(body: dict, index: int = 0) -> int:
    """The answer's seed: a hash of the messages, the temperature and the `seed` parameter."""
    key = json.dumps(
        {
            "messages": body.get("messages"),
            "temperature": body.get("temperature"),
            "seed": body.get("seed"),
            "i": index,
        },
        ensure_ascii=False,
        sort_keys=True,
    )
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big")


def _text(content: object) -> str:
    """A message's text: a string, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def answer(body: dict, bank: dict, index: int = 0) -> str:
    """The blessing the teacher gives for a chat-completion request body."""
    users = [_text(m.get("content")) for m in body["messages"] if m.get("role") == "user"]
    ask = parse_prompt(users[-1] if users else "", bank)
    return compose(ask, bank, random.Random(request_seed(body, index)))


class _BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


def _check_body(body: object) -> dict:
    if not isinstance(body, dict):
        raise _BadRequest("the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _BadRequest("'messages' must be a non-empty list", "messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise _BadRequest(f"messages[{i}] must be an object with a 'role'", f"messages[{i}]")
    n = body.get("n", 1)
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 16:
        raise _BadRequest("'n' must be an integer from 1 to 16", "n")
    max_tokens = body.get("max_tokens")
    if max_tokens is not None and (
        not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1
    ):
        raise _BadRequest("'max_tokens' must be a positive integer", "max_tokens")
    if body.get("model") is not None and not isinstance(body["model"], str):
        raise _BadRequest("'model' must be a string", "model")
    return body


def completion(body: dict, bank: dict) -> dict:
    """A complete OpenAI-shaped chat.completion for a (checked) request body."""
    prompt_tokens = sum(len(_text(m.get("content"))) for m in body["messages"])
    max_tokens = body.get("max_tokens") if isinstance(body.get("max_tokens"), int) else None
    choices, completion_tokens = [], 0
    for i in range(body.get("n", 1)):
        text, finish = answer(body, bank, i), "stop"
        if max_tokens is not None and len(text) > max_tokens:
            text, finish = text[:max_tokens], "length"
        completion_tokens += len(text)
        choices.append(
            {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
        )
    return {
        "id": f"chatcmpl-zhufu-{request_seed(body):016x}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model") or DEFAULT_MODEL,
        "system_fingerprint": FINGERPRINT,
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def _error(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class TeacherServer(ThreadingHTTPServer):
    """The HTTP server; `request_count` counts chat-completion requests (answered or not)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        phrases: str | Path = DEFAULT_PHRASES,
        *,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
        max_body_bytes: int = MAX_BODY_BYTES,
    ):
        self.bank = load_phrases(str(phrases))
        self.request_timeout_s = request_timeout_s
        self.max_body_bytes = max_body_bytes
        self.request_count = 0
        self.completion_count = 0
        self.error_count = 0
        self._lock = threading.Lock()
        super().__init__(address, _Handler)

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"

    def count(self, field: str) -> None:
        with self._lock:
            setattr(self, field, getattr(self, field) + 1)

    def stats(self) -> dict:
        with self._lock:
            return {
                "requests": self.request_count,
                "completions": self.completion_count,
                "errors": self.error_count,
            }


class _Handler(BaseHTTPRequestHandler):
    server: TeacherServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as two writes; don't wait 40 ms between them
    server_version = "zhufu-offline-teacher"

    def setup(self) -> None:
        # the socket's timeout: for the headers, the body and an idle keep-alive connection
        self.timeout = self.server.request_timeout_s
        super().setup()

    def log_message(self, format: str, *args) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def _send_json(self, status: int, payload: dict, *, close: bool = False) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        if close:  # the body was not read: the connection can't carry another request
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def _path(self) -> str:
        return self.path.split("?", 1)[0].rstrip("/") or "/"

    def do_GET(self) -> None:
        path = self._path()
        if path in MODELS_PATHS:
            model = {"id": DEFAULT_MODEL, "object": "model", "created": 0, "owned_by": "zhufu"}
            self._send_json(200, {"object": "list", "data": [model]})
        elif path in STATS_PATHS:
            self._send_json(200, self.server.stats())
        else:
            self._send_json(404, _error(f"no such endpoint: GET {path}", "not_found_error", code="not_found"))

    def _refuse(self, status: int, message: str, code: str) -> None:
        self.server.count("error_count")
        self._send_json(status, _error(message, "invalid_request_error", code=code), close=True)

    def _read_body(self) -> bytes | None:
        """The request body, or None after answering why it can't be read (length, size, type, timeout)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self._refuse(411, "chunked bodies are not accepted; send Content-Length", "length_required")
            return None
        raw_length = self.headers.get("Content-Length")
        if raw_length is None:
            self._refuse(411, "Content-Length is required", "length_required")
            return None
        if not raw_length.strip().isdigit():
            self._refuse(400, "Content-Length must be a non-negative integer", "bad_length")
            return None
        length = int(raw_length)
        if length > self.server.max_body_bytes:
            self._refuse(
                413, f"the body is {length} bytes; at most {self.server.max_body_bytes}", "too_large"
            )
            return None
        ctype = self.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        if ctype != "application/json":
            self._refuse(415, "Content-Type must be application/json", "unsupported_media_type")
            return None
        chunks, got = [], 0
        while got < length:
            try:
                chunk = self.rfile.read1(length - got)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        raw = b"".join(chunks)
        if len(raw) < length:
            self._refuse(
                408,
                f"the body ended after {len(raw)} of {length} bytes (Content-Length) or arrived too slowly",
                "timeout",
            )
            return None
        return raw

    def do_POST(self) -> None:
        path = self._path()
        if path not in CHAT_PATHS:
            self._send_json(
                404, _error(f"no such endpoint: POST {path}", "not_found_error", code="not_found"), close=True
            )
            return
        self.server.count("request_count")
        raw = self._read_body()
        if raw is None:
            return
        try:
            try:
                body = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise _BadRequest(f"the request body is not valid JSON: {e}") from None
            except RecursionError:
                raise _BadRequest("the request body is nested too deeply") from None
            body = _check_body(body)
            payload = completion(body, self.server.bank)
        except _BadRequest as e:
            self.server.count("error_count")
            self._send_json(400, _error(str(e), "invalid_request_error", e.param))
            return
        except Exception:  # a request the composer can't handle is that request's 500, not the server's end
            log.exception("offline teacher: request failed")
            self.server.count("error_count")
            self._send_json(500, _error("the teacher failed on this request", "server_error"), close=True)
            return
        self.server.count("completion_count")
        if body.get("stream"):
            self._stream(payload)
        else:
            self._send_json(200, payload)

    def _stream(self, payload: dict) -> None:
        """Server-sent events: one content chunk per choice, then a final chunk with usage, then [DONE]."""
        base = {k: payload[k] for k in ("id", "created", "model", "system_fingerprint")}
        events = []
        for ch in payload["choices"]:
            delta = {"role": "assistant", "content": ch["message"]["content"]}
            events.append(
                {
                    **base,
                    "object": "chat.completion.chunk",
                    "choices": [{"index": ch["index"], "delta": delta}],
                }
            )
            done = {"index": ch["index"], "delta": {}, "finish_reason": ch["finish_reason"]}
            events.append({**base, "object": "chat.completion.chunk", "choices": [done]})
        events.append({**base, "object": "chat.completion.chunk", "choices": [], "usage": payload["usage"]})
        data = "".join(f"data: {json.dumps(e, ensure_ascii=False)}\n\n" for e in events) + "data: [DONE]\n\n"
        raw = data.encode("utf-8")
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


def start_teacher(
    host: str = "127.0.0.1", port: int = 0, phrases: str | Path = DEFAULT_PHRASES
) -> TeacherServer:
    """Start the teacher in a background thread; call `.shutdown()` and `.server_close()` to stop it."""
    try:
        server = TeacherServer((host, port), phrases)
    except OSError as e:
        raise ProviderError(
            f"offline teacher: cannot listen on {host}:{port} ({e.strerror}); use another --port"
        ) from None
    threading.Thread(target=server.serve_forever, name="zhufu-teacher", daemon=True).start()
    log.info("offline teacher (%s) at %s", FINGERPRINT, server.base_url)
    return server


@contextmanager
def running_teacher(
    host: str = "127.0.0.1", port: int = 0, phrases: str | Path = DEFAULT_PHRASES
) -> Iterator[str]:
    """Run the teacher for the duration of a `with` block; yields its base_url (http://127.0.0.1:PORT/v1)."""
    server = start_teacher(host, port, phrases)
    try:
        yield server.base_url
    finally:
        server.shutdown()
        server.server_close()


def teacher_stats(base_url: str, timeout: float = 5.0) -> dict:
    """`GET /zhufu/stats` of a running teacher: {"requests": n, "completions": n, "errors": n}."""
    from urllib.request import urlopen

    root = base_url.rstrip("/").removesuffix("/v1")
    with urlopen(f"{root}/zhufu/stats", timeout=timeout) as resp:
        return json.loads(resp.read().decode("utf-8"))


# ---------------------------------------------------------------------------------------------------------
# CLI: zhufu serve-teacher


def _port(text: str) -> int:
    import argparse

    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"port must be 0 to 65535, not {text!r}")
    return int(text)


def add_serve_teacher_arguments(parser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument(
        "--port", type=_port, default=8000, help="port to listen on; 0 picks a free one (default: 8000)"
    )
    parser.add_argument(
        "--phrases", default=str(DEFAULT_PHRASES), help="phrase bank YAML (default: %(default)s)"
    )


def run_serve_teacher(args) -> int:
    server = start_teacher(args.host, args.port, args.phrases)
    print(
        f"Zhufu offline teacher: a phrase bank, NOT an LLM. It composes blessings from {args.phrases}\n"
        f"so the workflow runs without an API key. OpenAI-compatible endpoint: {server.base_url}\n"
        f"(ZhipuAI path: {server.base_url.removesuffix('/v1')}/api/paas/v4). Ctrl-C stops it.",
        flush=True,
    )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        server.server_close()
    print(f"served {server.request_count} chat-completion requests", flush=True)
    return 0
