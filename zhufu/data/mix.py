"""General data mixed into train.json (`data.mix`): so that the tuned model stays an assistant.

Each entry names a source (a conversation-format JSON or JSONL file, or Alpaca-style rows with a field map)
and how much of it goes in: `share` (that share of train.json's rows) or `count` (that many rows). The
source's rows are read as records of their own rule set (default `dialogue`: no recipient or scene, their
own system prompt), cleaned apart from the blessings by zhufu.data.clean (so never deduplicated against
them), and the rows that survive are drawn, seeded by (seed, entry, source), without replacement. They are
counted apart in the clean report (`mix`) and the dataset card. The clean rule reads the sources, so a
change of `data.mix` or of a source reruns clean and what follows it, never generation.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from zhufu.data.importing import import_records
from zhufu.data.records import read_rows
from zhufu.errors import ConfigError, DataError


def _text(row: dict, key: str | list[str], where: str) -> str:
    keys = [key] if isinstance(key, str) else key
    parts = []
    for k in keys:
        value = row.get(k)
        if value is not None and not isinstance(value, str):
            raise DataError(f"{where}: field {k!r} must be a string")
        if value and value.strip():
            parts.append(value.strip())
    return "\n".join(parts)


def conversation_rows(rows: Any, fields: dict | None, source: str) -> Any:
    """Rows as {"conversation": [...]}: conversation-format rows as they are; with a field map (Alpaca:
    {input: [instruction, input], output: output}) each row becomes one turn, its input the named fields
    joined by a newline."""
    if not fields:
        return rows
    if not isinstance(rows, list):
        raise DataError(f"{source}: expected a JSON list of rows")
    out = []
    for i, row in enumerate(rows):
        where = f"{source}: row {i}"
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected an object with the fields {fields}")
        turn = {"input": _text(row, fields["input"], where), "output": _text(row, fields["output"], where)}
        if fields.get("system"):
            turn["system"] = _text(row, fields["system"], where)
        if not turn["input"] or not turn["output"]:
            raise DataError(f"{where}: an empty input or output (fields {fields})")
        out.append({"conversation": [turn]})
    return out


def mix_sources(mix: list[dict]) -> list[str]:
    """The source files of `data.mix` (the clean rule's inputs); a missing one is a config error."""
    for i, entry in enumerate(mix):
        if not Path(entry["source"]).is_file():
            raise ConfigError(
                f"data.mix[{i}].source: {entry['source']}: no such file (a conversation-format JSON or JSONL, "
                "or Alpaca-style rows with `fields`)"
            )
    return [entry["source"] for entry in mix]


def source_records(entry: dict, index: int, rules: dict, styles: dict, system_prompt: str) -> list[dict]:
    """One mix entry's source as raw records of its rule set."""
    source = entry["source"]
    try:
        rows = conversation_rows(read_rows(source), entry.get("fields"), source)
    except DataError as e:
        raise DataError(f"data.mix[{index}].source: {e}") from None
    parse_config = {
        "grid": {"recipients": [], "scenes": []},
        "styles": styles,
        "system_prompt": system_prompt,
        "clean": rules,
    }
    try:
        records = import_records(rows, parse_config, source, rule_set=entry["rule_set"], model="mix")
    except (ConfigError, DataError) as e:
        raise type(e)(f"data.mix[{index}]: {e}") from None
    for r in records:
        r["meta"]["provider"] = "mix"
    return records


def wanted(entries: list[dict], blessings: int) -> list[int]:
    """Rows to draw per entry: a `count`, or a `share` of train.json (blessings plus every mixed row), so
    that shares s_i give n_i = s_i · blessings / (1 − Σ shares) − (counts' part of it)."""
    counts = sum(e["count"] for e in entries if e.get("count") is not None)
    shares = sum(e["share"] for e in entries if e.get("share") is not None)
    total = (blessings + counts) / (1 - shares) if shares else blessings + counts
    return [e["count"] if e.get("count") is not None else round(e["share"] * total) for e in entries]


def draw(pool: list[dict], n: int, seed: int, index: int, entry: dict) -> list[dict]:
    """`n` of the pool's records, seeded by (seed, entry index, source), in the pool's order."""
    if n > len(pool):
        how = f"share {entry['share']}" if entry.get("share") is not None else f"count {entry['count']}"
        raise ConfigError(
            f"data.mix[{index}]: {how} needs {n} rows, but {entry['source']} has only {len(pool)} left after "
            f"cleaning (rule set {entry['rule_set']}): lower it or add rows"
        )
    rng = random.Random(f"mix\x1f{seed}\x1f{index}\x1f{entry['source']}")
    return [pool[i] for i in sorted(rng.sample(range(len(pool)), n))]
