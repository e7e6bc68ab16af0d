"""How much general dialogue to mix in (`data.mix`): the blessings the tuned default writes, and whether it
still answers requests that are not blessings.

Each variant is the embedded default run with `data.mix` set to one share of Zhufu's own general set
(resources/general_dialogue.json), run to `results/eval/metrics.json` in its own copy of the project, one
after another (bench/recipient_scene.py's copy and run). It prints, per share, the tuned model's held-out
recipient, scene and length band (the table's `held-out` group), the off-task group's leakage and on_topic
(base and tuned), and the wall time of the run and of its train and evaluate rules.

    .venv/bin/python bench/mix.py                  # shares 0, 0.1, 0.3
    .venv/bin/python bench/mix.py --shares 0 0.2
    .venv/bin/python bench/mix.py --keep /tmp/mix  # keep the copies (results/, logs)
    .venv/bin/python bench/mix.py --iters 60       # a smoke run: NOT the default's 3000 iterations
    .venv/bin/python bench/mix.py --table /tmp/mix # the table again from kept copies (after `zhufu evaluate
                                                   # --rescore` in each, say), running nothing

A share's numbers come from one seeded run: the intervals say how far to trust them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recipient_scene import project_copy, run_variant  # noqa: E402  (the sibling bench's copy and run)

SOURCE = "resources/general_dialogue.json"
HELD_OUT = ("recipient", "scene", "length_band")
OFF_TASK = ("leakage", "on_topic")


def overlay(share: float, iters: int | None = None) -> dict:
    out: dict = {"data": {"mix": [{"source": SOURCE, "share": share}] if share else []}}
    if iters:
        out["train"] = {"overrides": {"max_iters": iters}}
    return out


def _cell(cell: dict | None) -> str:
    if not cell or cell.get("value") is None:
        return "–"
    return f"{cell['value']:.2f} [{cell['ci'][0]:.2f}, {cell['ci'][1]:.2f}]"


def read_variant(project: Path, r: dict) -> dict:
    """A variant's figures from its copy: the held-out and off-task groups, the rows mixed in."""
    metrics = json.loads((project / "results/eval/metrics.json").read_text(encoding="utf-8"))
    report = json.loads((project / "results/data/clean_report.json").read_text(encoding="utf-8"))
    held = metrics["groups"]["held-out"]
    return {
        **r,
        "metrics": {m: held[m] for m in HELD_OUT},
        "mixed": report["rows_mixed"],
        "off_task": metrics["groups"].get("off-task", {}),
    }


def print_table(results: list[dict]) -> None:
    head = ["share", "train rows (mixed)", *[f"held-out tuned {m}" for m in HELD_OUT]]
    head += [f"off-task {who} {m}" for m in OFF_TASK for who in ("base", "tuned")]
    head += ["run s", "train s", "eval s"]
    print("\n| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in results:
        row = [f"{r['share']:g}", f"{r['records']} ({r['mixed']})"]
        row += [_cell((r["metrics"].get(m) or {}).get("tuned")) for m in HELD_OUT]
        row += [_cell((r["off_task"].get(m) or {}).get(who)) for m in OFF_TASK for who in ("base", "tuned")]
        row += [f"{r['wall']:.0f}", f"{r['train'] or 0:.0f}", f"{r['evaluate'] or 0:.0f}"]
        print("| " + " | ".join(row) + " |")
    print("\noff-task verdicts (tuned − base):")
    for r in results:
        verdicts = ", ".join(f"{m} {(r['off_task'].get(m) or {}).get('verdict', '–')}" for m in OFF_TASK)
        print(f"  share {r['share']:g}: {verdicts}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shares", nargs="+", type=float, default=[0.0, 0.1, 0.3])
    ap.add_argument(
        "--iters",
        type=int,
        help="train this many iterations instead of the default's (a smoke run, not the default)",
    )
    ap.add_argument(
        "--table", type=Path, help="print the table of the copies kept in this folder; run nothing"
    )
    ap.add_argument("--keep", type=Path, help="run in this folder and keep it (default: a temporary one)")
    args = ap.parse_args()
    if args.table:
        runs = sorted(args.table.glob("share-*/bench-result.json"))
        print_table([read_variant(p.parent, json.loads(p.read_text(encoding="utf-8"))) for p in runs])
        return 0
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="zhufu-mix-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"load average at start: {os.getloadavg()[0]:.2f}; copies under {workdir}", flush=True)
    if args.iters:
        print(f"SMOKE RUN: {args.iters} training iterations, not the default's", flush=True)
    names = {share: f"share-{share:g}" for share in args.shares}
    for name in names.values():  # every copy first: the checkout may change while the variants run
        project_copy(workdir / name)
    results = []
    try:
        for share, name in names.items():
            r = {
                **run_variant(name, overlay(share, args.iters), workdir),
                "share": share,
                "iters": args.iters,
            }
            (workdir / name / "bench-result.json").write_text(
                json.dumps(r, ensure_ascii=False), encoding="utf-8"
            )
            results.append(read_variant(workdir / name, r))
            print(json.dumps(results[-1], ensure_ascii=False), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print_table(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
