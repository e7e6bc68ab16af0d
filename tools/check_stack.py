"""Do the venv's GPU-stack parts match? Prints one line per fact and exits 1 naming each mismatch.

    python tools/check_stack.py [--gpu]

The facts (each was a real failure with some pairing of these packages):
- bitsandbytes ships a native library for the installed torch's CUDA version (bitsandbytes 0.45.0 has none
  for CUDA 12.8 or 13.0, and then falls back to its CPU library, so 4-bit loading fails on a GPU);
- transformers' bitsandbytes check accepts that bitsandbytes (4.48.0 crashes with AttributeError on
  bitsandbytes >= 0.48: `'frozenset' object has no attribute 'discard'`);
- peft's LoRA and XTuner's dataset and model packages import beside it (bitsandbytes 0.45.0 imports
  `triton.ops`, which triton 3.x lacks).
With --gpu it also runs one nf4 Linear4bit forward on the first CUDA device (bench/gpu_qlora.sh's preflight).
Used by tools/bootstrap.sh, tests/core/test_envs.py and bench/gpu_qlora.sh, so all three state the same facts.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import sys
import warnings
from pathlib import Path


def bnb_native_library(cuda: str | None) -> tuple[str, bool]:
    """The libbitsandbytes file that torch's CUDA needs, and whether bitsandbytes ships it."""
    spec = importlib.util.find_spec("bitsandbytes")
    if spec is None or spec.origin is None:
        return "bitsandbytes (not installed)", False
    folder = Path(spec.origin).parent
    name = f"libbitsandbytes_cuda{cuda.replace('.', '')}.so" if cuda else "libbitsandbytes_cpu.so"
    return name, (folder / name).is_file()


def check_stack(gpu: bool = False, out=print) -> list[str]:
    """Check the facts above; print each, return the mismatches (empty when the stack holds)."""
    warnings.filterwarnings("ignore")
    import torch

    problems: list[str] = []
    versions = {p: importlib.metadata.version(p) for p in ("torch", "bitsandbytes", "transformers", "peft")}
    out("stack: " + ", ".join(f"{p} {v}" for p, v in versions.items()) + f"; torch CUDA {torch.version.cuda}")

    lib, present = bnb_native_library(torch.version.cuda)
    out(f"bitsandbytes native library for torch's CUDA: {lib}: {'present' if present else 'MISSING'}")
    if not present:
        problems.append(
            f"bitsandbytes {versions['bitsandbytes']} ships no {lib} for torch {versions['torch']}"
        )

    from transformers.integrations import validate_bnb_backend_availability

    try:
        verdict = validate_bnb_backend_availability(raise_exception=False)
        out(f"transformers' bitsandbytes check: runs (backend usable here: {bool(verdict)})")
    except (AttributeError, TypeError) as e:
        out(f"transformers' bitsandbytes check: CRASHES ({type(e).__name__}: {e})")
        problems.append(f"transformers {versions['transformers']} cannot check bitsandbytes: {e}")

    for module in ("peft.tuners.lora", "xtuner.dataset", "xtuner.model"):
        try:
            importlib.import_module(module)
            out(f"import {module}: ok")
        except Exception as e:  # any import failure is the finding
            out(f"import {module}: FAILS ({type(e).__name__}: {e})")
            problems.append(f"{module} does not import: {type(e).__name__}: {e}")

    if gpu:
        problems += nf4_forward(out)
    return problems


def nf4_forward(out) -> list[str]:
    """One nf4 Linear4bit forward on the first CUDA device: what QLoRA needs of bitsandbytes."""
    import torch

    if not torch.cuda.is_available():
        out("nf4 forward on GPU: no CUDA device is visible")
        return ["no CUDA device is visible"]
    import bitsandbytes as bnb

    name = torch.cuda.get_device_name(0)
    try:
        layer = bnb.nn.Linear4bit(64, 64, compute_dtype=torch.float16, quant_type="nf4").cuda()
        value = layer(torch.randn(2, 64, device="cuda", dtype=torch.float16)).float().sum().item()
    except Exception as e:  # whatever bitsandbytes raises is the finding
        out(f"nf4 forward on {name}: FAILS ({type(e).__name__}: {e})")
        return [f"bitsandbytes cannot run nf4 on {name}: {type(e).__name__}: {e}"]
    out(f"nf4 forward on {name}: ok (sum {value:.3f})")
    return []


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu", action="store_true", help="also run one nf4 forward on the first CUDA device")
    problems = check_stack(gpu=ap.parse_args().gpu)
    for p in problems:
        print(f"check_stack: {p}", file=sys.stderr)
    print("check_stack: " + ("MISMATCH" if problems else "the stack matches"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
