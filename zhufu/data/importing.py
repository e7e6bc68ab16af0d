"""Import existing data: a Tianji-style conversation JSON (or JSONL) becomes a raw shard, its meta parsed from `input`."""

from __future__ import annotations

import hashlib
import logging
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from zhufu.config import RESOURCES, load_config, package_file
from zhufu.data.records import read_rows, validate_records
from zhufu.errors import ConfigError, DataError
from zhufu.io import write_json
from zhufu.tianji import RECIPIENTS_V1, SCENES_V1, STYLES_V2

log = logging.getLogger(__name__)


SYNONYMS_PATH = package_file(RESOURCES, "synonyms.yaml")


@cache
def synonyms() -> dict:
    """resources/synonyms.yaml: {recipients: {canonical: [other names]}, scenes: {…}}."""
    with open(SYNONYMS_PATH, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def name_index(grid_names: list[str], tianji_names: tuple[str, ...], groups: dict) -> dict[str, str]:
    """Every name an input may use -> the name its record gets. The run's grid and Tianji's full list both
    count, whatever the grid holds; a synonym (妈妈 for 母亲) maps to the name of its group that the grid
    holds, else to the canonical one. Names are compared without surrounding space (Tianji's "工作升职 ")."""
    grid = [n.strip() for n in grid_names]
    index = {n.strip(): n.strip() for n in tianji_names}
    for canonical, others in groups.items():
        group = [canonical, *others]
        target = next((n for n in group if n in grid), canonical)
        for name in group:
            index[name] = target
    index.update({n: n for n in grid})
    return index


def _longest_in(text: str, index: dict[str, str]) -> str | None:
    """The name of the longest key that occurs in text: 邻居赵大妈, not 邻居, when the input names her."""
    hits = [n for n in index if n and n in text]
    return index[max(hits, key=len)] if hits else None


def parse_input(text: str, config: dict) -> dict[str, str | None]:
    """recipient, scene and style named by a training input such as 祝邻居赵大妈春节快乐，严肃风格.

    Recipients and scenes are looked up in the config's grid and in Tianji's full v1 lists, with the synonyms
    of resources/synonyms.yaml; styles by the config's triggers and Tianji's v2 style names (白话风格 …)."""
    grid, syn = config["grid"], synonyms()
    recipient = _longest_in(text, name_index(grid["recipients"], RECIPIENTS_V1, syn.get("recipients") or {}))
    scene = _longest_in(text, name_index(grid["scenes"], SCENES_V1, syn.get("scenes") or {}))
    triggers = {f"{name}风格": name for name in STYLES_V2 if name != "正常"}
    triggers.update({st["trigger"]: name for name, st in config["styles"].items() if st.get("trigger")})
    found = [t for t in triggers if t in text]
    if found:
        style = triggers[max(found, key=len)]
    else:
        style = next((n for n, st in config["styles"].items() if not st.get("trigger")), None)
    return {"recipient": recipient, "scene": scene, "style": style}


def import_records(
    rows: Any,
    config: dict,
    source: str | Path,
    round_: int = 0,
    model: str = "unknown",
    rule_set: str | None = None,
) -> list[dict]:
    """Tianji-format rows ({"conversation": [...]}, maybe with src_input/style_name/meta) as raw records.

    With a rule set (clean.rule_sets.<name>) each record's meta names it, so clean applies that set's rules;
    a set with parse_meta false (general dialogue data) gets no recipient or scene, and its name as style."""
    parse_meta = True
    if rule_set is not None:
        sets = config.get("clean", {}).get("rule_sets") or {}
        if rule_set not in sets:
            raise ConfigError(
                f"{source}: rule set {rule_set!r} is not under clean.rule_sets (known: {', '.join(sorted(sets))})"
            )
        parse_meta = sets[rule_set].get("parse_meta", True)
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
        if not isinstance(row.get("meta") or {}, dict):
            raise DataError(f"{source}: row {i}: 'meta' must be an object")
        for key in ("style_name", "src_input", "id"):
            if row.get(key) is not None and not isinstance(row[key], str):
                raise DataError(f"{source}: row {i}: '{key}' must be a string")
        meta = dict(row.get("meta") or {})
        if rule_set is not None:
            meta["rule_set"] = rule_set
        parsed = (
            parse_input(turns[0]["input"], config)
            if parse_meta
            else {"recipient": None, "scene": None, "style": rule_set}
        )
        if row.get("style_name") in config["styles"] or row.get("style_name") in STYLES_V2:
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
    path: str | Path,
    out: str | Path,
    config: dict,
    round_: int = 0,
    model: str = "unknown",
    rule_set: str | None = None,
) -> list[dict]:
    records = import_records(read_rows(path), config, path, round_=round_, model=model, rule_set=rule_set)
    unparsed = sum(1 for r in records if r["meta"]["recipient"] is None or r["meta"]["scene"] is None)
    if unparsed and rule_set is None:
        log.warning(
            "%s: %d of %d inputs name no recipient or scene of the config's grid, Tianji's lists or "
            "resources/synonyms.yaml; their meta keeps null (suitability and honorific rules skip them)",
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
    parser.add_argument(
        "--rule-set",
        help="clean these rows with a rule set of clean.rule_sets, e.g. dialogue (not blessings)",
    )


def run_import(args) -> int:
    records = import_file(
        args.file,
        args.output,
        load_config(args.config),
        round_=args.round,
        model=args.model,
        rule_set=args.rule_set,
    )
    print(f"{args.output}: {len(records)} records")
    return 0
