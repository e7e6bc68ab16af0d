"""Generation throughput, rate-cap use, fault tolerance and memory, against a local endpoint.

    .venv/bin/python bench/generation.py              # serial seed-like loop vs Zhufu at 32 and 64, RPM cap
    .venv/bin/python bench/generation.py --faults     # 10,000 calls at 5% faults, kill -9 mid-run, rerun
    .venv/bin/python bench/generation.py --memory     # peak RSS along a 100k-call run (0 ms latency)

The endpoint is tests/faultserver.py in its own process (200 ms latency unless said otherwise). Each Zhufu
run uses a fresh cache, so every cell is a real call. Figures are printed; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
KEY_ENV = "ZHUFU_BENCH_KEY"


class Server:
    def __init__(self, latency: float, fault_rate: float = 0.0, slow_s: float = 3.0):
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "faultserver.py"), "--latency", str(latency),
             "--fault-rate", str(fault_rate), "--slow-s", str(slow_s)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.url = self.proc.stdout.readline().strip()
        self.base = self.url.removesuffix("/v1")

    def stats(self) -> dict:
        with urllib.request.urlopen(f"{self.base}/stats") as r:  # noqa: S310 (local)
            return json.loads(r.read())

    def control(self, **kw) -> None:
        req = urllib.request.Request(f"{self.base}/control", data=json.dumps(kw).encode(), method="POST")
        urllib.request.urlopen(req).read()  # noqa: S310 (local)

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(10)


def bench_config(url: str, n_cells: int, concurrency: int, **provider) -> dict:
    from zhufu.config import validate_config

    scenes = ["生日", "春节", "中秋节", "端午节", "元宵节", "乔迁新居", "工作升职", "康复", "发财", "重阳节"]
    recipients = [f"朋友{i}" for i in range(max(1, n_cells // len(scenes)))]
    config = {
        "seed": 1,
        "rounds": 1,
        "system_prompt": "你现在是一个送祝福大师，帮我针对不同人和事情、节日送对应的祝福",
        "grid": {"recipients": recipients, "scenes": scenes, "suitability": None},
        "prompt_template": "字数少于{max_chars}字。风格：{style_prompt}。对象：{recipient}；场景：{scene}。{injection}",
        "injections": [""],
        "styles": {"正常": {"prompt": "正常风格，礼貌得体", "max_chars": 30}},
        "provider": {
            "kind": "openai", "model": "bench", "base_url": url, "api_key_env": KEY_ENV, "max_tokens": 64,
            "timeout_s": 1.0, "concurrency": concurrency, "backoff_s": 0.05, "backoff_max_s": 1.0, **provider,
        },
    }  # fmt: skip
    return validate_config(config, "bench config")


def zhufu_run(config: dict, cache: Path, out: Path) -> tuple[int, float]:
    from zhufu.generate.run import generate_shards

    t = time.perf_counter()
    stats = generate_shards(config, [("正常", 0, out)], cache, progress=False)
    return stats[0].requested, time.perf_counter() - t


def serial_seed_loop(url: str, n: int) -> float:
    """The seed's loop: a sync client, one call at a time (but with a temperature that is really sent)."""
    from openai import OpenAI

    client = OpenAI(api_key="bench", base_url=url, max_retries=0)
    t = time.perf_counter()
    for i in range(n):
        client.chat.completions.create(
            model="bench", messages=[{"role": "user", "content": f"祝朋友{i}生日快乐"}], temperature=1
        )
    return n / (time.perf_counter() - t)


def throughput(tmp: Path) -> None:
    server = Server(latency=0.2)
    try:
        serial = serial_seed_loop(server.url, 30)
        print(f"endpoint latency 200 ms; serial seed-like loop: {serial:.2f} calls/s (30 calls)")
        for conc, n in ((32, 1600), (64, 3200)):
            config = bench_config(server.url, n, conc)
            calls, secs = zhufu_run(config, tmp / f"c{conc}.sqlite", tmp / f"s{conc}.json")
            rate = calls / secs
            print(f"zhufu concurrency {conc}: {calls} calls in {secs:.1f} s = {rate:.1f} calls/s, "
                  f"{rate / serial:.1f}x the serial loop (ideal {conc / 0.2 / serial:.1f}x)")  # fmt: skip
        rpm = 3000
        config = bench_config(server.url, 1000, 64, rpm=rpm)
        calls, secs = zhufu_run(config, tmp / "rpm.sqlite", tmp / "rpm.json")
        achieved = calls / secs * 60
        print(f"RPM cap {rpm} at concurrency 64 (uncapped would be ~19200): {calls} calls in {secs:.1f} s = "
              f"{achieved:.0f} RPM, {achieved / rpm:.0%} of the cap")  # fmt: skip
    finally:
        server.close()


def cli(config_path: Path, cache: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "zhufu", "generate", "--config", str(config_path), "--cache", str(cache),
            "-o", str(out), "--no-progress"]  # fmt: skip


def faults(tmp: Path, n: int = 10_000, hold: bool = True) -> None:
    import yaml

    server = Server(latency=0.02, fault_rate=0.05, slow_s=2.0)
    env = {**os.environ, KEY_ENV: "bench"}
    try:
        config = bench_config(server.url, n, 64, max_attempts=8)
        cells = len(config["grid"]["recipients"]) * len(config["grid"]["scenes"])
        cfg = tmp / "faults.yaml"
        cfg.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
        cache, out = tmp / "faults.sqlite", tmp / "raw"
        t = time.perf_counter()
        proc = subprocess.Popen(cli(cfg, cache, out), cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
        while server.stats()["successes"] < cells // 2:
            time.sleep(0.05)
        # Kill while calls are in flight: hold new answers, let the client store what it was sent, kill -9.
        # Without the hold (--hard-kill) answers already on the wire when the kill lands are lost and paid again.
        if hold:
            server.control(hold=True)
            time.sleep(1.0)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        time.sleep(0.5)
        before = server.stats()
        shard = out / "正常" / "round_0.json"
        print(f"{cells} cells at 5% faults ({', '.join(sorted(before['faults']))}); kill -9 after "
              f"{before['successes']} answers, {before['requests'] - before['successes']} other requests; "
              f"shard after the kill: {'EXISTS' if shard.exists() else 'none'}")  # fmt: skip
        server.control(hold=False)
        rerun = subprocess.run(cli(cfg, cache, out), cwd=ROOT, env=env, capture_output=True, text=True)
        secs = time.perf_counter() - t
        after = server.stats()
        records = json.loads(shard.read_text(encoding="utf-8"))
        ids = [r["id"] for r in records]
        with sqlite3.connect(cache) as db:
            rows, empty = db.execute("SELECT COUNT(*), SUM(TRIM(answer) = '') FROM answers").fetchone()
        print(f"rerun exit {rerun.returncode}; {len(records)}/{cells} cells in the shard "
              f"({len(records) / cells:.0%}), {len(ids) - len(set(ids))} duplicate ids; "
              f"cache rows {rows}, empty answers cached {empty or 0}")  # fmt: skip
        print(f"server: {after['requests']} requests, {after['successes']} successful answers for {cells} cells "
              f"= {after['successes'] - cells} paid twice (repeated successes {after['repeated_successes']}); "
              f"faults served {sum(v for k, v in after['faults'].items() if k != 'abandoned')} "
              f"{after['faults']}; {secs:.0f} s in all")  # fmt: skip
        print(
            "summary lines of the rerun:",
            *[ln for ln in rerun.stderr.splitlines() if "cells," in ln],
            sep="\n  ",
        )
    finally:
        server.close()


MEM_CHILD = """
import json, resource, sys, threading, time
sys.path.insert(0, {root!r}); sys.path.insert(0, {root!r} + "/bench")
from generation import bench_config, zhufu_run
samples = []
def sample():
    t0 = time.monotonic()
    while True:
        with open("/proc/self/status") as fh:
            rss = next(int(x.split()[1]) for x in fh if x.startswith("VmRSS"))
        samples.append((round(time.monotonic() - t0), round(rss / 1024)))
        time.sleep({every})
threading.Thread(target=sample, daemon=True).start()
config = bench_config({url!r}, {n}, 64)
calls, secs = zhufu_run(config, {cache!r}, {out!r})
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({{"calls": calls, "secs": secs, "maxrss_mb": peak, "samples": samples}}))
"""


def memory(tmp: Path, sizes: tuple[int, ...] = (100_000,)) -> None:
    """Peak RSS of a run, and RSS sampled along it: flat means it does not grow with the calls made."""
    server = Server(latency=0.0)
    env = {**os.environ, KEY_ENV: "bench"}
    try:
        for n in sizes:
            code = MEM_CHILD.format(root=str(ROOT), url=server.url, n=n, cache=str(tmp / f"m{n}.sqlite"),
                                    out=str(tmp / f"m{n}.json"), every=max(1, n // 2000))  # fmt: skip
            res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
            if res.returncode:
                print(res.stderr[-2000:])
                continue
            r = json.loads(res.stdout.strip().splitlines()[-1])
            samples = r["samples"]
            picks = [samples[int(i * (len(samples) - 1) / 10)] for i in range(11)]
            print(f"{r['calls']} calls at 0 ms latency, concurrency 64: {r['secs']:.0f} s "
                  f"({r['calls'] / r['secs']:.0f} calls/s), peak RSS {r['maxrss_mb']:.0f} MB; "
                  f"RSS along the run (s: MB): " + ", ".join(f"{t}: {m}" for t, m in picks))  # fmt: skip
    finally:
        server.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--faults", action="store_true", help="10,000 calls at 5%% faults with a kill -9 and a rerun"
    )
    ap.add_argument("--hard-kill", action="store_true", help="with --faults: kill -9 at full speed, no hold")
    ap.add_argument("--memory", action="store_true", help="peak RSS along a 100k-call run")
    args = ap.parse_args()
    os.environ.setdefault(KEY_ENV, "bench")
    with tempfile.TemporaryDirectory(prefix="zhufu-bench-") as d:
        tmp = Path(d)
        if args.faults:
            faults(tmp, hold=not args.hard_kill)
        elif args.memory:
            memory(tmp)
        else:
            throughput(tmp)


if __name__ == "__main__":
    main()
