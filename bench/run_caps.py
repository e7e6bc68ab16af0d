"""A whole workflow run's rate cap and budget, measured at the server (real 60-second windows).

    .venv/bin/python bench/run_caps.py                 # rpm 20 over 72 cells in 6 parallel generate jobs
    .venv/bin/python bench/run_caps.py --rpm 30 --budget 5

`snakemake shards` runs in a copy of the project against tests/faultserver.py (in this process, 50 ms
latency), with one generate job per style × round all at once. The server records the time of every
request; the figures are the highest count in any 60 s window of the server's clock against the cap, and
the money paid (from the answers' own token counts) against the budget. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from faultserver import FaultServer  # noqa: E402

KEY_ENV = "ZHUFU_BENCH_KEY"
KEY = "sk-bench-0000"


def max_in_window(times: list[float], window: float) -> int:
    times = sorted(times)
    return max((sum(1 for u in times[i:] if u - t <= window) for i, t in enumerate(times)), default=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rpm", type=float, default=20)
    ap.add_argument("--budget", type=float, default=None, help="money cap (price: 2000 per 1M tokens)")
    ap.add_argument("--recipients", type=int, default=6)
    ap.add_argument("--scenes", type=int, default=2)
    args = ap.parse_args()
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    with tempfile.TemporaryDirectory() as tmp, FaultServer(latency=0.05, api_key=KEY) as server:
        project = Path(tmp) / "project"
        for rel in files:
            (project / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, project / rel)
        base = yaml.safe_load((ROOT / "config.yaml").read_text(encoding="utf-8"))
        overlay = {
            "rounds": 2,
            "grid": {
                "recipients": base["grid"]["recipients"][: args.recipients],
                "scenes": base["grid"]["scenes"][: args.scenes],
                "suitability": None,
            },
            "provider": {
                "kind": "openai",
                "model": "fault-model",
                "base_url": server.url,
                "api_key_env": KEY_ENV,
                "concurrency": 8,
                "max_tokens": 64,
                "rpm": args.rpm,
                "budget": args.budget,
                "price": {"input_per_1m": 2000, "output_per_1m": 2000},
            },
        }
        (project / "run.yaml").write_text(yaml.safe_dump(overlay, allow_unicode=True), encoding="utf-8")
        cells = args.recipients * args.scenes * len(base["styles"]) * 2
        started = time.monotonic()
        result = subprocess.run(
            [str(Path(sys.executable).parent / "snakemake"), "--workflow-profile", "none", "--cores", "6"]
            + ["--keep-going", "shards", "--configfile", "run.yaml"],
            cwd=project,
            env={**os.environ, KEY_ENV: KEY},
            capture_output=True,
            text=True,
        )
        wall = time.monotonic() - started
        times = list(server.request_times)
        rows = sqlite3.connect(project / ".zhufu-cache/llm.sqlite").execute(
            "SELECT prompt_tokens, completion_tokens FROM answers"
        )
        paid = sum((p + c) * 2000 / 1e6 for p, c in rows)
    highest = max_in_window(times, 60.0)
    print(
        f"snakemake shards: rc {result.returncode}, {wall:.0f} s, {cells} cells in 6 parallel generate jobs"
    )
    print(
        f"requests at the server: {len(times)}, over {max(times) - min(times):.0f} s"
        if times
        else "no requests"
    )
    print(f"highest count in any 60 s window: {highest}; cap {args.rpm:g}; ratio {highest / args.rpm:.2f}")
    if args.budget is not None:
        print(f"paid {paid:.3f} of budget {args.budget:g}: ratio {paid / args.budget:.2f}")


if __name__ == "__main__":
    main()
