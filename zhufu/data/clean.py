"""Clean merged records with the rules configured under `clean:`: train.json (no meta), a report of every
dropped and modified record with per-rule counts, and (zhufu.data.card) the dataset card. General data of
`data.mix` (zhufu.data.mix) is cleaned apart with its own rule set, drawn, and appended to train.json.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from zhufu.config import load_config, provenance_from_config
from zhufu.data.card import write_card
from zhufu.data.decisions import REVIEW_RULE, apply_decision, load_decisions
from zhufu.data.dedup import exact_duplicates, near_duplicates, normalise
from zhufu.data.mix import draw, source_records, wanted
from zhufu.data.records import read_records
from zhufu.data.rules import ALL_RULES, rewritten_input, rules_by_set
from zhufu.data.verdicts import iter_record_verdicts, usable_cpus
from zhufu.grid import load_suitability
from zhufu.io import write_json
from zhufu.text import count_chars

log = logging.getLogger(__name__)


_RULE_META_KEYS = ("recipient", "scene", "style", "rule_set")


def _rule_meta(meta: dict, memo: dict | None = None) -> dict:
    """What the record rules read of a record's meta; with `memo`, one dict for all records that have the
    same (a few hundred grid cells among a million records, and the workers get each once per chunk)."""
    values = tuple(meta.get(k) for k in _RULE_META_KEYS)
    if memo is None:
        return dict(zip(_RULE_META_KEYS, values, strict=True))
    found = memo.get(values)
    if found is None:
        found = memo[values] = dict(zip(_RULE_META_KEYS, values, strict=True))
    return found


def _record_rule_sets(records: list[dict]) -> list:
    return [r["meta"].get("rule_set") for r in records]


@dataclass
class Changes:
    """What the rules did, for the report: per-rule counts, every dropped and every modified record."""

    counts: dict = field(
        default_factory=lambda: {name: {"dropped": 0, "modified": 0} for name in (*ALL_RULES, REVIEW_RULE)}
    )
    review: dict = field(default_factory=lambda: {"applied": [], "stale": []})
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
            "field": {"system_prompt": "system", "input_rewrite": "input"}.get(rule, "output"),
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
    decisions: dict[str, dict] | None = None,
) -> tuple[list[dict], dict]:
    """Apply the cleaning rules, then the review decisions (zhufu.data.decisions). Returns the kept records
    (with meta) and the report."""
    changes = Changes()
    by_set = rules_by_set(rules, _record_rule_sets(records))
    survivors = surviving_records(records, rules, styles, system_prompt, matrix, workers, changes, decisions)
    gone = drop_duplicates(survivors, rules, changes, by_set, workers)
    kept = [r for i, r in enumerate(survivors) if i not in gone]
    order = {r["id"]: n for n, r in enumerate(records)}
    changes.dropped.sort(key=lambda d: order[d["id"]])
    return kept, _report(records, kept, rules, changes, by_set)


def surviving_records(
    records: list[dict],
    rules: dict,
    styles: dict,
    system_prompt: str | None,
    matrix: dict | None,
    workers: int | None,
    changes: Changes,
    decisions: dict[str, dict] | None = None,
) -> list[dict]:
    """The records that no record rule drops, repaired; a record is dropped whole when one turn is. Each
    record gets the rules of its rule set (meta.rule_set), if it names one."""
    by_set = rules_by_set(rules, _record_rule_sets(records))
    metas: dict = {}
    items = [(t["output"], _rule_meta(r["meta"], metas)) for r in records for t in r["conversation"]]
    verdicts = iter_record_verdicts(items, rules, styles, matrix, workers)
    survivors: list[dict] = []
    for record in records:
        turns = [dict(t) for t in record["conversation"]]
        pending: list[tuple[str, str, str, int]] = []
        verdict_drop = None
        own = by_set[record["meta"].get("rule_set")]
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
        # Review decisions (the user's review/decisions.jsonl): reject drops, edit replaces, accept keeps
        # a record a rule would drop; a decision about a changed record is reported, not applied.
        decision = (decisions or {}).get(record["id"])
        action, edited = apply_decision(record, decision)
        if action == "stale":
            changes.review["stale"].append(
                {"id": record["id"], "decision": decision["decision"], "judged": decision["judged"]}
            )
        elif action != "none":
            changes.review["applied"].append({"id": record["id"], "decision": action})
        if action == "reject":
            changes.drop(record, REVIEW_RULE, "rejected in review")
            continue
        if action == "edit":
            pending.append((REVIEW_RULE, turns[0]["output"], edited, 0))
            turns[0]["output"] = edited
            verdict_drop = None
        if action == "accept" and verdict_drop:
            changes.review["applied"][-1]["overrides"] = verdict_drop[0]
            verdict_drop = None
        if verdict_drop:
            changes.drop(record, *verdict_drop)
            continue
        for rule, before, after, k in pending:
            changes.modify(record, rule, before, after, k)
        survivors.append({**record, "conversation": turns})
    return survivors


def drop_duplicates(
    survivors: list[dict],
    rules: dict,
    changes: Changes,
    by_set: dict | None = None,
    workers: int | None = None,
) -> set[int]:
    """Indexes of the survivors that the set rules (exact_dedup, then near_dedup) drop. A record whose rule
    set turns a set rule off takes no part in it. `workers`: processes for near-dedup's verification
    (None: the CPUs this process may use, up to 8)."""
    by_set = by_set or {None: rules}

    def rules_of(record: dict) -> dict:
        return by_set[record["meta"].get("rule_set")]

    keys = ["\n".join(normalise(t["output"]) for t in r["conversation"]) for r in survivors]
    gone: set[int] = set()
    exact = [i for i, r in enumerate(survivors) if rules_of(r)["exact_dedup"]["enabled"]]
    for a, b in exact_duplicates([keys[i] for i in exact]).items():
        i, j = exact[a], exact[b]
        gone.add(i)
        changes.drop(
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
            workers=usable_cpus() if workers is None else workers,
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


def _per_rule_set(records: list[dict], kept: list[dict], changes: Changes, by_set: dict) -> dict:
    """Rows in and out, and drops and repairs per rule, of each rule set (counted apart in the card)."""
    set_of = {r["id"]: r["meta"].get("rule_set") for r in records}
    per_set: dict[str, dict] = {}
    for name in sorted(n for n in by_set if n is not None):
        per_set[name] = {
            "rows_in": sum(1 for r in records if set_of[r["id"]] == name),
            "rows_out": sum(1 for r in kept if set_of[r["id"]] == name),
            "dropped": dict(Counter(d["rule"] for d in changes.dropped if set_of[d["id"]] == name)),
            "modified": dict(Counter(m["rule"] for m in changes.modified if set_of[m["id"]] == name)),
        }
    return per_set


def _report(records: list[dict], kept: list[dict], rules: dict, changes: Changes, by_set: dict) -> dict:
    return {
        "rows_in": len(records),
        "rows_out": len(kept),
        "rows_dropped": len(changes.dropped),
        "rows_modified": len({m["id"] for m in changes.modified}),
        "rules": {
            **{name: {"enabled": rules[name]["enabled"], **changes.counts[name]} for name in ALL_RULES},
            REVIEW_RULE: {
                "enabled": bool(changes.review["applied"] or changes.review["stale"]),
                **changes.counts[REVIEW_RULE],
            },
        },
        "review": changes.review,
        "rule_sets": _per_rule_set(records, kept, changes, by_set),
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


def mix_general(
    entries: list[dict], blessings: int, rules: dict, styles: dict, system_prompt: str | None, seed: int
) -> tuple[list[dict], list[dict]]:
    """The general records drawn for `data.mix` and the report of each entry. Each source is cleaned on
    its own (its rule set's rules; deduplicated within itself, never against the blessings), then drawn."""
    drawn, reports = [], []
    counts = wanted(entries, blessings)
    for i, (entry, n) in enumerate(zip(entries, counts, strict=True)):
        records = source_records(
            entry,
            i,
            rules,
            styles,
            system_prompt,
        )
        pool, report = clean_records(records, rules, styles, system_prompt, None)
        picked = draw(pool, n, seed, i, entry)
        drawn += picked
        rule_set = report["rule_sets"].get(entry["rule_set"], {})
        reports.append(
            {
                "source": entry["source"],
                "rule_set": entry["rule_set"],
                "share": entry.get("share"),
                "count": entry.get("count"),
                "rows_in": report["rows_in"],
                "rows_clean": report["rows_out"],
                "rows_drawn": len(picked),
                "dropped_by_rule": rule_set.get("dropped", {}),
                "modified_by_rule": rule_set.get("modified", {}),
                "dropped": report["dropped"],
                "modified": report["modified"],
                "drawn": [r["id"] for r in picked],
            }
        )
    return drawn, reports


def training_rows(kept: list[dict]) -> Iterator[dict]:
    """train.json's rows, one at a time (write_json writes them as they come, so a million of them are never
    all built at once): exactly what XTuner's load_dataset('json') + template_map_fn consume, no meta."""
    return (
        {"conversation": [{k: t[k] for k in ("system", "input", "output")} for t in r["conversation"]]}
        for r in kept
    )


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
    decisions: str | Path | None = None,
    mix: list[dict] | None = None,
    seed: int = 0,
    workers: int | None = None,
) -> dict:
    """merged.json -> train.json + clean_report.json (+ the dataset card when `card` is given); `decisions`
    is the review decisions file (zhufu.data.decisions), applied after the rules; `mix` the entries of
    data.mix (general rows drawn with `seed` and appended); `workers` the processes the record rules and
    near-dedup may use on large inputs (None: the CPUs this process may use, up to 8)."""
    records = read_records(merged)
    matrix = load_suitability(suitability) if suitability and rules["suitability"]["enabled"] else None
    kept, report = clean_records(
        records,
        rules,
        styles,
        system_prompt,
        matrix,
        workers,
        decisions=load_decisions(decisions) if decisions else None,
    )
    mixed, mix_reports = mix_general(mix or [], len(kept), rules, styles, system_prompt, seed)
    report = {
        "input": str(merged),
        **report,
        "rows_mixed": len(mixed),
        "rows_train": len(kept) + len(mixed),
        "mix": mix_reports,
    }
    write_json(train, training_rows(kept + mixed), indent=1)
    write_json(report_path, report, indent=1)
    log.info(
        "%s: %d in, %d kept, %d dropped, %d modified; %d general rows mixed in",
        merged,
        report["rows_in"],
        report["rows_out"],
        report["rows_dropped"],
        report["rows_modified"],
        report["rows_mixed"],
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
    parser.add_argument(
        "--decisions", help="review decisions to apply (default: the config's review.decisions)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        help="processes for the record rules and near-dedup on large inputs (default: the usable CPUs, up to 8)",
    )


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
        decisions=args.decisions or config["review"]["decisions"],
        mix=config["data"]["mix"],
        seed=config["seed"],
        workers=args.workers,
    )
    print(
        f"{args.output}: {report['rows_out']} of {report['rows_in']} records kept, {report['rows_mixed']} general "
        f"rows mixed in; report {args.report}"
    )
    return 0
