"""What it takes for the tiny default to name the right recipient and scene: data, model size, steps.

Each variant is the embedded default run with a config overlay (rounds, the tiny model's size, training
iterations, LoRA rank), run to `results/eval/metrics.json` in its own copy of the project, one after another
on this machine. `bpe` variants use the tiny model's former tokenizer (model.tiny.tokenizer: bpe), whose
template tokens swallow the recipient (送祝福给姐姐 is one token); the others the per-character default. It
prints, per variant, the tuned model's metrics on the held-out grid pairs (all styles; the table's
`held-out` group, without Tianji's six inputs) and what the variant costs: the wall time of the whole run and of the
train and evaluate rules, and the ratio of the run's wall time to the first variant's.

    .venv/bin/python bench/recipient_scene.py                      # every variant
    .venv/bin/python bench/recipient_scene.py --only bpe default   # some of them
    .venv/bin/python bench/recipient_scene.py --keep /tmp/rs       # keep the copies (results/, logs)

A variant's numbers come from one seeded run: the intervals in its metrics.json say how far to trust them.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")

WIDE = {"num_layers": 4, "hidden_size": 128, "num_heads": 4, "num_kv_heads": 2}
BPE = {"tokenizer": "bpe"}  # the tokenizer of the default before this benchmark


def _iters(n: int) -> dict:
    return {"train": {"overrides": {"max_iters": n}}}


# name -> config overlay. `default` is config.yaml as it is.
VARIANTS: dict[str, dict] = {
    "bpe": {"model": {"tiny": BPE}},
    "bpe-data6-iters1500": {"rounds": 6, "model": {"tiny": BPE}, **_iters(1500)},
    "bpe-wide-data6-iters1500": {"rounds": 6, "model": {"tiny": {**BPE, **WIDE}}, **_iters(1500)},
    "default": {},
    # the seed's model family at the same size: InternLM2's own code, its template, a sentencepiece tokenizer
    "internlm2": {
        "model": {"tiny": {"architecture": "internlm2"}},
        "train": {"profile": "cpu-tiny-internlm2"},
    },
    "iters1200": _iters(1200),
    "data4-iters1200": {"rounds": 4, **_iters(1200)},
    "data6-iters1500": {"rounds": 6, **_iters(1500)},
    "wide-data6-iters1500": {"rounds": 6, "model": {"tiny": WIDE}, **_iters(1500)},
    "data4-iters2400": {"rounds": 4, **_iters(2400)},
    "data6-iters3000": {"rounds": 6, **_iters(3000)},
    "data10-iters3000": {"rounds": 10, **_iters(3000)},
    "data6-iters4500": {"rounds": 6, **_iters(4500)},
    "data6-iters3000-r32": {
        "rounds": 6,
        "train": {"overrides": {"max_iters": 3000, "lora": {"r": 32, "alpha": 64}}},
    },
}
METRICS = ("recipient", "scene", "length_band", "emoji_band", "record_rules", "distinct_2")


def project_copy(dest: Path) -> Path:
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split("\n")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def rule_seconds(project: Path, rule: str) -> float | None:
    path = project / "benchmarks" / f"{rule}.tsv"
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    return float(rows[-1]["s"]) if rows else None


def run_variant(name: str, overlay: dict, workdir: Path) -> dict:
    project = workdir / name
    (project / "bench-overlay.yaml").write_text(yaml.safe_dump(overlay, allow_unicode=True), encoding="utf-8")
    cmd = [SNAKEMAKE, "results/eval/metrics.json", "--cores", "2", "--configfile", "bench-overlay.yaml"]
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        # the copy's own package, not the checkout's editable install (which may be edited meanwhile)
        "PYTHONPATH": str(project),
    }
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=project, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"{name}: snakemake exited {proc.returncode}")
    metrics = json.loads((project / "results/eval/metrics.json").read_text(encoding="utf-8"))
    records = len(json.loads((project / "results/data/train.json").read_text(encoding="utf-8")))
    groups = metrics["groups"]["held-out"]
    return {
        "name": name,
        "records": records,
        "wall": wall,
        "train": rule_seconds(project, "train"),
        "evaluate": rule_seconds(project, "evaluate"),
        "metrics": {m: groups[m] for m in METRICS if m in groups},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=list(VARIANTS), help="run only these variants")
    ap.add_argument("--keep", type=Path, help="run in this folder and keep it (default: a temporary one)")
    args = ap.parse_args()
    names = args.only or list(VARIANTS)
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="zhufu-rs-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"load average at start: {os.getloadavg()[0]:.2f}; copies under {workdir}", flush=True)
    results = []
    for name in names:  # every copy first: the checkout may change while the variants run
        project_copy(workdir / name)
    try:
        for name in names:
            r = run_variant(name, VARIANTS[name], workdir)
            results.append(r)
            print(json.dumps(r, ensure_ascii=False), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    first = results[0]["wall"]
    head = ["variant", "records", *[f"tuned {m}" for m in METRICS], "run s", "train s", "eval s", "run ×"]
    print("\n| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in results:
        cells = []
        for m in METRICS:
            cell = r["metrics"].get(m)
            tuned = (cell or {}).get("tuned")
            cells.append(
                "–" if not tuned else f"{tuned['value']:.2f} [{tuned['ci'][0]:.2f}, {tuned['ci'][1]:.2f}]"
            )
        row = [r["name"], str(r["records"]), *cells, f"{r['wall']:.0f}", f"{r['train'] or 0:.0f}"]
        row += [f"{r['evaluate'] or 0:.0f}", f"{r['wall'] / first:.2f}"]
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
