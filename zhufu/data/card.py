"""The dataset card (results/data/dataset_card.md): what train.json holds, where it came from, what was dropped."""

from __future__ import annotations

import statistics
from collections import Counter
from pathlib import Path

from zhufu.config import load_config, provenance_from_config
from zhufu.io import file_digest, read_json, write_text

OFFLINE_NOTICE = "This data was composed by Zhufu's offline teacher, a phrase bank, not an LLM."


def _table(header: tuple[str, ...], rows: list[tuple]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _counts(kept: list[dict], key: str) -> list[tuple[str, int]]:
    c = Counter("(unknown)" if k[key] is None else k[key] for k in kept)
    return sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))


def _length_rows(kept: list[dict]) -> list[tuple]:
    by_style: dict[str, list[int]] = {}
    for k in kept:
        by_style.setdefault(k["style"], []).append(k["chars"])
    rows = []
    for style, ns in sorted(by_style.items()) + [("(all)", [k["chars"] for k in kept])]:
        if ns:
            rows.append(
                (style, len(ns), min(ns), f"{statistics.mean(ns):.1f}", f"{statistics.median(ns):g}", max(ns))
            )
    return rows


def render_card(train_path: str | Path, report: dict, records: list[dict], provenance: dict) -> str:
    """Markdown for the card. `records` is merged.json (for the providers and models of the sources)."""
    kept = report["kept"]
    providers = Counter((r["meta"]["provider"], r["meta"]["model"]) for r in records)
    kind = provenance.get("provider")
    offline = kind == "offline" or any(p == "offline" for p, _ in providers)
    lines = ["# Zhufu dataset card", ""]
    if offline:
        lines += [
            f"> **{OFFLINE_NOTICE}** It is a stand-in so that the workflow runs without an API key: "
            "train on it to test the pipeline, not to get a useful model.",
            "",
        ]
    lines += [
        f"`{Path(train_path).name}`: **{report['rows_out']}** conversations kept of {report['rows_in']} merged "
        f"({report['rows_dropped']} dropped, {report['rows_modified']} repaired by the cleaning rules).",
        "",
        "## Provenance",
        "",
        f"- configured provider: `{kind}`, model `{provenance.get('model')}`",
        f"- seed: `{provenance.get('seed')}`",
        f"- config hash: `{provenance.get('config_hash')}` (of the keys that shape the data: seed, grid, styles, "
        "prompts, provider identity, clean)",
        f"- sha256 of `{Path(train_path).name}`: `{file_digest(train_path).hexdigest()}`",
        "",
        "Sources in merged.json:",
        "",
    ]
    lines += _table(("provider", "model", "records"), [(p, m, n) for (p, m), n in sorted(providers.items())])
    lines += ["", "## Rows dropped and repaired per rule", ""]
    lines += _table(
        ("rule", "enabled", "dropped", "repaired"),
        [
            (name, "yes" if r["enabled"] else "no", r["dropped"], r["modified"])
            for name, r in report["rules"].items()
        ],
    )
    if report.get("rule_sets"):
        lines += [
            "",
            "Imports cleaned with their own rule set (clean.rule_sets), counted apart; the table above counts "
            "every row:",
            "",
        ]
        lines += _table(
            ("rule set", "rows in", "kept", "dropped (by rule)", "repaired (by rule)"),
            [
                (
                    name,
                    c["rows_in"],
                    c["rows_out"],
                    ", ".join(f"{k} {v}" for k, v in sorted(c["dropped"].items())) or "0",
                    ", ".join(f"{k} {v}" for k, v in sorted(c["modified"].items())) or "0",
                )
                for name, c in report["rule_sets"].items()
            ],
        )
    if report.get("mix"):
        lines += [
            "",
            "## General data mixed in (data.mix)",
            "",
            f"{report['rows_mixed']} general rows of {report['rows_train']} in `{Path(train_path).name}` "
            f"({report['rows_mixed'] / max(report['rows_train'], 1):.0%}), cleaned apart with their own rule set "
            "(never deduplicated against the blessings) and drawn, seeded; the tables above and below count the "
            "blessings only:",
            "",
        ]
        lines += _table(
            ("source", "rule set", "asked", "rows in", "kept by the rules", "drawn", "dropped (by rule)"),
            [
                (
                    f"`{m['source']}`",
                    m["rule_set"],
                    f"share {m['share']}" if m.get("share") is not None else f"count {m['count']}",
                    m["rows_in"],
                    m["rows_clean"],
                    m["rows_drawn"],
                    ", ".join(f"{k} {v}" for k, v in sorted(m["dropped_by_rule"].items())) or "0",
                )
                for m in report["mix"]
            ],
        )
    lines += ["", "Every dropped and repaired record is listed, with its text, in `clean_report.json`.", ""]
    lines += ["## Length (characters) per style", ""]
    lines += _table(("style", "rows", "min", "mean", "median", "max"), _length_rows(kept))
    for title, key in (("style", "style"), ("scene", "scene"), ("recipient", "recipient")):
        lines += ["", f"## Rows per {title}", ""]
        lines += _table((title, "rows"), _counts(kept, key))
    rewritten = report["rules"].get("input_rewrite", {}).get("modified", 0)
    inputs = (
        f"The `input` fields are as generated or imported, except {rewritten} `input` rewritten by input_rewrite "
        "(Tianji's refiner templates; each listed in `clean_report.json`)."
        if rewritten
        else "The `input` fields are as generated or imported; cleaning never rewrites them."
    )
    lines += [
        "",
        "## Format",
        "",
        '`train.json` is a JSON list of `{"conversation": [{"system", "input", "output"}]}`, what XTuner\'s '
        f"`load_dataset('json')` and `template_map_fn` consume. {inputs}",
        "",
    ]
    return "\n".join(lines)


def write_card(
    out: str | Path, train_path: str | Path, report: dict, records: list[dict], provenance: dict
) -> None:
    write_text(out, render_card(train_path, report, records, provenance))


def add_card_arguments(parser) -> None:
    parser.add_argument("train", help="train.json")
    parser.add_argument("--report", required=True, help="the clean report written with it")
    parser.add_argument("--merged", required=True, help="the merged JSON it was cleaned from")
    parser.add_argument("-o", "--output", required=True, help="card to write (markdown)")
    parser.add_argument("--config", help="config recorded in the card (default config.yaml)")


def run_card(args) -> int:
    config = load_config(args.config)
    write_card(
        args.output,
        args.train,
        read_json(args.report),
        read_json(args.merged),
        provenance_from_config(config),
    )
    print(args.output)
    return 0
