"""Torch threads beside other work: the tiny default's training iterations with 1 and 2 threads, alone and
beside one busy process (as under `make test`, where another pytest-xdist worker computes on the same cores,
or on a SLURM node shared with another job).

It runs the embedded default to its rendered XTuner config and format check once in a copy of the project, then trains 40
iterations four times (`snakemake --cores N --forcerun train --until train`, a fresh work_dir each time,
N = 1 or 2 threads, Snakemake sets OMP_NUM_THREADS to the job's threads), and prints each variant's median
seconds per iteration (XTuner's own `time:` column) and wall time, and the ratio to 1 thread alone.

    .venv/bin/python bench/threads.py
    .venv/bin/python bench/threads.py --iters 100 --keep /tmp/threads
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from recipient_scene import project_copy  # bench/ is the script's own folder, on sys.path

SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
BUSY = [sys.executable, "-c", "while True: pass"]
# what train needs, made once before the variants: the rendered config and the format check
SETUP = ("results/train/xtuner_config.py", "results/data/format_check.json")


def snakemake(project: Path, *args: str) -> None:
    result = subprocess.run([SNAKEMAKE, *args], cwd=project, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"snakemake {' '.join(args)} failed:\n{result.stderr[-4000:]}")


def train(project: Path, cores: int, busy: bool) -> tuple[float, float]:
    """(median seconds per iteration, wall seconds) of one training run."""
    shutil.rmtree(project / "results/train/work_dir", ignore_errors=True)
    other = subprocess.Popen(BUSY) if busy else None
    try:
        start = time.monotonic()
        snakemake(
            project,
            "--cores",
            str(cores),
            "--configfile",
            "short.yaml",
            "--forcerun",
            "train",
            "--until",
            "train",
        )
        wall = time.monotonic() - start
    finally:
        if other:
            other.kill()
            other.wait()
    log = (project / "logs/train.log").read_text(errors="replace")
    per_iter = [float(t) for t in re.findall(r"Iter\(train\) \[\s*\d+/\d+\].*?\btime: ([\d.]+)", log)]
    if not per_iter:
        sys.exit(f"no iteration times in {project / 'logs/train.log'}")
    return statistics.median(per_iter), wall


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--iters", type=int, default=40, help="training iterations per variant (default 40)")
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it")
    args = parser.parse_args()
    where = args.keep or Path(tempfile.mkdtemp(prefix="zhufu-threads-"))
    project = project_copy(where / "project")
    short = {"train": {"overrides": {"max_iters": args.iters, "log_interval": 5}}}
    (project / "short.yaml").write_text(yaml.safe_dump(short))
    snakemake(project, *SETUP, "--cores", "2", "--configfile", "short.yaml")
    rows = []
    for cores, busy in [(1, False), (2, False), (1, True), (2, True)]:
        per_iter, wall = train(project, cores, busy)
        rows.append(
            (
                f"{cores} thread{'s' if cores > 1 else ''}{' beside a busy process' if busy else ', alone'}",
                per_iter,
                wall,
            )
        )
    base = rows[0][1]
    print(f"{'variant':<38} {'s/iter':>8} {'wall s':>8} {'× 1 alone':>10}")
    for name, per_iter, wall in rows:
        print(f"{name:<38} {per_iter:8.4f} {wall:8.1f} {per_iter / base:10.2f}")
    if not args.keep:
        shutil.rmtree(where)


if __name__ == "__main__":
    main()
