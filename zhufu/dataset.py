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
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

from zhufu.config import ROOT
from zhufu.errors import DataError, not_utf8
from zhufu.io import read_json, write_json

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
        if not isinstance(row.get("meta") or {}, dict):
            raise DataError(f"{source}: row {i}: 'meta' must be an object")
        for key in ("style_name", "src_input", "id"):
            if row.get(key) is not None and not isinstance(row[key], str):
                raise DataError(f"{source}: row {i}: '{key}' must be a string")
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
        except UnicodeDecodeError as e:
            raise DataError(f"{p}: {not_utf8(e)}") from None
        except OSError as e:
            raise DataError(f"{p}: cannot be read ({e.strerror or e})") from None
        for lineno, line in enumerate(lines, start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{p}, line {lineno}: not valid JSON ({e.msg})") from None
                except RecursionError:
                    raise DataError(f"{p}, line {lineno}: not usable JSON (nested too deeply)") from None
        return rows
    return read_json(p)


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


# ---------------------------------------------------------------- clean


def _rule_meta(meta: dict) -> dict:
    return {"recipient": meta.get("recipient"), "scene": meta.get("scene"), "style": meta.get("style")}


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
            "field": "system" if rule == "system_prompt" else "output",
            "before": before,
            "after": after,
        }
        if len(record["conversation"]) > 1:
            entry["turn"] = turn
        modified.append(entry)

    items = [(t["output"], _rule_meta(r["meta"])) for r in records for t in r["conversation"]]
    verdicts = iter(record_verdicts(items, rules, styles, matrix, workers))
    for record in records:
        turns = [dict(t) for t in record["conversation"]]
        pending: list[tuple[str, str, str, int]] = []
        verdict_drop = None
        for k, turn in enumerate(turns):
            verdict = next(verdicts)
            if verdict_drop:
                continue
            if rules["system_prompt"]["enabled"] and system_prompt and turn["system"] != system_prompt:
                pending.append(("system_prompt", turn["system"], system_prompt, k))
                turn["system"] = system_prompt
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
    if rules["exact_dedup"]["enabled"]:
        for i, j in exact_duplicates(keys).items():
            gone.add(i)
            drop(
                survivors[i],
                "exact_dedup",
                f"same text as {survivors[j]['id']} after normalisation",
                duplicate_of=survivors[j]["id"],
            )
    if rules["near_dedup"]["enabled"]:
        nd = rules["near_dedup"]
        rest = [i for i in range(len(survivors)) if i not in gone]
        found = near_duplicates(
            [keys[i] for i in rest], nd["ngram"], nd["threshold"], nd["num_perm"], nd["seed"]
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
    report = {
        "rows_in": len(records),
        "rows_out": len(kept),
        "rows_dropped": len(dropped),
        "rows_modified": len({m["id"] for m in modified}),
        "rules": {name: {"enabled": rules[name]["enabled"], **counts[name]} for name in ALL_RULES},
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
    train: str | Path,
    tokenizer_dir: str | Path,
    out: str | Path,
    template: str,
    max_length: int,
    min_samples: int = 1,
) -> dict:
    """Run train.json through XTuner's process_hf_dataset (as training will) and count truncated samples.

    A sample is truncated when its full encoding (same template, no length limit) is longer than max_length.
    A set with fewer than `min_samples` samples after XTuner's processing is refused (DataError, nothing
    written), so the train rule, which waits for this check, never starts on an empty or nearly empty set.
    """
    import os

    tdir = Path(tokenizer_dir)
    if not tdir.is_dir():
        raise DataError(
            f"{tdir}: no tokenizer directory (build it with `zhufu base-model` or the base_model rule)"
        )
    rows = read_json(train)
    if not isinstance(rows, list):
        raise DataError(f"{train}: expected a JSON list of {{'conversation': [...]}} rows")
    if len(rows) < min_samples:
        raise DataError(_too_few(train, len(rows), "rows", min_samples))
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
    if len(limited) < min_samples:
        raise DataError(_too_few(train, len(limited), "samples after XTuner's processing", min_samples))
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


def _too_few(train: str | Path, n: int, what: str, needed: int) -> str:
    return (
        f"{train}: {n} {what}; training needs at least {needed} (train.overrides.min_samples, and one "
        f"optimiser step of batch_size × accumulative_counts × nproc_per_node); the cleaning report beside "
        f"it lists what was dropped"
    )


def min_training_samples(profile: dict) -> int:
    """The fewest samples a resolved training profile accepts: min_samples, and one optimiser step."""
    step = profile["batch_size"] * profile["accumulative_counts"] * profile["nproc_per_node"]
    return max(profile["min_samples"], step)


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


def run_import(args) -> int:
    records = import_file(args.file, args.output, _config(args), round_=args.round, model=args.model)
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
    parser.add_argument("--max-length", type=_positive_int, help="(default: the training profile's)")
    parser.add_argument(
        "--min-samples",
        type=_positive_int,
        help="refuse fewer samples than this (default: the training profile's min_samples and one step)",
    )
    parser.add_argument("--config", help="config whose training profile applies (default config.yaml)")


def _positive_int(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def training_format(config: dict) -> tuple[str, int]:
    """The XTuner template and max_length of the configured training profile."""
    from zhufu.profiles import resolve_profile

    train = config.get("train", {})
    profile = resolve_profile(train.get("profile", "cpu-tiny"), train.get("overrides"))
    return profile["prompt_template"], profile["max_length"]


def run_check_format(args) -> int:
    from zhufu.profiles import resolve_profile

    template, max_length, min_samples = args.template, args.max_length, args.min_samples
    if template is None or max_length is None or min_samples is None:
        config = _config(args)
        profile = resolve_profile(config["train"]["profile"], config["train"].get("overrides"))
        template = template or profile["prompt_template"]
        max_length = max_length or profile["max_length"]
        min_samples = min_samples or min_training_samples(profile)
    result = check_format(args.train, args.tokenizer, args.output, template, max_length, min_samples)
    print(
        f"{args.output}: {result['samples']} samples, {result['truncated']} truncated at {max_length} tokens"
    )
    return 0
