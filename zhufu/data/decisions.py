"""The review decisions file (`zhufu review` writes it, `clean` reads it): one JSON line per record id, the
newest decision of an id replacing the older, kept outside results/ (default review/decisions.jsonl) for the
user to keep under version control:

    {"id": "…", "decision": "accept" | "reject" | "edit", "judged": "<the record's output when judged>",
     "text": "<the edited output, for edit>"}

`clean` applies it (`apply_decision`): reject drops the record with rule `review`; edit replaces its output
(rule `review`); accept keeps a record a rule would drop. A decision whose record's output is no longer the
one judged is reported in clean_report.json's `review.stale`, and not applied.
"""

from __future__ import annotations

import json
from pathlib import Path

from zhufu.errors import DataError
from zhufu.io import read_json, write_text

DECISIONS = ("accept", "reject", "edit")
REVIEW_RULE = "review"


def load_decisions(path: str | Path | None) -> dict[str, dict]:
    """id -> decision; a missing file is no decisions; a bad line is one DataError naming file and line."""
    if not path or not Path(path).is_file():
        return {}
    decisions: dict[str, dict] = {}
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
            except ValueError:
                raise DataError(f"{path}, line {n}: not a JSON object") from None
            if not (
                isinstance(d, dict)
                and isinstance(d.get("id"), str)
                and d.get("decision") in DECISIONS
                and isinstance(d.get("judged"), str)
                and (d["decision"] != "edit" or (isinstance(d.get("text"), str) and d["text"].strip()))
            ):
                raise DataError(
                    f"{path}, line {n}: expected {{id, decision: accept|reject|edit, judged, text (for edit)}}"
                )
            decisions[d["id"]] = d
    return decisions


def record_text(record: dict) -> str:
    return "\n".join(t["output"] for t in record["conversation"])


def apply_decision(record: dict, decision: dict | None) -> tuple[str, str | None]:
    """What clean does with a record's decision: ("none"|"stale"|"accept"|"reject"|"edit", edited text)."""
    if decision is None:
        return "none", None
    if decision["judged"] != record_text(record) or (
        decision["decision"] == "edit" and len(record["conversation"]) != 1
    ):
        return "stale", None
    return decision["decision"], decision.get("text")


def save_decision(path: str | Path, decision: dict) -> None:
    """Add or replace the decision of one id, keeping the file's order (atomic rewrite)."""
    rows = load_decisions(path)
    rows[decision["id"]] = decision
    write_text(path, "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in rows.values()))


def review_rows(merged: str | Path, report: str | Path, decisions: dict[str, dict]) -> list[dict]:
    """Every merged record with the cleaner's verdict, its before/after text and the current decision."""
    records = read_json(merged)
    rep = read_json(report)
    dropped = {d["id"]: d for d in rep.get("dropped", [])}
    modified: dict[str, list[dict]] = {}
    for m in rep.get("modified", []):
        modified.setdefault(m["id"], []).append(m)
    rows = []
    for r in records:
        before = record_text(r)
        meta = r.get("meta", {})
        row = {
            "id": r["id"],
            "input": r["conversation"][0]["input"],
            "style": meta.get("style"),
            "scene": meta.get("scene"),
            "recipient": meta.get("recipient"),
            "before": before,
            "after": before,
            "rules": [],
            "detail": "",
        }
        d = dropped.get(r["id"])
        if d and d["rule"] != REVIEW_RULE:
            row.update(verdict="dropped", rules=[d["rule"]], detail=d["detail"])
        else:
            changes = [
                m for m in modified.get(r["id"], []) if m["field"] == "output" and m["rule"] != REVIEW_RULE
            ]
            if changes:
                row.update(
                    verdict="repaired", rules=sorted({m["rule"] for m in changes}), after=changes[-1]["after"]
                )
            else:
                row["verdict"] = "kept"
        dec = decisions.get(r["id"])
        row["decision"] = apply_decision(r, dec)[0] if dec else None
        if dec and dec["decision"] == "edit":
            row["edited"] = dec["text"]
        rows.append(row)
    return rows
