"""The format check: train.json through XTuner's own dataset processing, as training will see it.

datasets, transformers and XTuner are imported inside `check_format`: they take seconds to import, and the
workflow imports this module (rules/train.smk) for `training_format` alone.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from zhufu.config import load_config
from zhufu.errors import DataError
from zhufu.io import read_json, write_json
from zhufu.train.profiles import resolve_profile

log = logging.getLogger(__name__)


def check_format(
    train: str | Path,
    tokenizer_dir: str | Path,
    out: str | Path,
    template: str,
    max_length: int,
    min_samples: int = 1,
) -> dict:
    """Run train.json through XTuner's process_hf_dataset (as training will) and count truncated samples.

    A sample is truncated when its full encoding (same template, no length limit) is longer than max_length.
    A set with fewer than `min_samples` samples after XTuner's processing is refused (DataError, nothing
    written), so the train rule, which waits for this check, never starts on an empty or nearly empty set.
    """
    tdir = Path(tokenizer_dir)
    if not tdir.is_dir():
        raise DataError(
            f"{tdir}: no tokenizer directory (build it with `zhufu base-model` or the base_model rule)"
        )
    rows = read_json(train)
    if not isinstance(rows, list):
        raise DataError(f"{train}: expected a JSON list of {{'conversation': [...]}} rows")
    if len(rows) < min_samples:
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

    def processed(limit: int):
        return process_hf_dataset(
            dataset=dataset,
            tokenizer=tokenizer,
            max_length=limit,
            dataset_map_fn=None,
            template_map_fn=template_map_fn_factory(template=PROMPT_TEMPLATE[template]),
            remove_unused_columns=True,
            shuffle_before_pack=False,
            pack_to_max_length=False,
            map_num_proc=1,
        )

    try:
        limited = processed(max_length)
        full = processed(10**9)
    except Exception as e:  # XTuner's failure is the finding: say which file and why, one line
        raise DataError(f"{train}: XTuner's process_hf_dataset failed ({type(e).__name__}: {e})") from e
    if len(limited) < min_samples:
        raise DataError(_too_few(train, len(limited), "samples after XTuner's processing", min_samples))
    lengths = sorted(len(x) for x in full["input_ids"])
    truncated = sum(1 for n in lengths if n > max_length)
    result = {
        "train": str(train),
        "template": template,
        "max_length": max_length,
        "rows": len(rows),
        "samples": len(limited),
        "truncated": truncated,
        "dropped_by_xtuner": len(rows) - len(limited),
        "tokens": {
            "min": lengths[0] if lengths else 0,
            "median": lengths[len(lengths) // 2] if lengths else 0,
            "max": lengths[-1] if lengths else 0,
        },
    }
    write_json(out, result)
    log.info("%s: %d samples, %d truncated at max_length %d", train, len(limited), truncated, max_length)
    return result


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


def training_format(config: dict) -> tuple[str, int]:
    """The XTuner template and max_length of the configured training profile."""
    profile = _training_profile(config)
    return profile["prompt_template"], profile["max_length"]


def run_check_format(args) -> int:
    template, max_length, min_samples = args.template, args.max_length, args.min_samples
    if template is None or max_length is None or min_samples is None:
        profile = _training_profile(load_config(args.config))
        template = template or profile["prompt_template"]
        max_length = max_length or profile["max_length"]
        min_samples = min_samples or min_training_samples(profile)
    result = check_format(args.train, args.tokenizer, args.output, template, max_length, min_samples)
    print(
        f"{args.output}: {result['samples']} samples, {result['truncated']} truncated at {max_length} tokens"
    )
    return 0
