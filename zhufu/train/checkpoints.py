"""The checkpoints of a training work dir: which are complete, which one is last, and when to resume.

A run resumes only from its own checkpoints: the run record (zhufu_run.json) holds the fingerprint of the
config, the data and the base model's identity that wrote them.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import os
import re
import shutil
import time
import zipfile
from pathlib import Path

from zhufu.errors import ModelError
from zhufu.io import file_digest, write_json

log = logging.getLogger(__name__)

RUN_RECORD = "zhufu_run.json"
CHECKPOINT_RE = re.compile(r"^iter_(\d+)\.pth$")


def _literal_assignment(config_text: str, name: str) -> str | None:
    m = re.search(rf"^{name} = (.+)$", config_text, re.M)
    if not m:
        return None
    try:
        value = ast.literal_eval(m.group(1).split("  #")[0].strip())
    except (ValueError, SyntaxError):
        return None
    return value if isinstance(value, str) else None


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
            file_digest(f, h)
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
        file_digest(Path(deepspeed), h)
    data = _literal_assignment(text, "data_path")
    if data and Path(data).is_file():
        file_digest(Path(data), h)
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
    found = [(int(m.group(1)), p) for p in wd.glob("iter_*.pth") if (m := CHECKPOINT_RE.match(p.name))]
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
        if entry.name in ("last_checkpoint",) or CHECKPOINT_RE.match(entry.name) or entry.name == RUN_RECORD:
            shutil.move(str(entry), stale / entry.name)
    log.warning(
        "%s: moved the previous run's checkpoints to %s (delete them when no longer needed)", reason, stale
    )


def world_size(nproc_per_node: int) -> int:
    """The number of ranks of a run: processes per node times nodes (NNODES, as torch.distributed.run)."""
    return nproc_per_node * int(os.environ.get("NNODES", "1"))


def resume_point(
    config: Path, work_dir: Path, resume: bool, *, deepspeed: str | None = None, nproc_per_node: int = 1
) -> Path | None:
    """The checkpoint to resume the run from, or None to start over.

    Only the same run resumes: checkpoints of another config, dataset, base model, DeepSpeed setting or
    process count (another fingerprint), or any checkpoints when `resume` is off, are moved aside, never
    resumed from, never deleted. A DeepSpeed checkpoint counts only with every rank's files.
    """
    fingerprint = run_fingerprint(config, deepspeed=deepspeed, nproc_per_node=nproc_per_node)
    record_path = work_dir / RUN_RECORD
    previous = json.loads(record_path.read_text()) if record_path.is_file() else None
    if checkpoints(work_dir) and (previous or {}).get("fingerprint") != fingerprint:
        _set_aside(work_dir, "the config, data or base model changed since these checkpoints were written")
    elif not resume and checkpoints(work_dir):
        _set_aside(work_dir, "resume disabled")
    write_json(record_path, {"fingerprint": fingerprint, "config": str(config.absolute())})
    return latest_complete_checkpoint(work_dir, world_size(nproc_per_node)) if resume else None
