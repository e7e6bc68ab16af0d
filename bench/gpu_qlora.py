"""QLoRA on one real GPU: the internlm2-chat-7b-qlora profile on a random InternLM2 of the real 7B shape,
then the same profile through the whole workflow at tiny size, with 4-bit and AMP on.

The seed says "24 GB is enough" for QLoRA on internlm2-chat-7b. Part 1 builds an InternLM2 snapshot of
internlm2-chat-7b's shape with random weights (its config keys: 32 layers, hidden 4096, 32 heads / 8 KV
heads, intermediate 14336, vocabulary 92544; InternLM2's own modeling code, copied from the installed
xtuner, loaded with trust_remote_code), renders the profile unchanged except for the iteration count,
trains a few dozen iterations through Zhufu's launcher (real XTuner, nf4 double quantisation, LoRA r64,
fp16 AmpOptimWrapper, max_length 2048 packed, batch 1), prints tokens/s, the peak GPU memory and the first
and last loss, then converts the checkpoint (pth_to_hf) and merges it. Part 2 runs the workflow with the
same profile, unchanged, over the tiny InternLM2 (what tests/workflow/test_real_profiles.py runs on a CPU
with 4-bit and AMP swapped out): check_format → train → pth_to_hf → merge_model → evaluate.

    python bench/gpu_qlora.py [--iters 32] [--workdir /tmp/zhufu-gpu-bench] [--skip-tiny]

Weights are random, so part 1's loss means nothing; the speed and memory are those of the real shape.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

INTERNLM2_7B = dict(
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=92544,
    max_position_embeddings=32768,
    rope_theta=1000000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
)


def preflight() -> str:
    """Fail early, with the reason, when this machine can't run bitsandbytes' 4-bit kernels.

    The same facts as tools/check_stack.py --gpu (which bench/gpu_qlora.sh runs first): the native library
    for torch's CUDA, transformers' check of bitsandbytes, the imports, one nf4 forward."""
    import torch

    sys.path.insert(0, str(ROOT / "tools"))
    from check_stack import check_stack

    problems = check_stack(gpu=True)
    if problems:
        sys.exit("gpu_qlora: the GPU stack can't run QLoRA here:\n  " + "\n  ".join(problems))
    return torch.cuda.get_device_name(0)


def build_model(out: Path, data: Path) -> None:
    from zhufu.train.base_model import build_internlm2

    if (out / "config.json").is_file():
        return
    texts = [t for r in json.loads(data.read_text(encoding="utf-8")) for t in r["conversation"][0].values()]
    t0 = time.time()
    build_internlm2(texts, out, INTERNLM2_7B, device="cuda", torch_dtype="float16")
    print(f"built a random InternLM2 of the 7B shape in {time.time() - t0:.0f} s: {out}")


def write_data(path: Path, records: int) -> None:
    from zhufu.tianji import TIANJI_SYSTEM

    rng = random.Random(0)
    recipients = ["姐姐", "妹妹", "领导", "同事", "爷爷", "奶奶", "赵老师", "邻居赵大妈"]
    scenes = ["生日", "春节", "中秋节", "谈判顺利", "工作升职", "乔迁新居"]
    phrases = [
        "愿你所求皆如愿",
        "所行皆坦途",
        "岁岁常欢愉",
        "万事皆胜意",
        "前程似锦",
        "身体健康",
        "阖家幸福",
        "✨",
        "🌷",
    ]
    rows = []
    for _ in range(records):
        r, s = rng.choice(recipients), rng.choice(scenes)
        out = "，".join(rng.sample(phrases, 5)) * rng.randint(2, 6)
        rows.append(
            {"conversation": [{"system": TIANJI_SYSTEM, "input": f"祝{r}{s}，小红书风格", "output": out}]}
        )
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")


class GpuMemorySampler(threading.Thread):
    """Peak memory used on GPU 0 as nvidia-smi sees it (allocator cache and CUDA context included)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak_mib = 0
        self.stop = threading.Event()

    def run(self):
        while not self.stop.wait(0.5):
            try:
                out = subprocess.run(
                    ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                    capture_output=True,
                    text=True,
                    timeout=10,
                ).stdout
                self.peak_mib = max(self.peak_mib, int(out.strip().splitlines()[0]))
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--iters", type=int, default=32, help="training iterations (micro-batches of 2048 tokens)"
    )
    parser.add_argument("--workdir", default="/tmp/zhufu-gpu-bench")
    parser.add_argument("--profile", default="internlm2-chat-7b-qlora")
    parser.add_argument("--skip-tiny", action="store_true", help="skip part 2, the workflow at tiny size")
    args = parser.parse_args()

    from zhufu.errors import ModelError
    from zhufu.train.profiles import resolve_profile
    from zhufu.train.run import train
    from zhufu.train.xtuner_config import write_config

    gpu = preflight()
    wd = Path(args.workdir)
    wd.mkdir(parents=True, exist_ok=True)
    data = wd / "train.json"
    write_data(data, records=max(400, args.iters * 40))
    model = wd / "model-7b-random"
    build_model(model, data)
    profile = resolve_profile(args.profile)
    overrides = {
        "max_iters": args.iters,
        "save_steps": 10**6,
        "evaluation_freq": 10**6,
        "evaluation_max_new_tokens": 8,
        "log_interval": 1,
    }
    config = write_config(
        wd / "xtuner_config.py", profile=args.profile, overrides=overrides, model_path=model, data_path=data
    )
    log = wd / "train.log"
    log.unlink(missing_ok=True)
    sampler = GpuMemorySampler()
    sampler.start()
    t0 = time.time()
    try:  # train raises ModelError (with XTuner's exit code) when training fails
        train(config, wd / "work_dir", log_path=log, resume=False)
        rc = 0
    except ModelError as e:
        print(e)
        rc = 1
    wall = time.time() - t0
    sampler.stop.set()
    text = log.read_text(encoding="utf-8", errors="replace")
    if rc != 0:
        print(text[-6000:])
        print(f"gpu_qlora: training failed (exit {rc}); the log is {log}")
        return rc
    times = [float(t) for t in re.findall(r"Iter\(train\) \[\s*\d+/\d+\].*?\btime: ([\d.]+)", text)]
    memory = [int(m) for m in re.findall(r"Iter\(train\).*?memory: (\d+)", text)]
    if not times:
        print(f"gpu_qlora: no iteration was logged; see {log}")
        return 1
    steady = times[len(times) // 4 :]
    seconds = statistics.median(steady)
    tokens = profile["batch_size"] * profile["max_length"]  # packed to max_length
    print(f"device: {gpu}")
    print(
        f"profile: {args.profile} (nf4 + LoRA r{profile['lora']['r']}, {profile['max_length']} tokens per micro-batch)"
    )
    print(f"iterations: {len(times)}; median seconds per iteration (last 3/4): {seconds:.3f}")
    print(f"tokens/s: {tokens / seconds:.0f}")
    print(f"peak GPU memory, torch max allocated (mmengine): {max(memory) if memory else 'n/a'} MiB")
    print(f"peak GPU memory, nvidia-smi: {sampler.peak_mib} MiB  (the seed: '24 GB is enough' = 24576 MiB)")
    print(f"wall time of the training run (model load and data included): {wall:.0f} s")
    losses = [float(x) for x in re.findall(r"Iter\(train\).*?\bloss: ([\d.]+)", text)]
    if losses:
        print(f"loss: first logged {losses[0]:.4f}, last logged {losses[-1]:.4f} (random weights)")
    from zhufu.train.export import merge_model, pth_to_hf

    t0 = time.time()
    adapter = pth_to_hf(config, wd / "work_dir", wd / "adapter", log_path=wd / "pth_to_hf.log")
    print(f"pth_to_hf: {adapter} in {time.time() - t0:.0f} s")
    t0 = time.time()
    merged = merge_model(model, adapter, wd / "merged", log_path=wd / "merge.log")
    print(f"merge: {merged} in {time.time() - t0:.0f} s")
    return 0 if args.skip_tiny else tiny_chain(wd / "tiny", args.profile)


def tiny_chain(dest: Path, profile: str) -> int:
    """The workflow with `profile` as it is (4-bit, AMP) over the tiny InternLM2, in a copy of the project."""
    import shutil

    shutil.rmtree(dest, ignore_errors=True)
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for rel in files:
        if (ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    overlay = {
        "model": {"source": "tiny", "tiny": {"architecture": "internlm2"}},
        "train": {"profile": profile},
    }
    (dest / "overlay.yaml").write_text(json.dumps(overlay), encoding="utf-8")
    snakemake = str(Path(sys.executable).parent / "snakemake")
    t0 = time.time()
    r = subprocess.run([snakemake, "--cores", "8", "--configfile", "overlay.yaml"], cwd=dest)
    print(f"tiny chain ({profile}, 4-bit and AMP on): exit {r.returncode} in {time.time() - t0:.0f} s")
    for tsv in sorted((dest / "benchmarks").glob("*.tsv")):
        print(f"  {tsv.stem}: {tsv.read_text().splitlines()[-1].split()[0]} s")
    check = dest / "results/data/format_check.json"
    if check.is_file():
        print(f"  format check: {json.loads(check.read_text()).get('schedule')}")
    table = dest / "results/eval/table.md"
    if table.is_file():
        print(
            "  "
            + "\n  ".join(line for line in table.read_text().splitlines() if line.startswith("| held-out"))
        )
    return r.returncode


if __name__ == "__main__":
    sys.exit(main())
