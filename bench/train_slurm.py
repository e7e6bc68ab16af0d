"""Training in a SLURM job against the same training run locally, side by side (one run, same data).

    .venv/bin/python bench/train_slurm.py PROJECT [--iters 40] [--partition gpu] [--account zhufu]

PROJECT is a project directory whose `results/train/xtuner_config.py` is rendered (e.g. after
`snakemake --cores 2 results/train/xtuner_config.py`). The same config, cut to --iters iterations, trains
twice at the same time: once as `srun … zhufu train` (a SLURM job step, as the `train` rule runs in a job)
and once as a plain local process, with the same thread count. Printed: each run's wall time and mmengine's
mean `time` and `data_time` per iteration, and the ratio job / local. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
ITER = re.compile(r"Iter\(train\) \[\s*(\d+)/\d+\].*?\btime: ([\d.]+)\s+data_time: ([\d.]+)")


def parse(work_dir: Path) -> tuple[list[float], list[float]]:
    times, data = [], []
    for log in work_dir.rglob("*.log"):
        for m in ITER.finditer(log.read_text(errors="replace")):
            times.append(float(m.group(2)))
            data.append(float(m.group(3)))
    return times, data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("project", type=Path)
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--partition", default="gpu")
    ap.add_argument("--account", default="zhufu")
    args = ap.parse_args()
    project = args.project.resolve()
    config = project / "results/train/xtuner_config.py"
    bench_config = project / "results/train/bench_config.py"
    text = re.sub(r"^max_iters = .*$", f"max_iters = {args.iters}", config.read_text(), flags=re.M)
    bench_config.write_text(re.sub(r"^save_steps = .*$", f"save_steps = {args.iters}", text, flags=re.M))
    runs = {}
    for name in ("job", "local"):
        work_dir = project / f"results/train/bench_{name}"
        shutil.rmtree(work_dir, ignore_errors=True)
        cmd = [str(BIN / "zhufu"), "train", str(bench_config), "--work-dir", str(work_dir), "--no-resume"]
        cmd += ["--threads", str(args.threads)]
        if name == "job":
            srun = ["srun", "-A", args.account, "-p", args.partition, "--gpus=1", "-c", str(args.threads)]
            cmd = [*srun, "--mem=4000", "-t", "30", *cmd]
        log = open(project / f"results/train/bench_{name}.out", "w")  # noqa: SIM115
        env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
        runs[name] = (
            subprocess.Popen(cmd, cwd=project, stdout=log, stderr=subprocess.STDOUT, env=env),
            work_dir,
        )
        runs[name] += (time.monotonic(),)
    walls = {}
    for name, (proc, _, started) in runs.items():
        proc.wait()
        walls[name] = time.monotonic() - started
    stats = {}
    for name, (proc, work_dir, _) in runs.items():
        times, data = parse(work_dir)
        stats[name] = (
            statistics.mean(times) if times else float("nan"),
            statistics.mean(data) if data else float("nan"),
        )
        print(
            f"{name:>5}: rc {proc.returncode}, wall {walls[name]:.0f} s, {len(times)} logged intervals, "
            f"mean time {stats[name][0]:.3f} s/iter, data_time {stats[name][1]:.3f} s/iter"
        )
    print(
        f"job / local: time per iteration {stats['job'][0] / stats['local'][0]:.2f}, "
        f"wall {walls['job'] / walls['local']:.2f}"
    )


if __name__ == "__main__":
    main()
