"""Every training profile renders to an XTuner config that mmengine loads, with the values it promises."""

import ast
import itertools

import pytest
from helpers import ROOT, run_cmd

from zhufu.errors import ConfigError
from zhufu.tianji import TIANJI_EVALUATION_INPUTS, TIANJI_SYSTEM
from zhufu.train.profiles import PROFILES, resolve_profile
from zhufu.train.xtuner_config import write_config

# The profiles these tests and the docs name: PROFILES (the code under test) must hold at least these.
SHIPPED_PROFILES = [
    "cpu-tiny",
    "internlm2-chat-7b-qlora",
    "internlm2-chat-7b-full-zero3",
    "qwen2.5-7b-instruct-qlora",
]


def render(tmp_path, name, overrides=None, inputs=None):
    out = tmp_path / f"{name}.py"
    write_config(
        out,
        profile=name,
        overrides=overrides,
        model_path=tmp_path / "model",
        data_path=tmp_path / "train.json",
        evaluation_inputs=inputs,
    )
    return out


def load(path):
    from mmengine.config import Config

    return Config.fromfile(str(path))


def type_name(value):
    return value if isinstance(value, str) else getattr(value, "__name__", str(value))


@pytest.mark.parametrize("name", list(PROFILES))
def test_every_profile_renders_and_loads(tmp_path, name):
    profile = resolve_profile(name)
    cfg = load(render(tmp_path, name))
    assert cfg.pretrained_model_name_or_path == str(tmp_path / "model")
    assert cfg.train_dataset.dataset.data_files == {"train": str(tmp_path / "train.json")}
    assert cfg.max_length == profile["max_length"]
    assert cfg.batch_size == profile["batch_size"]
    assert cfg.accumulative_counts == profile["accumulative_counts"]
    assert cfg.lr == profile["lr"]
    assert cfg.randomness == {"seed": profile["seed"], "deterministic": False}
    assert cfg.train_dataloader.sampler.seed == profile["seed"]
    assert cfg.SYSTEM == TIANJI_SYSTEM
    assert cfg.evaluation_inputs == TIANJI_EVALUATION_INPUTS
    assert type_name(cfg.optim_wrapper.type).endswith(profile["optim_wrapper"])
    assert cfg.default_hooks.checkpoint.interval == profile["save_steps"]
    assert cfg.default_hooks.checkpoint.max_keep_ckpts == profile["save_total_limit"]
    hook = cfg.custom_hooks[1]
    assert type_name(hook.type).endswith("EvaluateChatHook")
    assert hook.every_n_iters == profile["evaluation_freq"]
    from xtuner.utils import PROMPT_TEMPLATE

    assert dict(cfg.prompt_template) == dict(PROMPT_TEMPLATE[profile["prompt_template"]])


def test_the_rendered_config_is_literal_only(tmp_path):
    """mmengine parses lazily: apart from XTuner's dict(...) idiom, no call may appear."""
    assert set(SHIPPED_PROFILES) <= set(PROFILES)
    for name in PROFILES:
        tree = ast.parse(render(tmp_path, name).read_text(encoding="utf-8"))
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
        assert calls and all(isinstance(c.func, ast.Name) and c.func.id == "dict" for c in calls), name


def test_cpu_tiny_is_lora_fp32_with_optimwrapper(tmp_path):
    cfg = load(render(tmp_path, "cpu-tiny"))
    assert str(cfg.model.llm.torch_dtype).endswith("float32")
    assert "quantization_config" not in cfg.model.llm
    assert cfg.model.lora.r == 8
    assert cfg.model.lora.modules_to_save == ["embed_tokens", "lm_head"]  # the tiny base is random
    assert type_name(cfg.optim_wrapper.type) == "OptimWrapper"
    assert "dtype" not in cfg.optim_wrapper
    assert cfg.train_cfg.max_iters == 3000
    assert cfg.lr == 5e-3
    assert cfg.max_length == 256


def test_internlm2_qlora_has_the_seed_settings(tmp_path):
    inputs = ["祝姐姐生日快乐", "祝妹妹谈判顺利，小红书风格"]
    cfg = load(render(tmp_path, "internlm2-chat-7b-qlora", inputs=inputs))
    q = cfg.model.llm.quantization_config
    assert q.load_in_4bit and q.bnb_4bit_use_double_quant and q.bnb_4bit_quant_type == "nf4"
    assert str(q.bnb_4bit_compute_dtype).endswith("float16")
    assert (cfg.model.lora.r, cfg.model.lora.lora_alpha, cfg.model.lora.lora_dropout) == (64, 16, 0.1)
    assert type_name(cfg.optim_wrapper.type) == "AmpOptimWrapper" and cfg.optim_wrapper.dtype == "float16"
    assert cfg.prompt_template.STOP_WORDS == ["<|im_end|>"]  # internlm2_chat
    assert cfg.max_length == 2048 and cfg.pack_to_max_length is True
    assert (cfg.batch_size, cfg.accumulative_counts, cfg.lr, cfg.warmup_ratio) == (1, 16, 2e-4, 0.03)
    assert cfg.save_steps == 50 and cfg.save_total_limit == 10 and cfg.evaluation_freq == 50
    assert cfg.evaluation_inputs == inputs
    assert cfg.train_cfg.max_epochs == 3
    # epoch-based warm-up, as in XTuner's own configs
    assert cfg.param_scheduler[0].end == pytest.approx(0.03 * 3)


def test_full_zero3_profile_has_no_lora_and_asks_for_deepspeed(tmp_path):
    profile = resolve_profile("internlm2-chat-7b-full-zero3")
    assert profile["deepspeed"] == "deepspeed_zero3" and profile["nproc_per_node"] > 1
    cfg = load(render(tmp_path, "internlm2-chat-7b-full-zero3"))
    assert "lora" not in cfg.model
    assert "quantization_config" not in cfg.model.llm


def test_overrides_reach_the_config(tmp_path):
    cfg = load(
        render(
            tmp_path, "internlm2-chat-7b-qlora", {"lr": 1e-4, "max_epochs": 1, "lora": {"r": 16}, "seed": 7}
        )
    )
    assert cfg.lr == 1e-4 and cfg.max_epochs == 1
    assert cfg.model.lora.r == 16 and cfg.model.lora.lora_alpha == 16  # the rest of lora is kept
    assert cfg.randomness.seed == 7


def test_iteration_warmup_is_at_least_two_steps(tmp_path):
    """mmengine's LinearLR over one step never leaves start_factor (the run would train at lr × 1e-5)."""
    cfg = load(render(tmp_path, "cpu-tiny", {"max_iters": 20}))
    assert cfg.param_scheduler[0].end >= 2


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"learning_rate": 1e-4}, "train.overrides.learning_rate: not a training setting"),
        ({"lora": {"rank": 8}}, "train.overrides.lora.rank"),
        ({"quantization": "nf4", "lora": None}, "needs lora"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
    ],
)
def test_bad_overrides_are_named(overrides, message):
    with pytest.raises(ConfigError, match=message):
        resolve_profile("cpu-tiny", overrides)


def test_unknown_profile_is_named():
    with pytest.raises(ConfigError, match="unknown profile 'gpt-5'"):
        resolve_profile("gpt-5")


def test_render_config_cli(tmp_path):
    out = tmp_path / "cfg.py"
    result = run_cmd(
        ["zhufu", "render-config", "--profile", "qwen2.5-7b-instruct-qlora", "-o", str(out)],
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "PROMPT_TEMPLATE.qwen_chat" in out.read_text(encoding="utf-8")
    listing = run_cmd(["zhufu", "render-config", "--list"], cwd=ROOT, timeout=60)
    assert listing.returncode == 0, listing.stderr
    names = [line.split(":")[0] for line in listing.stdout.splitlines()]
    assert names == list(PROFILES) and set(SHIPPED_PROFILES) <= set(names)


def _batches(cfg, size: int, batch_size: int, count: int):
    """`count` batches of dataset indices through mmengine's own iteration-loop iterator, with the sampler
    built from the rendered config as mmengine's Runner builds it; returns them and the iterator's epoch."""
    from mmengine.registry import DATA_SAMPLERS
    from mmengine.runner.loops import _InfiniteDataloaderIterator
    from torch.utils.data import DataLoader

    sampler = DATA_SAMPLERS.build(cfg.train_dataloader.sampler, default_args={"dataset": list(range(size))})
    loader = DataLoader(list(range(size)), batch_size=batch_size, sampler=sampler)
    iterator = _InfiniteDataloaderIterator(loader)
    return [next(iterator).tolist() for _ in range(count)], iterator._epoch


def test_iteration_training_never_restarts_the_dataloader(tmp_path):
    """mmengine's iteration loop sleeps 2 s whenever the dataloader runs out ("Prevent possible deadlock"):
    with 8 samples and batch 4 that was 1.00 s of data_time per iteration. The iteration profiles' sampler
    never runs out, and still passes over every sample once per pass, reshuffled."""
    cfg = load(render(tmp_path, "cpu-tiny", {"max_iters": 20}))
    batches, epoch = _batches(cfg, size=8, batch_size=4, count=6)  # three passes over the data
    assert epoch == 0  # never restarted, so never slept
    passes = [sum(batches[i : i + 2], []) for i in range(0, 6, 2)]
    assert all(sorted(p) == list(range(8)) for p in passes)
    assert len({tuple(p) for p in passes}) > 1  # reshuffled, not one order repeated


def test_epoch_training_keeps_a_finite_sampler(tmp_path):
    """XTuner's TrainLoop counts max_epochs × len(dataloader) iterations: its sampler must end each epoch."""
    cfg = load(render(tmp_path, "internlm2-chat-7b-qlora"))
    from mmengine.registry import DATA_SAMPLERS

    sampler = DATA_SAMPLERS.build(cfg.train_dataloader.sampler, default_args={"dataset": list(range(8))})
    assert len(list(itertools.islice(sampler, 9))) == 8  # ends after one pass (islice: an endless one fails)


def test_resource_keys_never_reach_the_rendered_config():
    """mem_mb, runtime_min and protect_checkpoints are the train rule's: render_config's overrides drop them."""
    from zhufu.train.profiles import training_overrides

    overrides = {"lr": 0.001, "mem_mb": 9000, "runtime_min": 90, "protect_checkpoints": True}
    assert training_overrides({"train": {"overrides": overrides}}) == {"lr": 0.001}
