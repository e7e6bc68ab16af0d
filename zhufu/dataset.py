"""Data stages after generation: import existing data, merge raw shards, clean, check the training format.

- `import_file`: a Tianji-style conversation JSON (or JSONL) becomes a raw shard, its meta parsed from `input`.
- `merge`: every record of every shard is validated against schemas/record.schema.yaml; ids must be unique.
- `clean`: the rules of zhufu.cleaning, configured under `clean:`; writes train.json (no meta), a report of
  every dropped and modified record with per-rule counts, and (zhufu.card) the dataset card.
- `check_format`: train.json through XTuner's own process_hf_dataset, counting truncated samples.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

from zhufu.config import ROOT
from zhufu.errors import DataError
from zhufu.io import read_json, write_json
from zhufu.tianji import RECIPIENTS_V1, SCENES_V1, STYLES_V2

log = logging.getLogger(__name__)

RECORD_SCHEMA_PATH = ROOT / "schemas" / "record.schema.yaml"


@cache
def record_validator():
    import jsonschema
    import yaml

    with open(RECORD_SCHEMA_PATH, encoding="utf-8") as fh:
        return jsonschema.Draft202012Validator(yaml.safe_load(fh))


def _where(error) -> str:
    path = "/".join(str(p) for p in error.absolute_path)
    return f" (at {path})" if path else ""


def validate_records(records: Any, source: str | Path) -> list[dict]:
    """Check a shard's records against the record schema; DataError names the file and record index."""
    if not isinstance(records, list):
        raise DataError(f"{source}: expected a JSON list of records, got {type(records).__name__}")
    validator = record_validator()
    for i, record in enumerate(records):
        error = next(
            iter(sorted(validator.iter_errors(record), key=lambda e: list(map(str, e.absolute_path)))), None
        )
        if error is not None:
            raise DataError(f"{source}: record {i}: {error.message}{_where(error)}")
    return records


# ---------------------------------------------------------------- merge


def shard_files(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given, and the *.json files below each directory (sorted, so merged order is stable)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*.json") if not f.name.startswith("."))
            if not found:
                raise DataError(f"{p}: no *.json shards below this directory")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"{p}: no such file or directory")
    return files


def merge(paths: Iterable[str | Path], out: str | Path) -> list[dict]:
    """Validate and concatenate shards (in the order given), keeping id and meta; ids must be unique."""
    merged: list[dict] = []
    seen: dict[str, tuple[Path, int]] = {}
    for path in shard_files(paths):
        records = validate_records(read_json(path), path)
        for i, record in enumerate(records):
            other = seen.get(record["id"])
            if other is not None:
                raise DataError(
                    f"duplicate id {record['id']}: {other[0]} record {other[1]} and {path} record {i}; "
                    "shards of one merge must not overlap (was a shard copied or imported twice?)"
                )
            seen[record["id"]] = (path, i)
            merged.append(record)
        log.info("%s: %d records", path, len(records))
    write_json(out, merged, indent=1)
    log.info("merged %d records into %s", len(merged), out)
    return merged


# ---------------------------------------------------------------- import


SYNONYMS_PATH = ROOT / "resources" / "synonyms.yaml"


@cache
def synonyms() -> dict:
    """resources/synonyms.yaml: {recipients: {canonical: [other names]}, scenes: {…}}."""
    import yaml

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
        from zhufu.errors import ConfigError

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


def read_rows(path: str | Path) -> Any:
    """A JSON list, or JSON Lines (one object per line)."""
    p = Path(path)
    if p.suffix == ".jsonl":
        import json

        rows = []
        try:
            with open(p, encoding="utf-8") as fh:
                lines = list(fh)
        except FileNotFoundError:
            raise DataError(f"{p}: file not found") from None
        for lineno, line in enumerate(lines, start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{p}, line {lineno}: not valid JSON ({e.msg})") from None
        return rows
    return read_json(p)


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


# ---------------------------------------------------------------- clean


def _rule_meta(meta: dict) -> dict:
    keys = ("recipient", "scene", "style", "rule_set")
    return {k: meta.get(k) for k in keys}


def clean_records(
    records: list[dict],
    rules: dict,
    styles: dict,
    system_prompt: str | None,
    matrix: dict | None,
    workers: int | None = None,
) -> tuple[list[dict], dict]:
    """Apply the cleaning rules. Returns the kept records (with meta) and the report."""
    from zhufu.cleaning import (
        ALL_RULES,
        exact_duplicates,
        near_duplicates,
        normalise,
        record_verdicts,
        rewritten_input,
        rule_set_rules,
    )

    counts = {name: {"dropped": 0, "modified": 0} for name in ALL_RULES}
    dropped: list[dict] = []
    modified: list[dict] = []
    survivors: list[dict] = []

    def drop(record: dict, rule: str, detail: str, **extra) -> None:
        counts[rule]["dropped"] += 1
        text = "\n".join(t["output"] for t in record["conversation"])
        dropped.append({"id": record["id"], "rule": rule, "detail": detail, "text": text, **extra})

    def modify(record: dict, rule: str, before: str, after: str, turn: int) -> None:
        counts[rule]["modified"] += 1
        entry = {
            "id": record["id"],
            "rule": rule,
            "field": {"system_prompt": "system", "input_rewrite": "input"}.get(rule, "output"),
            "before": before,
            "after": after,
        }
        if len(record["conversation"]) > 1:
            entry["turn"] = turn
        modified.append(entry)

    by_set = {None: rules}
    for r in records:
        name = r["meta"].get("rule_set")
        if name not in by_set:
            by_set[name] = rule_set_rules(rules, name)

    def rules_of(record: dict) -> dict:
        return by_set[record["meta"].get("rule_set")]

    items = [(t["output"], _rule_meta(r["meta"])) for r in records for t in r["conversation"]]
    verdicts = iter(record_verdicts(items, rules, styles, matrix, workers))
    for record in records:
        turns = [dict(t) for t in record["conversation"]]
        pending: list[tuple[str, str, str, int]] = []
        verdict_drop = None
        own = rules_of(record)
        for k, turn in enumerate(turns):
            verdict = next(verdicts)
            if verdict_drop:
                continue
            if own["system_prompt"]["enabled"] and system_prompt and turn["system"] != system_prompt:
                pending.append(("system_prompt", turn["system"], system_prompt, k))
                turn["system"] = system_prompt
            if k == 0 and own["input_rewrite"]["enabled"]:
                new_input = rewritten_input(record["id"], record["meta"], own["input_rewrite"])
                if new_input is not None and new_input != turn["input"]:
                    pending.append(("input_rewrite", turn["input"], new_input, k))
                    turn["input"] = new_input
            pending.extend((rule, before, after, k) for rule, before, after in verdict.changes)
            turn["output"] = verdict.text
            verdict_drop = verdict.dropped
        if verdict_drop:
            drop(record, *verdict_drop)
            continue
        for rule, before, after, k in pending:
            modify(record, rule, before, after, k)
        survivors.append({**record, "conversation": turns})

    keys = ["\n".join(normalise(t["output"]) for t in r["conversation"]) for r in survivors]
    gone: set[int] = set()
    exact = [i for i, r in enumerate(survivors) if rules_of(r)["exact_dedup"]["enabled"]]
    if exact:
        for a, b in exact_duplicates([keys[i] for i in exact]).items():
            i, j = exact[a], exact[b]
            gone.add(i)
            drop(
                survivors[i],
                "exact_dedup",
                f"same text as {survivors[j]['id']} after normalisation",
                duplicate_of=survivors[j]["id"],
            )
    nd = rules["near_dedup"]
    rest = [i for i, r in enumerate(survivors) if i not in gone and rules_of(r)["near_dedup"]["enabled"]]
    if rest:
        found = near_duplicates(
            [keys[i] for i in rest],
            nd["ngram"],
            nd["threshold"],
            nd["num_perm"],
            nd["seed"],
            nd["recall"],
            nd["recall_margin"],
        )
        for a, (b, jac) in found.items():
            i, j = rest[a], rest[b]
            gone.add(i)
            drop(
                survivors[i],
                "near_dedup",
                f"{nd['ngram']}-gram Jaccard {jac:.2f} with {survivors[j]['id']}",
                duplicate_of=survivors[j]["id"],
            )
    kept = [r for i, r in enumerate(survivors) if i not in gone]
    order = {r["id"]: n for n, r in enumerate(records)}
    dropped.sort(key=lambda d: order[d["id"]])
    set_of = {r["id"]: r["meta"].get("rule_set") for r in records}
    per_set: dict[str, dict] = {}
    for name in sorted(n for n in by_set if n is not None):
        rows = [r for r in records if set_of[r["id"]] == name]
        per_set[name] = {
            "rows_in": len(rows),
            "rows_out": sum(1 for r in kept if set_of[r["id"]] == name),
            "dropped": dict(Counter(d["rule"] for d in dropped if set_of[d["id"]] == name)),
            "modified": dict(Counter(m["rule"] for m in modified if set_of[m["id"]] == name)),
        }
    report = {
        "rows_in": len(records),
        "rows_out": len(kept),
        "rows_dropped": len(dropped),
        "rows_modified": len({m["id"] for m in modified}),
        "rules": {name: {"enabled": rules[name]["enabled"], **counts[name]} for name in ALL_RULES},
        "rule_sets": per_set,
        "dropped": dropped,
        "modified": modified,
        "kept": [
            {
                "id": r["id"],
                "recipient": r["meta"].get("recipient"),
                "scene": r["meta"].get("scene"),
                "style": r["meta"].get("style"),
                "chars": sum(count_chars_of(t["output"]) for t in r["conversation"]),
            }
            for r in kept
        ],
    }
    return kept, report


def count_chars_of(text: str) -> int:
    from zhufu.cleaning import count_chars

    return count_chars(text)


def training_rows(kept: list[dict]) -> list[dict]:
    """train.json: exactly what XTuner's load_dataset('json') + template_map_fn consume, no meta."""
    return [
        {"conversation": [{k: t[k] for k in ("system", "input", "output")} for t in r["conversation"]]}
        for r in kept
    ]


def clean(
    merged: str | Path,
    train: str | Path,
    report_path: str | Path,
    *,
    rules: dict,
    styles: dict,
    system_prompt: str | None = None,
    suitability: str | Path | None = None,
    card: str | Path | None = None,
    provenance: dict | None = None,
) -> dict:
    """merged.json -> train.json + clean_report.json (+ the dataset card when `card` is given)."""
    from zhufu.grid import load_suitability

    records = validate_records(read_json(merged), merged)
    matrix = load_suitability(suitability) if suitability and rules["suitability"]["enabled"] else None
    kept, report = clean_records(records, rules, styles, system_prompt, matrix)
    report = {"input": str(merged), **report}
    write_json(train, training_rows(kept), indent=1)
    write_json(report_path, report, indent=1)
    log.info(
        "%s: %d in, %d kept, %d dropped, %d modified",
        merged,
        report["rows_in"],
        report["rows_out"],
        report["rows_dropped"],
        report["rows_modified"],
    )
    if card:
        from zhufu.card import write_card

        write_card(card, train, report, records, provenance or {})
    return report


# ---------------------------------------------------------------- format check


def check_format(
    train: str | Path, tokenizer_dir: str | Path, out: str | Path, template: str, max_length: int
) -> dict:
    """Run train.json through XTuner's process_hf_dataset (as training will) and count truncated samples.

    A sample is truncated when its full encoding (same template, no length limit) is longer than max_length.
    """
    import os

    tdir = Path(tokenizer_dir)
    if not tdir.is_dir():
        raise DataError(
            f"{tdir}: no tokenizer directory (build it with `zhufu base-model` or the base_model rule)"
        )
    rows = read_json(train)
    if not isinstance(rows, list) or not rows:
        raise DataError(f"{train}: expected a non-empty JSON list of {{'conversation': [...]}} rows")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from datasets import load_dataset
    from transformers import AutoTokenizer
    from xtuner.dataset import process_hf_dataset
    from xtuner.dataset.map_fns import template_map_fn_factory
    from xtuner.utils import PROMPT_TEMPLATE

    if template not in PROMPT_TEMPLATE:
        raise DataError(f"check-format: unknown XTuner template {template!r}")
    tokenizer = AutoTokenizer.from_pretrained(str(tdir), trust_remote_code=True)
    dataset = load_dataset("json", data_files=str(train), split="train")

    def processed(limit: int):
        return process_hf_dataset(
            dataset=dataset,
            tokenizer=tokenizer,
            max_length=limit,
            dataset_map_fn=None,
            template_map_fn=template_map_fn_factory(template=PROMPT_TEMPLATE[template]),
            remove_unused_columns=True,
            shuffle_before_pack=False,
            pack_to_max_length=False,
            map_num_proc=1,
        )

    try:
        limited = processed(max_length)
        full = processed(10**9)
    except Exception as e:  # XTuner's failure is the finding: say which file and why, one line
        raise DataError(f"{train}: XTuner's process_hf_dataset failed ({type(e).__name__}: {e})") from e
    lengths = sorted(len(x) for x in full["input_ids"])
    truncated = sum(1 for n in lengths if n > max_length)
    result = {
        "train": str(train),
        "template": template,
        "max_length": max_length,
        "rows": len(rows),
        "samples": len(limited),
        "truncated": truncated,
        "dropped_by_xtuner": len(rows) - len(limited),
        "tokens": {
            "min": lengths[0] if lengths else 0,
            "median": lengths[len(lengths) // 2] if lengths else 0,
            "max": lengths[-1] if lengths else 0,
        },
    }
    write_json(out, result)
    log.info("%s: %d samples, %d truncated at max_length %d", train, len(limited), truncated, max_length)
    return result


# ---------------------------------------------------------------- CLI


def _config(args) -> dict:
    from zhufu.config import load_config

    return load_config(getattr(args, "config", None))


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
        args.file, args.output, _config(args), round_=args.round, model=args.model, rule_set=args.rule_set
    )
    print(f"{args.output}: {len(records)} records")
    return 0


def add_merge_arguments(parser) -> None:
    parser.add_argument("shards", nargs="+", help="shard files, or directories searched for *.json")
    parser.add_argument("-o", "--output", required=True, help="merged JSON to write")


def run_merge(args) -> int:
    merged = merge(args.shards, args.output)
    print(f"{args.output}: {len(merged)} records")
    return 0


# The config keys that shape the data. Training and evaluation keys are left out, so editing them does not
# rerun clean (and so retrain) just to write a new hash into the card.
DATA_KEYS = (
    "seed",
    "rounds",
    "system_prompt",
    "teacher_system_prompt",
    "grid",
    "prompt_template",
    "injections",
    "input_templates",
    "trigger_separator",
    "styles",
    "provider",
    "clean",
)


def data_config_hash(config: dict) -> str:
    import json

    blob = json.dumps({k: config.get(k) for k in DATA_KEYS}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def provenance_from_config(config: dict) -> dict:
    return {
        "provider": config["provider"]["kind"],
        "model": config["provider"]["model"],
        "seed": config["seed"],
        "config_hash": data_config_hash(config),
    }


def add_clean_arguments(parser) -> None:
    parser.add_argument("merged", help="merged JSON (records with id and meta)")
    parser.add_argument("-o", "--output", required=True, help="train.json to write (conversation only)")
    parser.add_argument("--report", required=True, help="cleaning report to write (JSON)")
    parser.add_argument("--card", help="also write the dataset card (markdown)")
    parser.add_argument("--config", help="config whose `clean:` rules and styles apply (default config.yaml)")


def run_clean(args) -> int:
    config = _config(args)
    report = clean(
        args.merged,
        args.output,
        args.report,
        rules=config["clean"],
        styles=config["styles"],
        system_prompt=config["system_prompt"],
        suitability=config["grid"].get("suitability"),
        card=args.card,
        provenance=provenance_from_config(config),
    )
    print(f"{args.output}: {report['rows_out']} of {report['rows_in']} records kept; report {args.report}")
    return 0


def add_card_arguments(parser) -> None:
    parser.add_argument("train", help="train.json")
    parser.add_argument("--report", required=True, help="the clean report written with it")
    parser.add_argument("--merged", required=True, help="the merged JSON it was cleaned from")
    parser.add_argument("-o", "--output", required=True, help="card to write (markdown)")
    parser.add_argument("--config", help="config recorded in the card (default config.yaml)")


def run_card(args) -> int:
    from zhufu.card import write_card

    config = _config(args)
    write_card(
        args.output,
        args.train,
        read_json(args.report),
        read_json(args.merged),
        provenance_from_config(config),
    )
    print(args.output)
    return 0


def add_check_format_arguments(parser) -> None:
    parser.add_argument("train", help="train.json")
    parser.add_argument("--tokenizer", default="results/base_model", help="model dir with the tokenizer")
    parser.add_argument("-o", "--output", default="results/data/format_check.json")
    parser.add_argument("--template", help="XTuner prompt template (default: the training profile's)")
    parser.add_argument("--max-length", type=int, help="(default: the training profile's)")
    parser.add_argument("--config", help="config whose training profile applies (default config.yaml)")


def training_format(config: dict) -> tuple[str, int]:
    """The XTuner template and max_length of the configured training profile."""
    from zhufu.profiles import resolve_profile

    train = config.get("train", {})
    profile = resolve_profile(train.get("profile", "cpu-tiny"), train.get("overrides"))
    return profile["prompt_template"], profile["max_length"]


def run_check_format(args) -> int:
    template, max_length = args.template, args.max_length
    if template is None or max_length is None:
        t, m = training_format(_config(args))
        template, max_length = template or t, max_length or m
    result = check_format(args.train, args.tokenizer, args.output, template, max_length)
    print(
        f"{args.output}: {result['samples']} samples, {result['truncated']} truncated at {max_length} tokens"
    )
    return 0
