"""Export: an XTuner checkpoint to a HF adapter (pth_to_hf), and the adapter merged into its base model.

Each writes into a temporary directory beside its output and moves it into place when the tool succeeded.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from zhufu.errors import ModelError
from zhufu.io import fresh_dir, replace_dir, write_text
from zhufu.train.base_model import check_model_dir
from zhufu.train.checkpoints import CHECKPOINT_RE, last_checkpoint
from zhufu.train.launcher import MERGE, PTH_TO_HF, cuda_device_count, run_tool


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
    if ckpt.is_dir() and not CHECKPOINT_RE.match(ckpt.name):
        ckpt = last_checkpoint(ckpt)
    elif ckpt.name == "last_checkpoint":
        ckpt = last_checkpoint(ckpt.parent)
    if not ckpt.exists():
        raise ModelError(f"{ckpt}: checkpoint not found")
    out, tmp = fresh_dir(out_dir)
    rc = run_tool(
        PTH_TO_HF,
        [str(config), str(ckpt), str(tmp), "--safe-serialization"],
        hf_home=hf_home or out.parent / "hf_cache",
        log_path=log_path,
    )
    if rc != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelError(f"xtuner pth_to_hf failed on {ckpt} (exit {rc}); see {log_path or 'its output'}")
    replace_dir(tmp, out)
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
    check_model_dir(base, "base model", "run the base_model rule first, or pass the base model's directory")
    adapter = Path(adapter)
    out, tmp = fresh_dir(out_dir)
    if not (adapter / "adapter_config.json").is_file():
        if not (adapter / "config.json").is_file():
            raise ModelError(
                f"{adapter}: neither adapter_config.json nor config.json; is it pth-to-hf's output?"
            )
        shutil.copytree(adapter, tmp)
        _copy_missing(Path(base), tmp, full=True)
        replace_dir(tmp, out)
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
    replace_dir(tmp, out)
    return out


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
