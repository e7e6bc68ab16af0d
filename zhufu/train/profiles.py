"""Training profiles: the hyper-parameters one XTuner config template is rendered with.

A profile is a flat mapping; config `train.overrides` replaces any of its keys (an unknown key is an error,
so a typo cannot silently train with the default). `lora` is a mapping whose keys can be overridden one
by one (`train.overrides: {lora: {r: 16}}`), or null for a full fine-tune.

Machine matters (threads, memory, GPUs per node, partition, account) belong to Snakemake profiles, not
here; `nproc_per_node` is the one exception, because XTuner's ZeRO-3 run needs it to be launched at all.
"""

from __future__ import annotations

import copy
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

PROFILES: dict[str, dict[str, Any]] = {
    "cpu-tiny": {
        "description": "the embedded default: the tiny Qwen2 with LoRA in fp32 on CPU (about a minute)",
        "protect_checkpoints": False,
        # The tiny base model is random: LoRA over frozen random embeddings cannot learn the vocabulary
        # (loss 8.2 -> 5.5 in 300 iterations, garbled answers). Training embeddings and head whole beside
        # the LoRA matrices brings it to 2.1 and fluent, style-bearing answers in the same time.
        "lora": {**BASE["lora"], "modules_to_save": ["embed_tokens", "lm_head"]},
        # 600 iterations (about 80 s on 2 idle cores): at 300 the loss is 2.1 and greedy answers collapse
        # onto one formal opening; at 600 it is 1.2 and 小红书 inputs get emoji and particles, 严肃 a letter.
        "max_iters": 600,
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


def training_overrides(config: dict[str, Any]) -> dict[str, Any]:
    """config `train.overrides` without the rule's keys: what the rendered XTuner config depends on."""
    return {k: v for k, v in (config["train"].get("overrides") or {}).items() if k not in RULE_KEYS}


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


def _check(p: dict[str, Any], name: str) -> None:
    where = f"train (profile {name} with overrides)"
    if p["torch_dtype"] not in ("float32", "float16", "bfloat16"):
        raise ConfigError(
            f"{where}: torch_dtype must be float32, float16 or bfloat16, not {p['torch_dtype']!r}"
        )
    if p["optim_wrapper"] not in ("OptimWrapper", "AmpOptimWrapper"):
        raise ConfigError(f"{where}: optim_wrapper must be OptimWrapper or AmpOptimWrapper")
    if p["quantization"] not in (None, "nf4"):
        raise ConfigError(f"{where}: quantization must be null or nf4, not {p['quantization']!r}")
    if p["quantization"] and not p["lora"]:
        raise ConfigError(
            f"{where}: quantization (QLoRA) needs lora settings; a quantised model can't be fully tuned"
        )
    if p["max_iters"] is None and not p["max_epochs"]:
        raise ConfigError(f"{where}: set max_iters or max_epochs")
    for key in ("batch_size", "accumulative_counts", "max_length", "save_steps", "nproc_per_node"):
        if not isinstance(p[key], int) or p[key] < 1:
            raise ConfigError(f"{where}: {key} must be a positive integer, not {p[key]!r}")
    if not isinstance(p["seed"], int):
        raise ConfigError(f"{where}: seed must be an integer so that every run is the same run")
