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


def run_fingerprint(config_path: str | os.PathLike) -> str:
    """Hash of what makes two training runs the same run: the config, the data and the base model's identity."""
    text = Path(config_path).read_text(encoding="utf-8")
    h = hashlib.sha256(text.encode("utf-8"))
    data = _literal_assignment(text, "data_path")
    if data and Path(data).is_file():
        file_digest(Path(data), h)
    model = _literal_assignment(text, "pretrained_model_name_or_path")
    if model:
        for name in ("config.json", "zhufu_model.json", "model.safetensors.index.json"):
            f = Path(model) / name
            if f.is_file():
                file_digest(f, h)
    return h.hexdigest()[:16]


def _is_complete(ckpt: Path) -> bool:
    """A torch zip checkpoint is complete when its central directory (written last) is readable."""
    if ckpt.is_dir():  # DeepSpeed writes a directory per checkpoint
        return any(ckpt.rglob("*.pt"))
    try:
        with zipfile.ZipFile(ckpt) as zf:
            return bool(zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def checkpoints(work_dir: str | os.PathLike) -> list[Path]:
    """The `iter_N.pth` checkpoints of a work dir, oldest first."""
    wd = Path(work_dir)
    found = [(int(m.group(1)), p) for p in wd.glob("iter_*.pth") if (m := CHECKPOINT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_complete_checkpoint(work_dir: str | os.PathLike) -> Path | None:
    for ckpt in reversed(checkpoints(work_dir)):
        if _is_complete(ckpt):
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


def resume_point(config: Path, work_dir: Path, resume: bool) -> Path | None:
    """The checkpoint to resume the run from, or None to start over.

    Only the same run resumes: checkpoints of another config, dataset or base model (another fingerprint),
    or any checkpoints when `resume` is off, are moved aside, never resumed from, never deleted.
    """
    fingerprint = run_fingerprint(config)
    record_path = work_dir / RUN_RECORD
    previous = json.loads(record_path.read_text()) if record_path.is_file() else None
    if checkpoints(work_dir) and (previous or {}).get("fingerprint") != fingerprint:
        _set_aside(work_dir, "the config, data or base model changed since these checkpoints were written")
    elif not resume and checkpoints(work_dir):
        _set_aside(work_dir, "resume disabled")
    write_json(record_path, {"fingerprint": fingerprint, "config": str(config.absolute())})
    return latest_complete_checkpoint(work_dir) if resume else None
