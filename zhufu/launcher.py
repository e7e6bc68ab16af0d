"""Run XTuner's tools (train, pth_to_hf, merge) as child processes, the same way on CPU and GPU.

Never through the `xtuner` console script: it runs a child `python` from PATH and always exits 0. Each tool
runs as `python -m zhufu.launcher <xtuner module> <args>`, which applies the CPU workarounds only when no
CUDA device is usable, then runs the module as `__main__`. The parent

- sets the HF offline variables and a work-dir-local HF cache (the models are local directories);
- drops a CUDA_VISIBLE_DEVICES that names no usable device (a GPU-less node of a SLURM test cluster);
- launches several processes per node with torch.distributed.run when the profile asks for it, as
  XTuner's NPROC_PER_NODE does;
- resumes a training run from its newest complete checkpoint when the same run is restarted after a kill
  (a checkpoint of a different config or dataset is moved aside, never resumed from, never deleted);
- returns the tool's real exit code, and the child dies with the parent (kill -9 leaves no orphan).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from zhufu.errors import ModelError
from zhufu.io import write_json, write_text

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
TRAIN = "xtuner.tools.train"
PTH_TO_HF = "xtuner.tools.model_converters.pth_to_hf"
MERGE = "xtuner.tools.model_converters.merge"
RUN_RECORD = "zhufu_run.json"
_CKPT = re.compile(r"^iter_(\d+)\.pth$")


# --------------------------------------------------------------------------------------------------
# In the child: workarounds, then the XTuner module as __main__


def apply_cpu_workarounds() -> None:
    """Make XTuner 0.2.0 run on a CPU-only torch build (see DESIGN.md, known facts)."""
    import torch

    if not hasattr(torch.cpu, "is_bf16_supported"):
        torch.cpu.is_bf16_supported = lambda *args, **kwargs: False


def hide_triton_ops() -> None:
    """bitsandbytes 0.45.0 imports `triton.ops`, which triton 3.x removed; give it an inert stand-in.

    Only the int8 triton kernels use it, and neither LoRA nor QLoRA (nf4) calls them.
    """
    import importlib.util
    import types

    if importlib.util.find_spec("triton") is None:
        return
    try:
        if importlib.util.find_spec("triton.ops") is not None:
            return
    except ModuleNotFoundError:
        pass

    def unavailable(*args, **kwargs):
        raise RuntimeError(
            "triton.ops is not available in this triton; bitsandbytes' int8 triton kernels can't run"
        )

    ops = types.ModuleType("triton.ops")
    perf = types.ModuleType("triton.ops.matmul_perf_model")
    perf.early_config_prune = perf.estimate_matmul_time = unavailable
    ops.matmul_perf_model = perf
    sys.modules["triton.ops"] = ops
    sys.modules["triton.ops.matmul_perf_model"] = perf


def _run_module(module: str, argv: list[str]) -> None:
    import runpy

    hide_triton_ops()
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
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
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
            "zhufu.launcher",
            module,
            *args,
            "--launcher",
            "pytorch",
        ]
    else:
        cmd = [sys.executable, "-m", "zhufu.launcher", module, *args]
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


# --------------------------------------------------------------------------------------------------
# Training


def _literal_assignment(config_text: str, name: str) -> str | None:
    import ast

    m = re.search(rf"^{name} = (.+)$", config_text, re.M)
    if not m:
        return None
    try:
        value = ast.literal_eval(m.group(1).split("  #")[0].strip())
    except (ValueError, SyntaxError):
        return None
    return value if isinstance(value, str) else None


def _file_digest(path: Path, h) -> None:
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)


# Weight files: hashed whole up to this size; a bigger one (a 7B shard) by name, size and mtime, so a
# replaced or re-downloaded model changes the fingerprint without reading gigabytes at every start.
_HASH_WHOLE_BYTES = 64 << 20
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".model", ".json", ".txt", ".py")


def _model_identity(model: Path, h) -> None:
    """The base model's files (config, tokenizer, weights) as seen through any symlinks."""
    for f in sorted(model.rglob("*")):
        rel = f.relative_to(model)
        if not f.is_file() or f.suffix not in _WEIGHT_SUFFIXES or any(p.startswith(".") for p in rel.parts):
            continue
        st = f.stat()
        h.update(f"\x1f{rel}\x1f{st.st_size}".encode())
        if st.st_size <= _HASH_WHOLE_BYTES:
            _file_digest(f, h)
        else:
            h.update(f"\x1f{st.st_mtime_ns}".encode())


def run_fingerprint(
    config_path: str | os.PathLike, *, deepspeed: str | None = None, nproc_per_node: int = 1
) -> str:
    """Hash of what makes two training runs the same run: the config, the data, the base model's files
    (weights included: a `path` model edited in place or an unpinned ModelScope revision that moved), the
    DeepSpeed setting (and its JSON) and the number of processes (a ZeRO checkpoint is sharded by rank)."""
    text = Path(config_path).read_text(encoding="utf-8")
    h = hashlib.sha256(text.encode("utf-8"))
    h.update(f"\x1fdeepspeed={deepspeed}\x1fnproc_per_node={nproc_per_node}".encode())
    if deepspeed and Path(deepspeed).is_file():
        _file_digest(Path(deepspeed), h)
    data = _literal_assignment(text, "data_path")
    if data and Path(data).is_file():
        _file_digest(Path(data), h)
    model = _literal_assignment(text, "pretrained_model_name_or_path")
    if model and Path(model).is_dir():
        _model_identity(Path(model), h)
    return h.hexdigest()[:16]


def _is_complete_zip(path: Path) -> bool:
    """A torch zip checkpoint is complete when its central directory (written last) is readable."""
    try:
        with zipfile.ZipFile(path) as zf:
            return bool(zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


_DS_OPTIM = re.compile(r"^(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_(\d+)_optim_states\.pt$")
_DS_MODEL = re.compile(r"^(?:zero_pp_rank_(\d+)_)?mp_rank_(\d+)_model_states\.pt$")


def _is_complete_deepspeed(ckpt: Path, world_size: int) -> bool:
    """A DeepSpeed checkpoint directory (mmengine saves `iter_N.pth/` as a DeepSpeed tag) is complete when

    - a DeepSpeed `latest` file beside or inside it, if there is one, names this tag (mmengine 0.10.6 saves
      with save_latest=False, so under XTuner there is none, and the rank files decide);
    - every rank 0..world_size-1 has its optimizer-state file, the model states are there (one file, or one
      per rank under ZeRO-3), and every file is a complete torch zip (a killed write leaves no central
      directory).
    """
    for latest in (ckpt / "latest", ckpt.parent / "latest"):
        if latest.is_file():
            try:
                if latest.read_text(encoding="utf-8").strip() != ckpt.name:
                    return False
            except (OSError, UnicodeDecodeError):
                return False
    files = [f for f in ckpt.iterdir() if f.is_file()]
    optim_ranks = {int(m.group(1)) for f in files if (m := _DS_OPTIM.match(f.name))}
    model_files = [(f, m) for f in files if (m := _DS_MODEL.match(f.name))]
    if optim_ranks != set(range(world_size)) or not model_files:
        return False
    sharded_model = {int(m.group(1)) for _, m in model_files if m.group(1) is not None}
    if sharded_model and sharded_model != set(range(world_size)):
        return False
    states = [f for f in files if _DS_OPTIM.match(f.name)] + [f for f, _ in model_files]
    return all(_is_complete_zip(f) for f in states)


def _is_complete(ckpt: Path, world_size: int = 1) -> bool:
    if ckpt.is_dir():
        return _is_complete_deepspeed(ckpt, world_size)
    return _is_complete_zip(ckpt)


def checkpoints(work_dir: str | os.PathLike) -> list[Path]:
    """The `iter_N.pth` checkpoints of a work dir, oldest first."""
    wd = Path(work_dir)
    found = [(int(m.group(1)), p) for p in wd.glob("iter_*.pth") if (m := _CKPT.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_complete_checkpoint(work_dir: str | os.PathLike, world_size: int = 1) -> Path | None:
    """The newest checkpoint that is complete (for a DeepSpeed one: every one of `world_size` ranks)."""
    for ckpt in reversed(checkpoints(work_dir)):
        if _is_complete(ckpt, world_size):
            return ckpt
        log.warning("ignoring incomplete checkpoint %s (written when the run was killed?)", ckpt)
    return None


def last_checkpoint(work_dir: str | os.PathLike) -> Path:
    """The checkpoint that `work_dir/last_checkpoint` names (the final iter_N depends on how data packs)."""
    marker = Path(work_dir) / "last_checkpoint"
    if not marker.is_file():
        raise ModelError(f"{marker} does not exist; has training finished in {work_dir}?")
    target = Path(marker.read_text(encoding="utf-8").strip())
    if not target.is_absolute() and not target.exists():
        target = Path(work_dir) / target.name
    if not target.exists():
        raise ModelError(f"{marker} names {target}, which does not exist")
    return target


def _set_aside(work_dir: Path, reason: str) -> None:
    stale = work_dir.parent / "stale_runs" / time.strftime("%Y%m%d-%H%M%S")
    stale.mkdir(parents=True, exist_ok=True)
    for entry in work_dir.iterdir():
        if entry.name in ("last_checkpoint",) or _CKPT.match(entry.name) or entry.name == RUN_RECORD:
            shutil.move(str(entry), stale / entry.name)
    log.warning(
        "%s: moved the previous run's checkpoints to %s (delete them when no longer needed)", reason, stale
    )


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
) -> int:
    """Train with XTuner into `work_dir`, resuming the same run from its newest complete checkpoint."""
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

    fingerprint = run_fingerprint(config, deepspeed=deepspeed, nproc_per_node=nproc_per_node)
    world_size = nproc_per_node * int(os.environ.get("NNODES", "1"))
    record_path = wd / RUN_RECORD
    previous = json.loads(record_path.read_text()) if record_path.is_file() else None
    if checkpoints(wd) and (previous or {}).get("fingerprint") != fingerprint:
        _set_aside(wd, "the config, data or base model changed since these checkpoints were written")
    elif not resume and checkpoints(wd):
        _set_aside(wd, "resume disabled")
    write_json(record_path, {"fingerprint": fingerprint, "config": str(config.absolute())})

    args = [str(config), "--work-dir", str(wd)]
    if deepspeed:
        args += ["--deepspeed", deepspeed]
    ckpt = latest_complete_checkpoint(wd, world_size) if resume else None
    if ckpt is not None:
        log.info("resuming from %s", ckpt)
        if log_path:
            with open(log_path, "a", encoding="utf-8") as fh:
                fh.write(f"zhufu: resuming from {ckpt}\n")
        args += ["--resume", str(ckpt)]
        # XTuner 0.2.0 and mmengine 0.10.6 call torch.load() without weights_only, which torch >= 2.6 makes
        # True; their checkpoints hold mmengine objects (the message hub), so resuming fails. The checkpoint
        # is this run's own (the fingerprint matched), so load it as XTuner was written to.
        extra_env = {"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    else:
        extra_env = {}
    args += extra_args or []
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
        log.error("xtuner.tools.train exited with %d", rc)
        return rc
    marker = wd / "last_checkpoint"
    if not marker.is_file() and (newest := latest_complete_checkpoint(wd, world_size)) is not None:
        # Resumed from the final checkpoint (a rerun of a finished run): XTuner had nothing left to train,
        # so it wrote no marker. Snakemake removed the old one before the job; name the final checkpoint again.
        write_text(marker, str(newest.absolute()))
    final = last_checkpoint(wd)
    for ckpt in checkpoints(wd):
        if ckpt.is_file():
            ckpt.chmod(ckpt.stat().st_mode & ~0o222)
    log.info("training done: last checkpoint %s", final)
    return 0


# --------------------------------------------------------------------------------------------------
# Export


def _into_fresh_dir(out: str | os.PathLike):
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    return out, tmp


def _publish(tmp: Path, out: Path) -> None:
    if out.is_symlink() or out.is_file():
        out.unlink()
    elif out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


def pth_to_hf(
    config: str | os.PathLike,
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    hf_home: str | os.PathLike | None = None,
    log_path: str | os.PathLike | None = None,
) -> Path:
    """Convert an XTuner checkpoint (a .pth, or a work dir: its last_checkpoint) to a HF adapter/model dir."""
    ckpt = Path(checkpoint)
    if ckpt.is_dir() and not _CKPT.match(ckpt.name):
        ckpt = last_checkpoint(ckpt)
    elif ckpt.name == "last_checkpoint":
        ckpt = last_checkpoint(ckpt.parent)
    if not ckpt.exists():
        raise ModelError(f"{ckpt}: checkpoint not found")
    out, tmp = _into_fresh_dir(out_dir)
    rc = run_tool(
        PTH_TO_HF,
        [str(config), str(ckpt), str(tmp), "--safe-serialization"],
        hf_home=hf_home or out.parent / "hf_cache",
        log_path=log_path,
    )
    if rc != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelError(f"xtuner pth_to_hf failed on {ckpt} (exit {rc}); see {log_path or 'its output'}")
    _publish(tmp, out)
    return out


_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
)


def _copy_missing(base: Path, dest: Path, full: bool = False) -> None:
    """Copy from the base what XTuner does not save: generation config, custom code (and tokenizer if full)."""
    for entry in base.iterdir():
        wanted = entry.suffix == ".py" or entry.name in ("generation_config.json", "tokenizer.model")
        if full:
            wanted = wanted or entry.name in _TOKENIZER_FILES
        if entry.is_file() and wanted and not (dest / entry.name).exists():
            shutil.copy(entry, dest / entry.name)


def merge_model(
    base: str | os.PathLike,
    adapter: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    hf_home: str | os.PathLike | None = None,
    log_path: str | os.PathLike | None = None,
    max_shard_size: str = "2GB",
) -> Path:
    """Merge a LoRA adapter into its base model with XTuner's merge tool; keeps tokenizer and chat template.

    After a full fine-tune, pth-to-hf already wrote a whole model: it is copied, with the base's tokenizer
    files where it lacks them.
    """
    from zhufu.base_model import check_model_dir

    check_model_dir(base, "base model", "run the base_model rule first, or pass the base model's directory")
    adapter = Path(adapter)
    out, tmp = _into_fresh_dir(out_dir)
    if not (adapter / "adapter_config.json").is_file():
        if not (adapter / "config.json").is_file():
            raise ModelError(
                f"{adapter}: neither adapter_config.json nor config.json; is it pth-to-hf's output?"
            )
        shutil.copytree(adapter, tmp)
        _copy_missing(Path(base), tmp, full=True)
        _publish(tmp, out)
        return out
    device = "cuda" if cuda_device_count() else "cpu"
    rc = run_tool(
        MERGE,
        [
            str(base),
            str(adapter),
            str(tmp),
            "--safe-serialization",
            "--device",
            device,
            "--max-shard-size",
            max_shard_size,
        ],
        hf_home=hf_home or out.parent / "hf_cache",
        log_path=log_path,
    )
    if rc != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelError(f"xtuner merge failed for {adapter} (exit {rc}); see {log_path or 'its output'}")
    _copy_missing(Path(base), tmp)
    write_text(tmp / "zhufu_merged.json", json.dumps({"base": str(base), "adapter": str(adapter)}) + "\n")
    _publish(tmp, out)
    return out


# --------------------------------------------------------------------------------------------------
# CLI


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
    return train(
        args.config,
        args.work_dir,
        deepspeed=args.deepspeed,
        nproc_per_node=args.nproc_per_node,
        resume=not args.no_resume,
        threads=args.threads,
    )


def add_pth_to_hf_arguments(parser) -> None:
    parser.add_argument(
        "config", nargs="?", default="results/train/xtuner_config.py", help="rendered XTuner config"
    )
    parser.add_argument(
        "checkpoint",
        nargs="?",
        default="results/train/work_dir",
        help="iter_N.pth, or a work dir (its last_checkpoint)",
    )
    parser.add_argument("-o", "--output", default="results/model/adapter", help="adapter directory to write")


def run_pth_to_hf(args) -> int:
    print(pth_to_hf(args.config, args.checkpoint, args.output))
    return 0


def add_merge_model_arguments(parser) -> None:
    parser.add_argument("base", nargs="?", default="results/base_model", help="base model directory")
    parser.add_argument("adapter", nargs="?", default="results/model/adapter", help="adapter directory")
    parser.add_argument("-o", "--output", default="results/model/merged", help="merged model directory")


def run_merge_model(args) -> int:
    print(merge_model(args.base, args.adapter, args.output))
    return 0


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python -m zhufu.launcher XTUNER_MODULE [ARGS...]")
    _run_module(sys.argv[1], sys.argv[2:])
