"""Clean merged records with the rules configured under `clean:`: train.json (no meta), a report of every
dropped and modified record with per-rule counts, and (zhufu.data.card) the dataset card.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from zhufu.config import load_config
from zhufu.data.card import provenance_from_config, write_card
from zhufu.data.dedup import exact_duplicates, near_duplicates, normalise
from zhufu.data.records import validate_records
from zhufu.data.rules import ALL_RULES, record_verdicts
from zhufu.grid import load_suitability
from zhufu.io import read_json, write_json
from zhufu.text import count_chars

log = logging.getLogger(__name__)


def _rule_meta(meta: dict) -> dict:
    return {"recipient": meta.get("recipient"), "scene": meta.get("scene"), "style": meta.get("style")}


@dataclass
class Changes:
    """What the rules did, for the report: per-rule counts, every dropped and every modified record."""

    counts: dict = field(default_factory=lambda: {name: {"dropped": 0, "modified": 0} for name in ALL_RULES})
    dropped: list[dict] = field(default_factory=list)
    modified: list[dict] = field(default_factory=list)

    def drop(self, record: dict, rule: str, detail: str, **extra) -> None:
        self.counts[rule]["dropped"] += 1
        text = "\n".join(t["output"] for t in record["conversation"])
        self.dropped.append({"id": record["id"], "rule": rule, "detail": detail, "text": text, **extra})

    def modify(self, record: dict, rule: str, before: str, after: str, turn: int) -> None:
        self.counts[rule]["modified"] += 1
        entry = {
            "id": record["id"],
            "rule": rule,
            "field": "system" if rule == "system_prompt" else "output",
            "before": before,
            "after": after,
        }
        if len(record["conversation"]) > 1:
            entry["turn"] = turn
        self.modified.append(entry)


def clean_records(
    records: list[dict],
    rules: dict,
    styles: dict,
    system_prompt: str | None,
    matrix: dict | None,
    workers: int | None = None,
) -> tuple[list[dict], dict]:
    """Apply the cleaning rules. Returns the kept records (with meta) and the report."""
    changes = Changes()
    survivors = apply_record_rules(records, rules, styles, system_prompt, matrix, workers, changes)
    gone = drop_duplicates(survivors, rules, changes)
    kept = [r for i, r in enumerate(survivors) if i not in gone]
    order = {r["id"]: n for n, r in enumerate(records)}
    changes.dropped.sort(key=lambda d: order[d["id"]])
    return kept, _report(records, kept, rules, changes)


def apply_record_rules(
    records: list[dict],
    rules: dict,
    styles: dict,
    system_prompt: str | None,
    matrix: dict | None,
    workers: int | None,
    changes: Changes,
) -> list[dict]:
    """The records that no record rule drops, repaired; a record is dropped whole when one turn is."""
    items = [(t["output"], _rule_meta(r["meta"])) for r in records for t in r["conversation"]]
    verdicts = iter(record_verdicts(items, rules, styles, matrix, workers))
    survivors: list[dict] = []
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
            changes.drop(record, *verdict_drop)
            continue
        for rule, before, after, k in pending:
            changes.modify(record, rule, before, after, k)
        survivors.append({**record, "conversation": turns})
    return survivors


def drop_duplicates(survivors: list[dict], rules: dict, changes: Changes) -> set[int]:
    """Indexes of the survivors that the set rules (exact_dedup, then near_dedup) drop."""
    keys = ["\n".join(normalise(t["output"]) for t in r["conversation"]) for r in survivors]
    gone: set[int] = set()
    if rules["exact_dedup"]["enabled"]:
        for i, j in exact_duplicates(keys).items():
            gone.add(i)
            changes.drop(
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
            changes.drop(
                survivors[i],
                "near_dedup",
                f"{nd['ngram']}-gram Jaccard {jac:.2f} with {survivors[j]['id']}",
                duplicate_of=survivors[j]["id"],
            )
    return gone


def _report(records: list[dict], kept: list[dict], rules: dict, changes: Changes) -> dict:
    return {
        "rows_in": len(records),
        "rows_out": len(kept),
        "rows_dropped": len(changes.dropped),
        "rows_modified": len({m["id"] for m in changes.modified}),
        "rules": {name: {"enabled": rules[name]["enabled"], **changes.counts[name]} for name in ALL_RULES},
        "dropped": changes.dropped,
        "modified": changes.modified,
        "kept": [
            {
                "id": r["id"],
                "recipient": r["meta"].get("recipient"),
                "scene": r["meta"].get("scene"),
                "style": r["meta"].get("style"),
                "chars": sum(count_chars(t["output"]) for t in r["conversation"]),
            }
            for r in kept
        ],
    }


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
        write_card(card, train, report, records, provenance or {})
    return report


def add_clean_arguments(parser) -> None:
    parser.add_argument("merged", help="merged JSON (records with id and meta)")
    parser.add_argument("-o", "--output", required=True, help="train.json to write (conversation only)")
    parser.add_argument("--report", required=True, help="cleaning report to write (JSON)")
    parser.add_argument("--card", help="also write the dataset card (markdown)")
    parser.add_argument("--config", help="config whose `clean:` rules and styles apply (default config.yaml)")


def run_clean(args) -> int:
    config = load_config(args.config)
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
