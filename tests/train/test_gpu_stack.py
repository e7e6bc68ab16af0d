"""The GPU stack's parts match (tools/check_stack.py), and the QLoRA profile builds as far as this machine allows."""

import importlib.util
import json
import subprocess
import sys
import warnings

import pytest
from helpers import ROOT


def _tool(name: str):
    """A script of tools/ as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check_stack = _tool("check_stack")


def test_bitsandbytes_ships_a_native_library_for_torchs_cuda():
    """The library-match test: fails when bitsandbytes has no libbitsandbytes_cuda<XY>.so for torch.version.cuda."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "check_stack.py")], capture_output=True, text=True, timeout=300
    )
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "check_stack: the stack matches" in result.stdout
    import torch

    expected = f"libbitsandbytes_cuda{torch.version.cuda.replace('.', '')}.so" if torch.version.cuda else None
    if expected:
        assert f"{expected}: present" in result.stdout


def test_a_cuda_version_without_a_library_is_a_mismatch():
    """bitsandbytes 0.45.5 has no CUDA 13.0 library: the check must say so (torch 2.14's CUDA)."""
    name, present = check_stack.bnb_native_library("13.0")
    assert name == "libbitsandbytes_cuda130.so" and present is False
    name, present = check_stack.bnb_native_library("12.8")
    assert name == "libbitsandbytes_cuda128.so" and present is True


@pytest.fixture(scope="module")
def qlora_config(tmp_path_factory):
    from zhufu.tianji import TIANJI_SYSTEM
    from zhufu.train.base_model import build_tiny_model
    from zhufu.train.xtuner_config import write_config

    root = tmp_path_factory.mktemp("qlora")
    rows = [
        {
            "conversation": [
                {
                    "system": TIANJI_SYSTEM,
                    "input": f"祝妈妈生日快乐{i}",
                    "output": "生日快乐，妈妈！" * (1 + i % 3),
                }
            ]
        }
        for i in range(40)
    ]
    (root / "train.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    model = build_tiny_model(root / "train.json", root / "base_model", seed=1)
    path = write_config(
        root / "xtuner_config.py",
        profile="internlm2-chat-7b-qlora",
        overrides=None,
        model_path=model,
        data_path=root / "train.json",
    )
    from mmengine.config import Config

    return Config.fromfile(str(path))


def test_qlora_profile_builds_its_quantization_and_lora_configs(qlora_config):
    from xtuner.registry import BUILDER

    warnings.filterwarnings("ignore")
    quant = BUILDER.build(qlora_config.model.llm.quantization_config)
    assert type(quant).__name__ == "BitsAndBytesConfig"
    assert quant.load_in_4bit and quant.bnb_4bit_quant_type == "nf4" and quant.bnb_4bit_use_double_quant
    lora = BUILDER.build(qlora_config.model.lora)
    assert (lora.r, lora.lora_alpha, lora.task_type) == (64, 16, "CAUSAL_LM")


def test_qlora_profile_builds_its_model_wrapper_as_far_as_this_machine_allows(qlora_config):
    """On a CPU, transformers accepts this bitsandbytes and stops at bitsandbytes' own "CUDA is required"
    (with bitsandbytes >= 0.48 it crashed with AttributeError first); on a GPU the 4-bit model builds."""
    import torch
    from xtuner.registry import BUILDER

    warnings.filterwarnings("ignore")
    if not hasattr(torch.cpu, "is_bf16_supported"):  # as zhufu's launcher does for XTuner on CPU
        torch.cpu.is_bf16_supported = lambda *a, **k: False
    if torch.cuda.is_available():
        model = BUILDER.build(qlora_config.model)
        kinds = {type(m).__name__ for m in model.llm.modules()}
        assert "Linear4bit" in kinds
    else:
        with pytest.raises(RuntimeError, match="CUDA is required"):
            BUILDER.build(qlora_config.model)

    plain = qlora_config.model.copy()
    plain.llm.pop("quantization_config")
    plain.llm.torch_dtype = torch.float32
    model = BUILDER.build(plain)
    assert type(model).__name__ == "SupervisedFinetune"
    assert type(model.llm).__name__ == "PeftModelForCausalLM"
    adapted = [n for n, _ in model.llm.named_modules() if n.endswith("lora_A")]
    assert len(adapted) == 2 * 7, "LoRA on q, k, v, o, gate, up and down of both tiny layers"
    trainable = {n.split(".")[-3] for n, p in model.llm.named_parameters() if p.requires_grad}
    assert trainable == {"lora_A", "lora_B"}
