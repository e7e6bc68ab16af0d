"""The format check: train.json through XTuner's own dataset processing, as training will see it.

datasets, transformers and XTuner are imported inside `check_format`: they take seconds to import, and the
workflow imports this module (rules/train.smk) for `training_view` alone.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

from zhufu.config import load_config
from zhufu.errors import DataError
from zhufu.io import read_json, write_json
from zhufu.train.profiles import resolve_profile, warmup_iterations

log = logging.getLogger(__name__)


# The profile settings that decide what training sees and how its schedule is built: the check's inputs.
SCHEDULE_KEYS = (
    "prompt_template",
    "max_length",
    "pack_to_max_length",
    "batch_size",
    "accumulative_counts",
    "nproc_per_node",
    "max_iters",
    "max_epochs",
    "warmup_ratio",
    "shuffle_before_pack",
    "map_num_proc",
)


def training_view(profile: dict) -> dict:
    """What the format check needs of a resolved training profile (the check_format rule's params)."""
    return {**{k: profile[k] for k in SCHEDULE_KEYS}, "min_samples": min_training_samples(profile)}


def check_format(
    train: str | Path,
    tokenizer_dir: str | Path,
    out: str | Path,
    template: str,
    max_length: int,
    min_samples: int = 1,
    *,
    training: dict | None = None,
) -> dict:
    """Run train.json through XTuner's process_hf_dataset (as training will) and count truncated samples.

    A sample is truncated when its full encoding (same template, no length limit) is longer than max_length.
    When `training` (training_view of the profile) packs, the samples counted are the packed ones, as
    training sees them. A set with fewer than `min_samples` samples is refused (DataError, nothing
    written), and so is one whose epoch schedule mmengine would refuse before the first step (a warm-up of
    0 iterations, or no iteration left after it) or never warm up (1 iteration): the train rule, which waits
    for this check, never starts on a set it cannot train.
    """
    training = training or {}
    pack = bool(training.get("pack_to_max_length"))
    tdir = Path(tokenizer_dir)
    if not tdir.is_dir():
        raise DataError(
            f"{tdir}: no tokenizer directory (build it with `zhufu base-model` or the base_model rule)"
        )
    rows = read_json(train)
    if not isinstance(rows, list):
        raise DataError(f"{train}: expected a JSON list of {{'conversation': [...]}} rows")
    if len(rows) < min_samples and not pack:
        raise DataError(_too_few(train, len(rows), "rows", min_samples))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from datasets import load_dataset
    from transformers import AutoTokenizer
    from xtuner.dataset import process_hf_dataset
    from xtuner.dataset.map_fns import template_map_fn_factory
    from xtuner.utils import PROMPT_TEMPLATE

    if template not in PROMPT_TEMPLATE:
        raise DataError(f"check-format: unknown XTuner template {template!r}")
    tokenizer = AutoTokenizer.from_pretrained(str(tdir), trust_remote_code=True)
    dataset = load_dataset("json", data_files=str(train), split="train")

    # XTuner packs each of its map_num_proc shards on its own and drops each shard's last, partial sample,
    # so the packed count depends on the sharding: pack with the profile's. Its shuffle before packing is
    # unseeded, which can move each shard's count by one either way.
    procs = training.get("map_num_proc", 1) if pack else 1

    def processed(limit: int, packed: bool = False):
        return process_hf_dataset(
            dataset=dataset,
            tokenizer=tokenizer,
            max_length=limit,
            dataset_map_fn=None,
            template_map_fn=template_map_fn_factory(template=PROMPT_TEMPLATE[template]),
            remove_unused_columns=True,
            shuffle_before_pack=False,
            pack_to_max_length=packed,
            map_num_proc=procs if packed else 1,
        )

    try:
        limited = processed(max_length)
        full = processed(10**9)
        packed = processed(max_length, packed=True) if pack else None
    except Exception as e:  # XTuner's failure is the finding: say which file and why, one line
        raise DataError(f"{train}: XTuner's process_hf_dataset failed ({type(e).__name__}: {e})") from e
    samples = len(packed) if pack else len(limited)
    what = f"packed samples of {max_length} tokens" if pack else "samples after XTuner's processing"
    if samples < min_samples:
        raise DataError(_too_few(train, samples, what, min_samples))
    shuffle_loss = procs - 1 if pack and training.get("shuffle_before_pack") else 0
    fewest = what
    if shuffle_loss:
        fewest += (
            f" at the least ({samples} as packed here; XTuner's unseeded shuffle before packing can cost each "
            f"of its {procs} shards one)"
        )
    schedule = None
    if training:
        # checked on the fewest samples training can see; reported for the samples counted here
        fewest_schedule = training_schedule(training, max(1, samples - shuffle_loss), train, fewest)
        schedule = training_schedule(training, samples, train, what)
        if shuffle_loss:
            schedule["at_least"] = {k: fewest_schedule[k] for k in ("iterations", "warmup_iterations")}
    lengths = sorted(len(x) for x in full["input_ids"])
    truncated = sum(1 for n in lengths if n > max_length)
    result = {
        "train": str(train),
        "template": template,
        "max_length": max_length,
        "rows": len(rows),
        "samples": samples,
        "unpacked_samples": len(limited),
        "packed": pack,
        "truncated": truncated,
        "dropped_by_xtuner": len(rows) - len(limited),
        "tokens": {
            "min": lengths[0] if lengths else 0,
            "median": lengths[len(lengths) // 2] if lengths else 0,
            "max": lengths[-1] if lengths else 0,
        },
    }
    if schedule:
        result["schedule"] = schedule
    write_json(out, result)
    log.info(
        "%s: %d %s, %d truncated at max_length %d%s",
        train,
        samples,
        what,
        truncated,
        max_length,
        f"; {schedule['iterations']} iterations, {schedule['warmup_iterations']} of warm-up"
        if schedule
        else "",
    )
    return result


def training_schedule(training: dict, samples: int, train: str | Path, what: str) -> dict:
    """The iterations training will run over `samples`, as mmengine counts them; DataError, naming the
    setting to change, for a schedule mmengine refuses before the first step.

    Epoch-based (max_iters null): an epoch is ceil(ceil(samples / nproc_per_node) / batch_size) iterations,
    and mmengine turns the warm-up's end, warmup_ratio × max_epochs epochs, into int(warmup_ratio ×
    max_epochs × iterations per epoch) iterations (convert_to_iter_based); 0 raises `end should be larger
    than begin`, and 1 leaves the learning rate at LinearLR's start factor for the whole run (measured: lr
    1.8e-9 at iteration 10 of the tiny internlm2-chat-7b-qlora run). Iteration-based profiles warm up over at
    least 2 iterations (zhufu.train.profiles.warmup_iterations).
    """
    per_rank = math.ceil(samples / training["nproc_per_node"])
    per_epoch = math.ceil(per_rank / training["batch_size"])
    ratio, epochs = training["warmup_ratio"], training["max_epochs"]
    if training["max_iters"]:
        total = training["max_iters"]
        warmup = warmup_iterations(ratio, total)
    else:
        total = int(epochs * per_epoch)
        warmup = int(ratio * epochs * per_epoch) if ratio else 0
        where = (
            f"{train}: {samples} {what} make {per_epoch} iteration(s) per epoch (batch_size "
            f"{training['batch_size']} × nproc_per_node {training['nproc_per_node']})"
        )
        if ratio and warmup < 2:
            # 0 raises in mmengine; over 1 iteration LinearLR never leaves its start factor, and the cosine
            # that follows scales that lr, so the whole run would train at lr × 1e-5 without a word
            why = (
                "mmengine would stop before the first step (end should be larger than begin)"
                if warmup == 0
                else "mmengine's LinearLR over one iteration never leaves its start factor, so the whole run "
                "would train at lr × 1e-5"
            )
            need = math.ceil(200 / (epochs * per_epoch)) / 100
            fix = f"raise train.overrides.warmup_ratio to {need:g}" if need < 1 else "add data"
            raise DataError(
                f"{where}, so the warm-up of warmup_ratio {ratio:g} × max_epochs {epochs:g} is "
                f"int({ratio * epochs * per_epoch:.2f}) = {warmup} iteration(s) and {why}; {fix}, raise "
                "train.overrides.max_epochs, or set train.overrides.warmup_ratio: 0 for no warm-up"
            )
        if total <= warmup:
            raise DataError(
                f"{where}: max_epochs {epochs:g} gives {total} iteration(s), none left after a warm-up of "
                f"{warmup}; raise train.overrides.max_epochs or lower train.overrides.warmup_ratio"
            )
    return {
        "iterations": total,
        "iterations_per_epoch": per_epoch,
        "warmup_iterations": warmup,
        "optimizer_steps": math.ceil(total / training["accumulative_counts"]),
    }


def _too_few(train: str | Path, n: int, what: str, needed: int) -> str:
    return (
        f"{train}: {n} {what}; training needs at least {needed} (train.overrides.min_samples, and one "
        f"optimiser step of batch_size × accumulative_counts × nproc_per_node); the cleaning report beside "
        f"it lists what was dropped"
    )


def min_training_samples(profile: dict) -> int:
    """The fewest samples a resolved training profile accepts: min_samples, and one optimiser step."""
    step = profile["batch_size"] * profile["accumulative_counts"] * profile["nproc_per_node"]
    return max(profile["min_samples"], step)


def add_check_format_arguments(parser) -> None:
    parser.add_argument("train", help="train.json")
    parser.add_argument("--tokenizer", default="results/base_model", help="model dir with the tokenizer")
    parser.add_argument("-o", "--output", default="results/data/format_check.json")
    parser.add_argument("--template", help="XTuner prompt template (default: the training profile's)")
    parser.add_argument("--max-length", type=_positive_int, help="(default: the training profile's)")
    parser.add_argument(
        "--min-samples",
        type=_positive_int,
        help="refuse fewer samples than this (default: the training profile's min_samples and one step)",
    )
    parser.add_argument("--config", help="config whose training profile applies (default config.yaml)")


def _positive_int(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _training_profile(config: dict) -> dict:
    train = config.get("train", {})
    return resolve_profile(train.get("profile", "cpu-tiny"), train.get("overrides"))


def run_check_format(args) -> int:
    training = training_view(_training_profile(load_config(args.config)))
    template = args.template or training["prompt_template"]
    max_length = args.max_length or training["max_length"]
    min_samples = args.min_samples or training["min_samples"]
    result = check_format(
        args.train, args.tokenizer, args.output, template, max_length, min_samples, training=training
    )
    print(
        f"{args.output}: {result['samples']} samples, {result['truncated']} truncated at {max_length} tokens"
    )
    return 0
