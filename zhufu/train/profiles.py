"""Training profiles: the hyper-parameters one XTuner config template is rendered with.

A profile is a flat mapping; config `train.overrides` replaces any of its keys (an unknown key is an error,
so a typo cannot silently train with the default). `lora` is a mapping whose keys can be overridden one
by one (`train.overrides: {lora: {r: 16}}`), or null for a full fine-tune.

Machine matters (threads, memory, GPUs per node, partition, account) belong to Snakemake profiles, not
here; `nproc_per_node` is the one exception, because XTuner's ZeRO-3 run needs it to be launched at all.
"""

from __future__ import annotations

import copy
import keyword
import math
import re
from typing import Any

from zhufu.errors import ConfigError

# Every key a profile may have, with its meaning. The defaults are the cpu-tiny profile's.
BASE: dict[str, Any] = {
    "description": "",
    # model
    "prompt_template": "qwen_chat",  # a key of xtuner.utils.PROMPT_TEMPLATE
    "torch_dtype": "float32",  # float32 | float16 | bfloat16
    "quantization": None,  # None | "nf4" (bitsandbytes 4-bit, double quantisation; needs CUDA)
    # None: full fine-tune. modules_to_save: modules trained whole beside the LoRA matrices (saved in the
    # adapter, merged into the model).
    "lora": {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": None, "modules_to_save": None},
    "trust_remote_code": True,
    "use_varlen_attn": False,
    # data
    "max_length": 256,
    "pack_to_max_length": False,
    "shuffle_before_pack": True,
    "dataloader_num_workers": 0,
    "map_num_proc": 1,  # processes that tokenise the dataset (XTuner's default is 32)
    # schedule and optimiser
    "batch_size": 4,  # per device
    "accumulative_counts": 1,
    "max_iters": 300,  # None: train for max_epochs
    "max_epochs": 3,
    "lr": 5e-3,
    "betas": [0.9, 0.999],
    "weight_decay": 0.0,
    "max_norm": 1.0,
    "warmup_ratio": 0.03,
    "optim_wrapper": "OptimWrapper",  # OptimWrapper (fp32, CPU) | AmpOptimWrapper (GPU)
    "amp_dtype": "float16",  # AmpOptimWrapper's dtype
    "deepspeed": None,  # None | deepspeed_zero1/2/3 | deepspeed_zero3_offload | a JSON path
    "nproc_per_node": 1,  # >1: launched with torch.distributed.run (XTuner's NPROC_PER_NODE)
    # checkpoints, logs and evaluation during training
    "save_steps": 100,
    "save_total_limit": 3,  # -1 keeps all
    "log_interval": 10,
    "evaluation_freq": 100,
    "evaluation_max_new_tokens": 64,
    "seed": 20240501,
    "deterministic": False,
    "dist_backend": "nccl",
    # the train rule: protect() its output (a GPU run's checkpoints are worth hours), and the default
    # resources a job asks a scheduler for (a Snakemake profile's set-resources overrides them)
    "protect_checkpoints": True,
    "mem_mb": 4000,
    "runtime_min": 60,
    # the format check refuses a training set with fewer samples (after XTuner's processing) than this, or
    # than one optimiser step (batch_size × accumulative_counts × nproc_per_node), before training starts
    "min_samples": 16,
}

# The seed's and Tianji's QLoRA settings for a 7B chat model on one 24 GB GPU (both QLoRA profiles share them).
_QLORA_7B_24GB: dict[str, Any] = {
    "quantization": "nf4",
    "lora": {"r": 64, "alpha": 16, "dropout": 0.1, "target_modules": None, "modules_to_save": None},
    "max_length": 2048,
    "pack_to_max_length": True,
    "batch_size": 1,
    "accumulative_counts": 16,
    "max_iters": None,
    "max_epochs": 3,
    "lr": 2e-4,
    "warmup_ratio": 0.03,
    "optim_wrapper": "AmpOptimWrapper",
    "save_steps": 50,
    "save_total_limit": 10,
    "evaluation_freq": 50,
    "evaluation_max_new_tokens": 600,
    "map_num_proc": 8,
    "mem_mb": 48000,
    "runtime_min": 720,
}

CPU_TINY_EVERY = {"evaluation_freq": 500, "save_steps": 500}

PROFILES: dict[str, dict[str, Any]] = {
    "cpu-tiny": {
        "description": "the embedded default: the tiny Qwen2 with LoRA in fp32 on CPU (about four minutes on 2 cores)",
        "protect_checkpoints": False,
        # The tiny base model is random: LoRA over frozen random embeddings cannot learn the vocabulary
        # (loss 8.2 -> 5.5 in 300 iterations, garbled answers). Training embeddings and head whole beside
        # the LoRA matrices brings it to 2.1 and fluent, style-bearing answers in the same time.
        "lora": {**BASE["lora"], "modules_to_save": ["embed_tokens", "lm_head"]},
        # 3000 iterations (about 140 s on 2 idle cores) over config.yaml's 6 rounds: the tuned model then names
        # the held-out request's recipient in about 3 answers of 4 and its scene in about half. At 600 it
        # learns the styles but hardly looks at the request (recipient 0.2); bench/recipient_scene.py.
        "max_iters": 3000,
        # XTuner's chat hook and a checkpoint every 500 iterations, not every 100: 30 rounds of six answers
        # one at a time, and 30 checkpoints, were about a seventh of the default's training time
        **CPU_TINY_EVERY,
    },
    "cpu-tiny-internlm2": {
        "description": "the tiny InternLM2 (model.tiny.architecture: internlm2) with LoRA in fp32 on CPU",
        "protect_checkpoints": False,
        "prompt_template": "internlm2_chat",
        # InternLM2's names for the embeddings and the output head (Qwen2's embed_tokens and lm_head)
        "lora": {**BASE["lora"], "modules_to_save": ["tok_embeddings", "output"]},
        "max_iters": 3000,
        **CPU_TINY_EVERY,
    },
    "internlm2-chat-7b-qlora": {
        **_QLORA_7B_24GB,
        "description": "the seed's and Tianji's run: internlm2-chat-7b, QLoRA on one 24 GB GPU",
        "prompt_template": "internlm2_chat",
        "torch_dtype": "float16",
    },
    "qwen2.5-7b-instruct-qlora": {
        **_QLORA_7B_24GB,
        "description": "Qwen2.5-7B-Instruct, QLoRA on one 24 GB GPU",
        "prompt_template": "qwen_chat",
        "torch_dtype": "bfloat16",
        "amp_dtype": "bfloat16",
    },
    "internlm2-chat-7b-full-zero3": {
        "description": "internlm2-chat-7b, full fine-tune with DeepSpeed ZeRO-3 on 8 GPUs of one node",
        "prompt_template": "internlm2_chat",
        "torch_dtype": "bfloat16",
        "quantization": None,
        "lora": None,
        "max_length": 2048,
        "pack_to_max_length": True,
        "batch_size": 1,
        "accumulative_counts": 2,
        "max_iters": None,
        "max_epochs": 3,
        "lr": 2e-5,
        "optim_wrapper": "AmpOptimWrapper",
        "amp_dtype": "bfloat16",
        "deepspeed": "deepspeed_zero3",
        "nproc_per_node": 8,
        "save_steps": 200,
        "save_total_limit": 2,
        "evaluation_freq": 200,
        "evaluation_max_new_tokens": 600,
        "map_num_proc": 8,
        "mem_mb": 400000,
        "runtime_min": 1440,
    },
}


# The settings of a profile that are the train rule's, not XTuner's: what a scheduler is asked for and whether
# the checkpoints are protect()ed. They reach the rule's resources: and output flags only, so changing one
# re-renders nothing and retrains nothing (Snakemake does not rerun a job for its resources).
RULE_KEYS = ("protect_checkpoints", "mem_mb", "runtime_min")


def warmup_iterations(ratio: float, max_iters: int) -> int:
    """The warm-up of an iteration-based schedule: none for ratio 0, else at least 2 iterations, since
    mmengine's LinearLR over a single step never leaves its start factor."""
    return max(2, round(ratio * max_iters)) if ratio else 0


def training_overrides(config: dict[str, Any]) -> dict[str, Any]:
    """config `train.overrides` without the rule's keys: what the rendered XTuner config depends on."""
    return {k: v for k, v in (config["train"].get("overrides") or {}).items() if k not in RULE_KEYS}


# The chat template each tiny architecture's tokenizer is built for (zhufu.train.base_model): its special
# tokens, its BOS. A profile whose template is another family's would train on prompts the model never sees.
TINY_TEMPLATES = {"qwen2": ("qwen_chat",), "internlm2": ("internlm2_chat",)}


def check_model_matches(profile: dict[str, Any], model: dict[str, Any]) -> None:
    """ConfigError when a tiny base model's architecture and the profile's template disagree."""
    if model.get("source") != "tiny":
        return
    architecture = (model.get("tiny") or {}).get("architecture", "qwen2")
    if profile["prompt_template"] not in TINY_TEMPLATES[architecture]:
        fits = [
            n
            for n, p in PROFILES.items()
            if p.get("prompt_template", BASE["prompt_template"]) in TINY_TEMPLATES[architecture]
        ]
        raise ConfigError(
            f"train.profile {profile['name']} uses the {profile['prompt_template']} template, but "
            f"model.tiny.architecture {architecture} is built for {TINY_TEMPLATES[architecture][0]}; choose "
            f"train.profile {' or '.join(fits)}, or set train.overrides.prompt_template"
        )


def resolve_profile(name: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The profile `name` with `overrides` applied; ConfigError names an unknown profile or key."""
    if name not in PROFILES:
        raise ConfigError(f"train.profile: unknown profile {name!r}; choose one of {', '.join(PROFILES)}")
    profile = copy.deepcopy(BASE)
    profile.update(copy.deepcopy(PROFILES[name]))
    for key, value in (overrides or {}).items():
        if key not in BASE:
            raise ConfigError(
                f"train.overrides.{key}: not a training setting; known settings: {', '.join(sorted(BASE))}"
            )
        if key == "lora" and isinstance(value, dict) and isinstance(profile["lora"], dict):
            unknown = set(value) - set(BASE["lora"])
            if unknown:
                raise ConfigError(
                    f"train.overrides.lora.{sorted(unknown)[0]}: unknown; known: {', '.join(BASE['lora'])}"
                )
            profile["lora"] = {**profile["lora"], **value}
        else:
            profile[key] = copy.deepcopy(value)
    _check(profile, name)
    profile["name"] = name
    return profile


_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _is_name_list(v: Any) -> bool:
    return v is None or (isinstance(v, list) and all(isinstance(x, str) and _NAME.match(x) for x in v))


# What each setting may hold: (test, what it must be). Every value ends up in the rendered XTuner config, so
# a value of another shape is refused here with its key, before anything is written.
_SHAPES: dict[str, tuple[Any, str]] = {
    "description": (lambda v: isinstance(v, str), "a string"),
    "prompt_template": (
        lambda v: isinstance(v, str) and bool(_NAME.match(v)) and not keyword.iskeyword(v),
        "the name of an XTuner template (a key of xtuner.utils.PROMPT_TEMPLATE, e.g. qwen_chat)",
    ),
    "torch_dtype": (lambda v: v in ("float32", "float16", "bfloat16"), "float32, float16 or bfloat16"),
    "quantization": (lambda v: v in (None, "nf4"), "null or nf4"),
    "lora": (lambda v: v is None or isinstance(v, dict), "a mapping of LoRA settings, or null"),
    "trust_remote_code": (lambda v: isinstance(v, bool), "true or false"),
    "use_varlen_attn": (lambda v: isinstance(v, bool), "true or false"),
    "max_length": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "pack_to_max_length": (lambda v: isinstance(v, bool), "true or false"),
    "shuffle_before_pack": (lambda v: isinstance(v, bool), "true or false"),
    "dataloader_num_workers": (lambda v: _is_int(v) and v >= 0, "an integer ≥ 0"),
    "map_num_proc": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "batch_size": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "accumulative_counts": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "max_iters": (lambda v: v is None or (_is_int(v) and v >= 1), "a positive integer, or null"),
    "max_epochs": (lambda v: v is None or (_is_number(v) and v > 0), "a positive number, or null"),
    "lr": (lambda v: _is_number(v) and v > 0, "a positive finite number"),
    "betas": (
        lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_number(b) for b in v),
        "a list of two finite numbers",
    ),
    "weight_decay": (lambda v: _is_number(v) and v >= 0, "a finite number ≥ 0"),
    "max_norm": (lambda v: _is_number(v) and v > 0, "a positive finite number"),
    "warmup_ratio": (lambda v: _is_number(v) and 0 <= v < 1, "a number from 0 up to (not including) 1"),
    "optim_wrapper": (lambda v: v in ("OptimWrapper", "AmpOptimWrapper"), "OptimWrapper or AmpOptimWrapper"),
    "amp_dtype": (lambda v: v in ("float16", "bfloat16"), "float16 or bfloat16"),
    "deepspeed": (
        lambda v: v is None or (isinstance(v, str) and bool(v.strip()) and "\n" not in v),
        "null, deepspeed_zero1/2/3(_offload) or the path of a DeepSpeed JSON",
    ),
    "nproc_per_node": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "save_steps": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "save_total_limit": (lambda v: _is_int(v) and (v == -1 or v >= 1), "-1 (keep all) or a positive integer"),
    "log_interval": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "evaluation_freq": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "evaluation_max_new_tokens": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "seed": (_is_int, "an integer, so that every run is the same run"),
    "deterministic": (lambda v: isinstance(v, bool), "true or false"),
    "dist_backend": (lambda v: v in ("nccl", "gloo", "hccl", "mpi"), "nccl, gloo, hccl or mpi"),
    "protect_checkpoints": (lambda v: isinstance(v, bool), "true or false"),
    "mem_mb": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "runtime_min": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "min_samples": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
}
_LORA_SHAPES: dict[str, tuple[Any, str]] = {
    "r": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "alpha": (lambda v: _is_number(v) and v > 0, "a positive finite number"),
    "dropout": (lambda v: _is_number(v) and 0 <= v < 1, "a number from 0 up to (not including) 1"),
    "target_modules": (_is_name_list, "null or a list of module names (letters, digits, _)"),
    "modules_to_save": (_is_name_list, "null or a list of module names (letters, digits, _)"),
}


def _shape_error(where: str, key: str, value: Any, wanted: str) -> ConfigError:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return ConfigError(f"{where}: {key} must be {wanted}, not {shown}")


def _check(p: dict[str, Any], name: str) -> None:
    where = f"train (profile {name} with overrides)"
    for key, (ok, wanted) in _SHAPES.items():
        if not ok(p[key]):
            raise _shape_error(where, key, p[key], wanted)
    if isinstance(p["lora"], dict):
        for key, (ok, wanted) in _LORA_SHAPES.items():
            if not ok(p["lora"].get(key)):
                raise _shape_error(where, f"lora.{key}", p["lora"].get(key), wanted)
    if p["quantization"] and not p["lora"]:
        raise ConfigError(
            f"{where}: quantization (QLoRA) needs lora settings; a quantised model can't be fully tuned"
        )
    if p["max_iters"] is None and not p["max_epochs"]:
        raise ConfigError(f"{where}: set max_iters or max_epochs")
