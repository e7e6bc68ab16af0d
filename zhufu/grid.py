"""The generation grid: cells, their seeded RNGs, stable ids, prompts and human-like inputs.

A cell is (style, round, recipient, scene). Every random choice for a cell comes from an RNG seeded by
(seed, style, round, recipient, scene), so the same config always yields the same prompts, and so the
same cache keys, whatever order the cells are processed in.
"""

from __future__ import annotations

import csv
import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from zhufu.errors import ConfigError, not_utf8


@dataclass(frozen=True)
class Cell:
    style: str
    round: int
    recipient: str
    scene: str


@dataclass(frozen=True)
class Prompt:
    """What is sent for one cell, and what the training record will say the user typed."""

    cell: Cell
    id: str
    messages: list[dict]
    input: str


def _key(seed: int, cell: Cell) -> str:
    return f"{seed}\x1f{cell.style}\x1f{cell.round}\x1f{cell.recipient}\x1f{cell.scene}"


def record_id(seed: int, cell: Cell) -> str:
    """Stable id of a cell's record: unique across the grid, unchanged by reordering or new scenes."""
    return hashlib.sha256(_key(seed, cell).encode("utf-8")).hexdigest()[:20]


def cell_rng(seed: int, cell: Cell) -> random.Random:
    digest = hashlib.sha256(("rng\x1f" + _key(seed, cell)).encode("utf-8")).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def load_suitability(path: str | Path) -> dict[tuple[str, str], bool]:
    """Read the recipient × scene matrix: first column recipients, header row scenes, cells 1/0.

    A pair missing from the matrix counts as suitable, so a new recipient or scene is generated until
    somebody marks it otherwise.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"grid.suitability: {p} does not exist (a CSV of recipients × scenes, 1/0)")
    try:
        with open(p, encoding="utf-8-sig", newline="") as fh:  # -sig: Excel's "CSV UTF-8" starts with a BOM
            rows = list(csv.reader(fh))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: {not_utf8(e)}") from None
    except csv.Error as e:
        raise ConfigError(f"{p}: not a readable CSV ({e})") from None
    if not rows or len(rows[0]) < 2:
        raise ConfigError(f"{p}: expected a header row 'recipient,<scene>,<scene>…'")
    scenes = [s.strip() for s in rows[0][1:]]
    matrix: dict[tuple[str, str], bool] = {}
    for line_no, row in enumerate(rows[1:], start=2):
        if not row or not row[0].strip():
            continue
        if len(row) != len(scenes) + 1:
            raise ConfigError(f"{p}, line {line_no}: {len(row) - 1} values for {len(scenes)} scenes")
        for scene, value in zip(scenes, row[1:], strict=True):
            v = value.strip()
            if v not in {"0", "1"}:
                raise ConfigError(f"{p}, line {line_no}, scene {scene}: expected 1 or 0, got {v!r}")
            matrix[(row[0].strip(), scene)] = v == "1"
    return matrix


def is_suitable(matrix: dict[tuple[str, str], bool], recipient: str, scene: str) -> bool:
    return matrix.get((recipient, scene), True)


def holdout_pairs(
    recipients: list[str],
    scenes: list[str],
    fraction: float,
    seed: int,
    matrix: dict[tuple[str, str], bool] | None = None,
) -> list[tuple[str, str]]:
    """The recipient × scene pairs kept out of training for the evaluation, in grid order.

    A seeded draw of round(fraction × suitable pairs) of the suitable pairs (at least one when fraction > 0).
    It depends only on the pair names and the seed, not on the list order, so reordering the grid or adding
    a style keeps the same pairs out.
    """
    pairs = [(r, s) for r in recipients for s in scenes if matrix is None or is_suitable(matrix, r, s)]
    if fraction <= 0 or not pairs:
        return []
    k = min(len(pairs) - 1, max(1, round(fraction * len(pairs))))

    def rank(pair: tuple[str, str]) -> bytes:
        return hashlib.sha256(f"holdout\x1f{seed}\x1f{pair[0]}\x1f{pair[1]}".encode()).digest()

    chosen = set(sorted(pairs, key=rank)[:k])
    return [p for p in pairs if p in chosen]


def held_out(config: dict, matrix: dict[tuple[str, str], bool] | None = None) -> set[tuple[str, str]]:
    """grid.holdout of a config as a set of (recipient, scene) pairs (empty when the fraction is 0)."""
    grid = config["grid"]
    spec = grid.get("holdout") or {}
    return set(
        holdout_pairs(
            grid["recipients"], grid["scenes"], spec.get("fraction", 0), spec.get("seed", 0), matrix
        )
    )


def iter_cells(
    config: dict, style: str, round_: int, matrix: dict[tuple[str, str], bool] | None = None
) -> Iterator[Cell]:
    """The cells of one shard (style × round), in grid order, skipping unsuitable and held-out pairs (kept
    out of training for the evaluation); a generator, so a 100k-cell shard never sits in memory as a list."""
    out = held_out(config, matrix)
    for r in config["grid"]["recipients"]:
        for s in config["grid"]["scenes"]:
            if (matrix is None or is_suitable(matrix, r, s)) and (r, s) not in out:
                yield Cell(style, round_, r, s)


def cells(
    config: dict, style: str, round_: int, matrix: dict[tuple[str, str], bool] | None = None
) -> list[Cell]:
    return list(iter_cells(config, style, round_, matrix))


def config_matrix(config: dict) -> dict[tuple[str, str], bool] | None:
    """The suitability matrix that config `grid.suitability` names, or None when it names none."""
    path = config["grid"].get("suitability")
    return load_suitability(path) if path else None


def training_input(config: dict, cell: Cell, rng: random.Random) -> str:
    """A human-like request, e.g. 我想祝姐姐生日，小红书风格 (the trigger only for styles that have one)."""
    template = rng.choice(config["input_templates"])
    text = template.format(recipient=cell.recipient, scene=cell.scene)
    trigger = config["styles"][cell.style].get("trigger")
    return f"{text}{config['trigger_separator']}{trigger}" if trigger else text


def build_prompt(config: dict, cell: Cell) -> Prompt:
    """The seeded prompt for a cell. Draw order is fixed: examples, injection, input template."""
    style = config["styles"][cell.style]
    rng = cell_rng(config["seed"], cell)
    k = min(style.get("few_shot_k", 0), len(style.get("examples", [])))
    examples = rng.sample(style["examples"], k) if k else []
    style_prompt = style["prompt"].format(examples="；".join(examples))
    injection = rng.choice(config["injections"])
    user = config["prompt_template"].format(
        max_chars=style["max_chars"],
        style_prompt=style_prompt,
        recipient=cell.recipient,
        scene=cell.scene,
        injection=injection,
    )
    messages = [
        {"role": "system", "content": config["teacher_system_prompt"]},
        {"role": "user", "content": user},
    ]
    return Prompt(cell, record_id(config["seed"], cell), messages, training_input(config, cell, rng))
