"""The whole clean stage as a user runs it: `zhufu clean merged.json -o train.json --report r.json --card c.md`
on near-alike records at 20k, 200k and 1M rows, each in its own process, with wall time, rows/s, peak
memory and the growth between sizes.

    .venv/bin/python bench/clean_stage.py --merged results/data/merged.json
    .venv/bin/python bench/clean_stage.py --merged results/data/merged.json --compare main --sizes 20000 200000
    .venv/bin/python bench/clean_stage.py --merged results/data/merged.json --compare main --verdicts 20000

The records are made from a finished run's merged.json (the embedded default's, `snakemake --cores 2
results/data/merged.json`): record k is merged record k mod N with 1–3 random Han characters inserted into
its answer and 1–3 appended (one seeded RNG), a new id and its round set to k div N. So every answer comes
back in many near-alike forms, as a teacher's answers over many rounds or a large dialogue import do.

`--compare REV` also runs REV's code (its files from `git archive`, under the work directory, imported through PYTHONPATH
by the same interpreter) on the same files, one size after the other, and prints both side by side.
`--verdicts N` compares the two codes' outputs on the N-record set: train.json byte for byte, and the
report's dropped ids with their rules (and which duplicates each near-duplicate names).

Peak memory is the child's ru_maxrss (resource.getrusage(RUSAGE_CHILDREN) after it ends; the record rules'
workers are children of the child, and their peak counts when it is larger). Wall time varies with other
work on the machine: the load average is printed, CPU seconds (the child's and its workers') beside wall time,
and the old and new code run one after the other.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HAN = [chr(0x4E00 + k) for k in range(3000)]


def near_alike(merged: list[dict], n: int, seed: int = 24) -> list[dict]:
    """n records from merged's: each answer with 1–3 random Han characters inserted and 1–3 appended."""
    rng = random.Random(seed)
    out = []
    for k in range(n):
        base = merged[k % len(merged)]
        turns = []
        for t in base["conversation"]:
            chars = list(t["output"])
            for _ in range(rng.randint(1, 3)):
                chars.insert(rng.randint(0, len(chars)), rng.choice(HAN))
            chars += rng.choices(HAN, k=rng.randint(1, 3))
            turns.append({**t, "output": "".join(chars)})
        meta = {**base["meta"], "round": k // len(merged)}
        out.append({"id": f"{base['id']}-{k:07d}", "conversation": turns, "meta": meta})
    return out


def make_input(merged_path: Path, n: int, where: Path) -> Path:
    path = where / f"merged_{n}.json"
    if not path.exists():
        merged = json.loads(merged_path.read_text(encoding="utf-8"))
        path.write_text(json.dumps(near_alike(merged, n), ensure_ascii=False, indent=1), encoding="utf-8")
    return path


def bench_config(code: Path, out: Path) -> Path:
    """The code's config, with data.mix off where it has one: the shipped general set (290 rows) cannot make
    up a share of 200k records, and the bench measures the cleaning of the records it is given."""
    if "\n  mix:" not in (code / "config.yaml").read_text(encoding="utf-8"):
        return code / "config.yaml"
    overlay = out / "mix-off.yaml"  # merged over the code's own config.yaml by load_config
    overlay.write_text("data:\n  mix: []\n", encoding="utf-8")
    return overlay


def run_clean(code: Path, merged: Path, out: Path) -> dict:
    """`zhufu clean` with `code` first on the import path, in a child process: wall s and peak MiB."""
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-c", "import sys; from zhufu.cli import main; sys.exit(main())", "clean", str(merged),
           "-o", str(out / "train.json"), "--report", str(out / "report.json"), "--card", str(out / "card.md"),
           "--config", str(bench_config(code, out)), "--decisions", str(out / "no-decisions.jsonl")]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(code)}
    # a fresh grandchild per run, so RUSAGE_CHILDREN is that run's alone
    probe = (
        "import resource, subprocess, sys, time, json\n"
        "t = time.perf_counter()\n"
        "r = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "dt = time.perf_counter() - t\n"
        "u = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
        "print(json.dumps({'rc': r.returncode, 'wall_s': dt, 'cpu_s': u.ru_utime + u.ru_stime,\n"
        "                  'peak_mib': u.ru_maxrss / 1024, 'stdout': r.stdout, 'stderr': r.stderr[-2000:]}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, *cmd], capture_output=True, text=True, env=env, cwd=code
    )
    result = json.loads(done.stdout)
    if result["rc"] != 0:
        raise SystemExit(f"zhufu clean failed with {code}:\n{result['stderr']}")
    return result


def checkout(rev: str, where: Path) -> Path:
    """REV's tracked files (git archive), in a directory of their own: nothing is added to the repository."""
    path = where / f"rev-{rev.replace('/', '_')}"
    if not path.exists():
        path.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(path)], input=archive.stdout, check=True)
    return path


def verdict_diff(old: Path, new: Path) -> list[str]:
    lines = []
    same_train = (old / "train.json").read_bytes() == (new / "train.json").read_bytes()
    lines.append(f"train.json: {'identical' if same_train else 'DIFFERENT'}")
    a, b = (json.loads((d / "report.json").read_text(encoding="utf-8")) for d in (old, new))
    da = {d["id"]: d["rule"] for d in a["dropped"]}
    db = {d["id"]: d["rule"] for d in b["dropped"]}
    only_old = sorted(set(da) - set(db))
    only_new = sorted(set(db) - set(da))
    other_rule = sorted(i for i in set(da) & set(db) if da[i] != db[i])
    lines.append(f"dropped: {len(da)} old, {len(db)} new; only old {len(only_old)}, only new {len(only_new)}, "
                 f"other rule {len(other_rule)}")  # fmt: skip
    for i in (only_old + only_new + other_rule)[:20]:
        lines.append(f"  {i}: old {da.get(i)}, new {db.get(i)}")
    dup_a = {d["id"]: d.get("duplicate_of") for d in a["dropped"] if "duplicate_of" in d}
    dup_b = {d["id"]: d.get("duplicate_of") for d in b["dropped"] if "duplicate_of" in d}
    other_twin = sum(1 for i in set(dup_a) & set(dup_b) if dup_a[i] != dup_b[i])
    lines.append(f"duplicates naming another kept record than the old code's: {other_twin} of {len(dup_b)}")
    same_counts = a["rules"] == b["rules"] and a["modified"] == b["modified"]
    lines.append(f"per-rule counts and modified records: {'identical' if same_counts else 'DIFFERENT'}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--merged", type=Path, required=True, help="a finished run's merged.json")
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 200_000, 1_000_000])
    parser.add_argument("--compare", metavar="REV", help="also run this git revision's code (e.g. main)")
    parser.add_argument("--old-code", type=Path, help="or a checkout of the old code to compare with")
    parser.add_argument("--verdicts", type=int, metavar="N", help="diff the two codes' outputs at N records")
    parser.add_argument("--work", type=Path, help="where inputs and outputs go (default: a temporary dir)")
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="zhufu-clean-stage-"))
    work.mkdir(parents=True, exist_ok=True)
    codes = {"new": ROOT}
    if args.compare:
        codes = {args.compare: checkout(args.compare, work), **codes}
    elif args.old_code:
        codes = {"old": args.old_code.resolve(), **codes}
    print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; work dir {work}")
    sizes = sorted(set(args.sizes) | ({args.verdicts} if args.verdicts else set()))
    table: dict[str, dict[int, dict]] = {name: {} for name in codes}
    for n in sizes:
        t = time.perf_counter()
        merged = make_input(args.merged, n, work)
        print(f"\n{n:,} records: {merged} ({merged.stat().st_size / 2**20:.0f} MiB, made in "
              f"{time.perf_counter() - t:.1f} s)")  # fmt: skip
        for name, code in codes.items():
            r = run_clean(code, merged, work / f"out-{name}-{n}")
            table[name][n] = r
            print(f"  {name:>8}: {r['wall_s']:7.1f} s wall, {r['cpu_s']:7.1f} CPU-s, {n / r['wall_s']:9,.0f} rows/s, "
                  f"peak {r['peak_mib'] / 1024:5.2f} GiB; {r['stdout'].strip()}")  # fmt: skip
    print(f"\n{'records':>10} " + " ".join(f"{name + ' s':>10} {'CPU-s':>7} {'rows/s':>9} {'GiB':>5} {'time ×':>7} {'CPU ×':>6}" for name in codes)
          + f" {'rows ×':>7}")  # fmt: skip
    for k, n in enumerate(sizes):
        cells = []
        for name in codes:
            r = table[name][n]
            prev = table[name][sizes[k - 1]] if k else None
            growth = (
                f"{r['wall_s'] / prev['wall_s']:7.1f} {r['cpu_s'] / prev['cpu_s']:6.1f}"
                if prev
                else f"{'':>14}"
            )
            cells.append(f"{r['wall_s']:>10.1f} {r['cpu_s']:>7.1f} {n / r['wall_s']:>9,.0f} {r['peak_mib'] / 1024:>5.2f} "
                         f"{growth}")  # fmt: skip
        print(f"{n:>10,} " + " ".join(cells) + (f" {n / sizes[k - 1]:>7.0f}" if k else f" {'':>7}"))
    if len(codes) == 2:
        old, new = codes
        print("\nold / new wall time: " + ", ".join(
            f"{n:,}: {table[old][n]['wall_s'] / table[new][n]['wall_s']:.1f}×" for n in sizes))  # fmt: skip
    if args.verdicts and len(codes) == 2:
        old, new = codes
        print(f"\nverdicts at {args.verdicts:,} records, {old} vs {new}:")
        for line in verdict_diff(work / f"out-{old}-{args.verdicts}", work / f"out-{new}-{args.verdicts}"):
            print("  " + line)
    print("\ntargets (issue 24): 200k in ≤ 60 s on 2 cores, time(200k)/time(20k) ≤ 12, peak ≤ 4 GB at 1M, "
          "same verdicts as the old code at 20k")  # fmt: skip


if __name__ == "__main__":
    main()
