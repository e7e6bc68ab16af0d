"""Planning time at scale: `snakemake -n` on a 50-round × 9-style grid against a bare Snakefile with the
same number of jobs, side by side in one run.

    .venv/bin/python bench/dag.py                 # 50 rounds × 9 styles, 3 repeats each, alternating
    .venv/bin/python bench/dag.py --rounds 20 --repeats 5

The Zhufu side is a copy of the project (its tracked files, no results) with a config overlay that has 9
styles and 50 rounds: 450 generate jobs and the stages after them. The bare side is a Snakefile whose rules
only `touch` their outputs, shaped the same (one rule expanded over style × round, then a chain of single
jobs) and planned by the same snakemake with the same flags. Both plan everything from nothing. The figures
are the ratios of the medians of wall time and of CPU time (user + system of the snakemake process, which a
busy shared machine disturbs less); nothing is asserted (issue 13's target: within 1.5×).
"""

from __future__ import annotations

import argparse
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
FLAGS = ["-n", "--cores", "2", "--quiet", "rules"]

BARE = """
STYLES = [f"s{{i}}" for i in range({styles})]
ROUNDS = list(range({rounds}))
CHAIN = {chain}


rule all:
    input: f"out/{{CHAIN[-1]}}.txt"


rule gen:
    output: "raw/{{style}}/round_{{round}}.json"
    shell: "touch {{output}}"


rule step0:
    input: expand("raw/{{style}}/round_{{round}}.json", style=STYLES, round=ROUNDS)
    output: "out/step0.txt"
    shell: "touch {{output}}"

for i in range(1, len(CHAIN)):
    rule:
        name: CHAIN[i]
        input: f"out/{{CHAIN[i - 1]}}.txt"
        output: f"out/{{CHAIN[i]}}.txt"
        shell: "touch {{output}}"
"""


def tracked_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True
    )
    return [f for f in out.stdout.splitlines() if (ROOT / f).is_file()]


def zhufu_project(dest: Path, styles: int, rounds: int) -> Path:
    for rel in tracked_files():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dest / rel)
    base = yaml.safe_load((ROOT / "config.yaml").read_text(encoding="utf-8"))
    # Snakemake merges an overlay's mappings into config.yaml's, so the shipped styles stay and more are added
    names = list(base["styles"])
    many = dict(base["styles"])
    for i in range(len(names), styles):
        many[f"{names[i % len(names)]}{i}"] = {**base["styles"][names[i % len(names)]], "trigger": f"风格{i}"}
    overlay = {"rounds": rounds, "styles": many}
    (dest / "bench.yaml").write_text(yaml.safe_dump(overlay, allow_unicode=True), encoding="utf-8")
    return dest


def jobs_planned(out: str) -> int:
    m = re.search(r"(?m)^total\s+(\d+)\s*$", out)
    if not m:
        raise SystemExit(f"no job count in the plan:\n{out[-2000:]}")
    return int(m.group(1))


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def plan(cwd: Path, *extra: str) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (user + system, less sensitive to a busy machine) and jobs planned."""
    t, cpu = time.perf_counter(), _children_cpu()
    result = subprocess.run([SNAKEMAKE, *FLAGS, *extra], cwd=cwd, capture_output=True, text=True)
    seconds, cpu = time.perf_counter() - t, _children_cpu() - cpu
    if result.returncode != 0:
        raise SystemExit(f"snakemake -n failed in {cwd}:\n{result.stderr[-3000:]}")
    return seconds, cpu, jobs_planned(result.stdout + result.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--styles", type=int, default=9)
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="zhufu-dag-") as tmp:
        zhufu = zhufu_project(Path(tmp) / "zhufu", args.styles, args.rounds)
        *_, n_zhufu = plan(zhufu, "--configfile", "bench.yaml")  # warm-up; also the job count to match
        chain = n_zhufu - args.styles * args.rounds - 1  # the bare one: gen × grid, a chain, and `all`
        bare = Path(tmp) / "bare"
        bare.mkdir()
        names = [f"step{i}" for i in range(chain)]
        (bare / "Snakefile").write_text(
            BARE.format(styles=args.styles, rounds=args.rounds, chain=names), encoding="utf-8"
        )
        *_, n_bare = plan(bare)
        print(f"jobs planned: zhufu {n_zhufu}, bare {n_bare} ({args.styles} styles × {args.rounds} rounds)")
        wall: dict[str, list[float]] = {"zhufu": [], "bare": []}
        cpu: dict[str, list[float]] = {"zhufu": [], "bare": []}
        for _ in range(args.repeats):  # alternating, so a busy moment of the machine hits both
            for name, cwd, extra in (("zhufu", zhufu, ("--configfile", "bench.yaml")), ("bare", bare, ())):
                w, c, _ = plan(cwd, *extra)
                wall[name].append(w)
                cpu[name].append(c)
        for name in wall:
            print(
                f"{name}: snakemake -n median {statistics.median(wall[name]):.2f} s wall "
                f"({', '.join(f'{t:.2f}' for t in wall[name])}), {statistics.median(cpu[name]):.2f} s CPU"
            )
        ratio = statistics.median(wall["zhufu"]) / statistics.median(wall["bare"])
        cpu_ratio = statistics.median(cpu["zhufu"]) / statistics.median(cpu["bare"])
        print(f"ratio zhufu / bare: {ratio:.2f}x wall, {cpu_ratio:.2f}x CPU (target: within 1.5x)")


if __name__ == "__main__":
    main()
