"""Run XTuner's tools (train, pth_to_hf, merge) as child processes, the same way on CPU and GPU.

Never through the `xtuner` console script: it runs a child `python` from PATH and always exits 0. Each tool
runs as `python -m zhufu.train.launcher <xtuner module> <args>`, which applies the CPU workarounds only when
no CUDA device is usable, then runs the module as `__main__`. The parent

- sets the HF offline variables and a work-dir-local HF cache (the models are local directories);
- drops a CUDA_VISIBLE_DEVICES that names no usable device (a GPU-less node of a SLURM test cluster);
- launches several processes per node with torch.distributed.run when the profile asks for it, as
  XTuner's NPROC_PER_NODE does;
- returns the tool's real exit code, and the child dies with the parent (kill -9 leaves no orphan).

torch is imported inside the functions that need it: it takes seconds to import, and the parent only asks
it how many CUDA devices there are.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import runpy
import signal
import subprocess
import sys
from pathlib import Path

from zhufu.errors import ModelError

log = logging.getLogger(__name__)

# The folder that holds the zhufu package, on the child's PYTHONPATH (a checkout or site-packages).
PACKAGE_PARENT = Path(__file__).resolve().parents[2]
TRAIN = "xtuner.tools.train"
PTH_TO_HF = "xtuner.tools.model_converters.pth_to_hf"
MERGE = "xtuner.tools.model_converters.merge"


# --------------------------------------------------------------------------------------------------
# In the child: workarounds, then the XTuner module as __main__


def apply_cpu_workarounds() -> None:
    """Make XTuner 0.2.0 run on a CPU-only torch build (see DESIGN.md, known facts)."""
    import torch

    if not hasattr(torch.cpu, "is_bf16_supported"):
        torch.cpu.is_bf16_supported = lambda *args, **kwargs: False


def _run_module(module: str, argv: list[str]) -> None:
    if os.environ.get("ZHUFU_DEVICE", "cpu") == "cpu":
        apply_cpu_workarounds()
    sys.argv = [module, *argv]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


# --------------------------------------------------------------------------------------------------
# In the parent


def cuda_device_count() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # a broken driver means the same as no GPU here
        return 0


def tool_env(hf_home: str | os.PathLike, device: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_HOME=str(Path(hf_home).absolute()),
        TOKENIZERS_PARALLELISM="false",
        ZHUFU_DEVICE=device,
        PYTHONUNBUFFERED="1",
    )
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_PARENT), env.get("PYTHONPATH")) if p)
    if device == "cpu" and "CUDA_VISIBLE_DEVICES" in env:
        log.info("no usable CUDA device: ignoring CUDA_VISIBLE_DEVICES=%r", env["CUDA_VISIBLE_DEVICES"])
        del env["CUDA_VISIBLE_DEVICES"]
    return env


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the parent dies, even by SIGKILL (Linux)."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def run_tool(
    module: str,
    args: list[str],
    *,
    hf_home: str | os.PathLike,
    nproc_per_node: int = 1,
    log_path: str | os.PathLike | None = None,
    threads: int | None = None,
    extra_env: dict[str, str] | None = None,
) -> int:
    """Run an XTuner tool module in a child process and return its exit code."""
    gpus = cuda_device_count()
    device = "cuda" if gpus else "cpu"
    env = tool_env(hf_home, device)
    env.update(extra_env or {})
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    if nproc_per_node > 1:
        if gpus < nproc_per_node:
            raise ModelError(
                f"the training profile launches {nproc_per_node} processes per node (nproc_per_node) but "
                f"{gpus} CUDA device(s) are visible; give the job {nproc_per_node} GPUs or set nproc_per_node"
            )
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nnodes={os.environ.get('NNODES', '1')}",
            f"--node_rank={os.environ.get('NODE_RANK', '0')}",
            f"--nproc_per_node={nproc_per_node}",
            f"--master_addr={os.environ.get('ADDR', '127.0.0.1')}",
            f"--master_port={os.environ.get('PORT', '29500')}",
            "-m",
            "zhufu.train.launcher",
            module,
            *args,
            "--launcher",
            "pytorch",
        ]
    else:
        cmd = [sys.executable, "-m", "zhufu.train.launcher", module, *args]
    log.info("running on %s: %s", device, " ".join(cmd))
    out = open(log_path, "a", encoding="utf-8") if log_path else None  # noqa: SIM115
    try:
        proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT if out else None, preexec_fn=_die_with_parent
        )
        try:
            return proc.wait()
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)
            proc.wait()
            raise
    finally:
        if out:
            out.close()


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python -m zhufu.train.launcher XTUNER_MODULE [ARGS...]")
    _run_module(sys.argv[1], sys.argv[2:])
