"""Import existing data: a Tianji-style conversation JSON (or JSONL) becomes a raw shard, its meta parsed from `input`."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from zhufu.config import load_config
from zhufu.data.records import read_rows, validate_records
from zhufu.errors import DataError
from zhufu.io import write_json

log = logging.getLogger(__name__)


def _longest_in(text: str, names: Iterable[str]) -> str | None:
    """The longest name that occurs in text: 邻居赵大妈, not 邻居, when the input names her."""
    hits = [n for n in names if n and n.strip() in text]
    return max(hits, key=lambda n: len(n.strip())) if hits else None


def parse_input(text: str, config: dict) -> dict[str, str | None]:
    """recipient, scene and style named by a training input such as 祝邻居赵大妈春节快乐，严肃风格."""
    grid = config["grid"]
    recipient = _longest_in(text, grid["recipients"])
    scene = _longest_in(text, [s.strip() for s in grid["scenes"]])
    style = None
    for name, st in config["styles"].items():
        trigger = st.get("trigger")
        if (
            trigger
            and trigger in text
            and (style is None or len(trigger) > len(config["styles"][style]["trigger"]))
        ):
            style = name
    if style is None:
        style = next((n for n, st in config["styles"].items() if not st.get("trigger")), None)
    return {"recipient": recipient, "scene": scene, "style": style}


def import_records(
    rows: Any, config: dict, source: str | Path, round_: int = 0, model: str = "unknown"
) -> list[dict]:
    """Tianji-format rows ({"conversation": [...]}, maybe with src_input/style_name/meta) as raw records."""
    if not isinstance(rows, list):
        raise DataError(f"{source}: expected a JSON list of {{'conversation': [...]}} rows")
    records: list[dict] = []
    occurrences: dict[str, int] = {}
    for i, row in enumerate(rows):
        conv = row.get("conversation") if isinstance(row, dict) else None
        if (
            not isinstance(conv, list)
            or not conv
            or not all(
                isinstance(t, dict) and isinstance(t.get("input"), str) and isinstance(t.get("output"), str)
                for t in conv
            )
        ):
            raise DataError(
                f"{source}: row {i}: expected {{'conversation': [{{'system', 'input', 'output'}}, …]}}"
            )
        turns = [
            {"system": t.get("system") or config["system_prompt"], "input": t["input"], "output": t["output"]}
            for t in conv
        ]
        meta = dict(row.get("meta") or {})
        parsed = parse_input(turns[0]["input"], config)
        if row.get("style_name") in config["styles"]:
            parsed["style"] = row["style_name"]
        for key in ("recipient", "scene", "style"):
            meta.setdefault(key, parsed[key])
        if meta["style"] is None:
            meta["style"] = row.get("style_name") or "unknown"
        meta.setdefault("round", round_)
        meta.setdefault("provider", "import")
        meta.setdefault("model", model)
        meta.setdefault("prompt", row.get("src_input"))
        meta.setdefault("usage", None)
        content = "\x1f".join(f"{t['system']}\x1e{t['input']}\x1e{t['output']}" for t in turns)
        n = occurrences.get(content, 0)
        occurrences[content] = n + 1
        rid = row.get("id") or hashlib.sha256(f"import\x1f{content}\x1f{n}".encode()).hexdigest()[:20]
        records.append({"id": rid, "conversation": turns, "meta": meta})
    return validate_records(records, source)


def import_file(
    path: str | Path, out: str | Path, config: dict, round_: int = 0, model: str = "unknown"
) -> list[dict]:
    records = import_records(read_rows(path), config, path, round_=round_, model=model)
    unparsed = sum(1 for r in records if r["meta"]["recipient"] is None or r["meta"]["scene"] is None)
    if unparsed:
        log.warning(
            "%s: %d of %d inputs name no recipient or scene of the config's grid; their meta keeps null "
            "(suitability and honorific rules skip them)",
            path,
            unparsed,
            len(records),
        )
    write_json(out, records, indent=1)
    log.info("imported %d records from %s into %s", len(records), path, out)
    return records


def add_import_arguments(parser) -> None:
    parser.add_argument("file", help="Tianji-format JSON list (or .jsonl) of {'conversation': [...]} rows")
    parser.add_argument(
        "-o", "--output", required=True, help="raw shard to write, e.g. results/raw/imported/round_0.json"
    )
    parser.add_argument("--round", type=int, default=0, help="round recorded in meta (default 0)")
    parser.add_argument("--model", default="unknown", help="model that wrote the data, recorded in meta")
    parser.add_argument(
        "--config", help="config whose grid and style triggers parse the inputs (default config.yaml)"
    )


def run_import(args) -> int:
    records = import_file(
        args.file, args.output, load_config(args.config), round_=args.round, model=args.model
    )
    print(f"{args.output}: {len(records)} records")
    return 0
