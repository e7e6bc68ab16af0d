"""Composing a blessing for an `Ask` from the phrase bank: one builder per style, over seeded choices.

Lengths here are budgets in code points (len), which a text's reader-visible length (zhufu.text.count_chars,
what the cleaner checks) never exceeds, so an answer within the budget is within the cleaner's limit too.
"""

from __future__ import annotations

import random
import re

from zhufu.teacher.prompt import Ask

WISH_WORDS = ("愿你", "祝你", "愿您", "祝您")
PARTICLES = "呀哦呢啦哟鸭吧嘛"


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


def clauses(text: str) -> set[str]:
    """The clauses of two characters or more of a text, split at punctuation and spaces."""
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
        seen = clauses("".join(out))
        fresh = [c for c in cands if not (clauses(c) & seen)] or (cands if required else [])
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
