"""Training: XTuner's train tool on a rendered config, resumed from the newest complete checkpoint of the
same run, with the final checkpoint named by work_dir/last_checkpoint and made read-only.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from zhufu.errors import ModelError
from zhufu.io import write_text
from zhufu.train.checkpoints import (
    checkpoints,
    last_checkpoint,
    latest_complete_checkpoint,
    resume_point,
    world_size,
)
from zhufu.train.launcher import TRAIN, cuda_device_count, run_tool

log = logging.getLogger(__name__)


def train(
    config: str | os.PathLike,
    work_dir: str | os.PathLike,
    *,
    deepspeed: str | None = None,
    nproc_per_node: int = 1,
    hf_home: str | os.PathLike | None = None,
    log_path: str | os.PathLike | None = None,
    resume: bool = True,
    extra_args: list[str] | None = None,
    threads: int | None = None,
) -> Path:
    """Train with XTuner into `work_dir`, resuming the same run from its newest complete checkpoint.

    Returns the final checkpoint; raises ModelError when XTuner fails (the message has its exit code).
    """
    config = Path(config)
    if not config.is_file():
        raise ModelError(f"{config}: XTuner config not found; render it first (zhufu render-config)")
    wd = Path(work_dir)
    wd.mkdir(parents=True, exist_ok=True)
    text = config.read_text(encoding="utf-8")
    gpus = cuda_device_count()
    if not gpus and "load_in_4bit=True" in text:
        raise ModelError(f"{config}: QLoRA (bitsandbytes 4-bit) needs a CUDA GPU; none is usable here")
    if not gpus and deepspeed:
        raise ModelError(
            f"{config}: the profile uses DeepSpeed ({deepspeed}), which needs CUDA GPUs; none is usable here"
        )

    args = [str(config), "--work-dir", str(wd)]
    if deepspeed:
        args += ["--deepspeed", deepspeed]
    ckpt = resume_point(config, wd, resume, deepspeed=deepspeed, nproc_per_node=nproc_per_node)
    resume_args, extra_env = _resume_from(ckpt, log_path)
    args += resume_args + (extra_args or [])
    rc = run_tool(
        TRAIN,
        args,
        hf_home=hf_home or wd.parent / "hf_cache",
        nproc_per_node=nproc_per_node,
        log_path=log_path,
        threads=threads,
        extra_env=extra_env,
    )
    if rc != 0:
        raise ModelError(f"xtuner.tools.train exited with {rc} on {config}; see {log_path or 'its output'}")
    marker = wd / "last_checkpoint"
    if not marker.is_file() and (newest := latest_complete_checkpoint(wd, world_size(nproc_per_node))):
        # Resumed from the final checkpoint (a rerun of a finished run): XTuner had nothing left to train,
        # so it wrote no marker. Snakemake removed the old one before the job; name the final checkpoint again.
        write_text(marker, str(newest.absolute()))
    final = last_checkpoint(wd)
    for ckpt in checkpoints(wd):
        if ckpt.is_file():
            ckpt.chmod(ckpt.stat().st_mode & ~0o222)
    log.info("training done: last checkpoint %s", final)
    return final


def _resume_from(ckpt: Path | None, log_path: str | os.PathLike | None) -> tuple[list[str], dict[str, str]]:
    """XTuner's arguments and environment to resume from `ckpt` (none when there is nothing to resume)."""
    if ckpt is None:
        return [], {}
    log.info("resuming from %s", ckpt)
    if log_path:
        with open(log_path, "a", encoding="utf-8") as fh:
            fh.write(f"zhufu: resuming from {ckpt}\n")
    # XTuner 0.2.0 and mmengine 0.10.6 call torch.load() without weights_only, which torch >= 2.6 makes
    # True; their checkpoints hold mmengine objects (the message hub), so resuming fails. The checkpoint
    # is this run's own (the fingerprint matched), so load it as XTuner was written to.
    return ["--resume", str(ckpt)], {"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}


def _positive_int(text: str) -> int:
    import argparse

    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def add_train_arguments(parser) -> None:
    parser.add_argument(
        "config", nargs="?", default="results/train/xtuner_config.py", help="rendered XTuner config"
    )
    parser.add_argument("--work-dir", default="results/train/work_dir", help="checkpoints and logs")
    parser.add_argument("--deepspeed", help="deepspeed_zero1/2/3(_offload) or a JSON file (GPU only)")
    parser.add_argument(
        "--nproc-per-node",
        type=_positive_int,
        default=1,
        help="processes (GPUs) per node; >1 uses torch.distributed.run",
    )
    parser.add_argument("--threads", type=_positive_int, help="CPU threads for torch (OMP_NUM_THREADS)")
    parser.add_argument(
        "--no-resume", action="store_true", help="start over (old checkpoints are moved aside)"
    )


def run_train(args) -> int:
    train(
        args.config,
        args.work_dir,
        deepspeed=args.deepspeed,
        nproc_per_node=args.nproc_per_node,
        resume=not args.no_resume,
        threads=args.threads,
    )
    return 0
