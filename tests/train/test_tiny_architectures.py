"""The tiny models of the real architectures: InternLM2 laid out as an internlm2-chat snapshot is (its own
modeling code from the installed xtuner, trust_remote_code, a sentencepiece tokenizer converted on load),
and the pieces of the installed stack that its path needs (protobuf, transformers' cache API)."""

import hashlib
import importlib.util
import json
from pathlib import Path

import pytest
from helpers import TIANJI_SYSTEM, run_cmd, tracked_files

from zhufu.train.base_model import build_tiny_model

RECIPIENTS = ["姐姐", "妹妹", "领导", "赵老师", "邻居赵大妈"]
SCENES = ["生日", "春节", "谈判顺利", "康复"]


def write_train(path: Path, n: int) -> Path:
    rows = []
    for i in range(n):
        r, s = RECIPIENTS[i % len(RECIPIENTS)], SCENES[i % len(SCENES)]
        out = f"亲爱的{r}，{s}快乐！愿你万事顺意，岁岁平安，前程似锦呀✨" * (1 + i % 3)
        rows.append({"conversation": [{"system": TIANJI_SYSTEM, "input": f"祝{r}{s}", "output": out}]})
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def internlm2(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("internlm2")
    train = write_train(tmp / "train.json", 40)
    return train, build_tiny_model(train, tmp / "model", architecture="internlm2", seed=3)


def digest(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir()) if p.is_file()}


def test_internlm2_is_laid_out_as_a_real_snapshot(internlm2):
    _, model = internlm2
    config = json.loads((model / "config.json").read_text())
    assert config["model_type"] == "internlm2"
    assert config["architectures"] == ["InternLM2ForCausalLM"]
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_internlm2.InternLM2ForCausalLM"
    assert config["tie_word_embeddings"] is False
    # the modeling files are the installed xtuner's, byte for byte (copied at build time, never committed)
    shipped = Path(importlib.util.find_spec("xtuner").origin).parent / "_lite/modelings/internlm2"
    for name in ("configuration_internlm2.py", "modeling_internlm2.py"):
        assert (model / name).read_bytes() == (shipped / name).read_bytes(), name
    committed = [f for f in tracked_files() if Path(f).name.endswith("_internlm2.py")]
    assert not committed, "third-party code must not be in the checkout"
    # a sentencepiece model and no tokenizer.json: transformers converts it on every load, as for the real one
    assert (model / "tokenizer.model").is_file() and not (model / "tokenizer.json").exists()
    tok_config = json.loads((model / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in tok_config["chat_template"] and tok_config["bos_token"] == "<s>"


def test_internlm2_tokenizer_is_converted_from_sentencepiece(internlm2):
    """Needs protobuf: without it transformers' LlamaConverter raises ImportError (InternLM/xtuner#356)."""
    from transformers import AutoTokenizer

    _, model = internlm2
    tok = AutoTokenizer.from_pretrained(model, trust_remote_code=True)
    assert tok.is_fast
    assert (tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (1, 2, 0)
    prompt = tok.apply_chat_template(
        [{"role": "system", "content": TIANJI_SYSTEM}, {"role": "user", "content": "祝姐姐生日"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert prompt.startswith("<s><|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
    pieces = tok.convert_ids_to_tokens(
        tok("<|im_start|>祝姐姐生日<|im_end|>", add_special_tokens=False).input_ids
    )
    # the special tokens are single pieces, and each Han character is one token (the request's 姐姐 is the
    # answer's 姐姐, so a model can learn to copy it)
    assert pieces == ["<|im_start|>", "祝", "姐", "姐", "生", "日", "<|im_end|>"]


def test_internlm2_is_built_deterministically(internlm2, tmp_path):
    train, model = internlm2
    again = build_tiny_model(train, tmp_path / "again", architecture="internlm2", seed=3)
    first, second = digest(model), digest(again)
    first.pop("zhufu_model.json"), second.pop("zhufu_model.json")  # it records the output path
    assert first == second
    other = build_tiny_model(train, tmp_path / "other", architecture="internlm2", seed=4)
    assert digest(other)["model.safetensors"] != first["model.safetensors"]


def test_installed_transformers_runs_internlm2_cached_generation(internlm2):
    """InternLM2's code calls DynamicCache.get_max_length(), which transformers 4.49 removed; 4.50 drops
    GenerationMixin from remote-code models. Cached greedy generation must give the uncached tokens."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, model_dir = internlm2
    tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True, torch_dtype=torch.float32)
    ids = tok("<|im_start|>user\n祝姐姐生日<|im_end|>\n<|im_start|>assistant\n", return_tensors="pt")
    kw = dict(max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=tok.eos_token_id)
    with torch.no_grad():
        cached = model.generate(**ids, use_cache=True, **kw)
        uncached = model.generate(**ids, use_cache=False, **kw)
    assert cached.shape[1] == ids.input_ids.shape[1] + 12
    assert cached.tolist() == uncached.tolist()


def test_unknown_architecture_is_named(tmp_path):
    from zhufu.errors import ModelError

    train = write_train(tmp_path / "train.json", 4)
    with pytest.raises(ModelError, match=r"model.tiny.architecture: 'llama' is not one of qwen2, internlm2"):
        build_tiny_model(train, tmp_path / "m", architecture="llama")
    assert not (tmp_path / "m").exists()


def test_profile_of_another_family_is_refused_before_any_job(project):
    overlay = project / "overlay.yaml"
    overlay.write_text("model: {tiny: {architecture: internlm2}}\n", encoding="utf-8")
    r = run_cmd(["snakemake", "-n", "--cores", "1", "--configfile", "overlay.yaml"], cwd=project, timeout=300)
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("zhufu: config error")]
    assert lines == [
        "zhufu: config error: train.profile cpu-tiny uses the qwen_chat template, but model.tiny.architecture "
        "internlm2 is built for internlm2_chat; choose train.profile cpu-tiny-internlm2 or "
        "internlm2-chat-7b-qlora or internlm2-chat-7b-full-zero3, or set train.overrides.prompt_template"
    ], r.stderr[-2000:]
    overlay.write_text(
        "model: {tiny: {architecture: internlm2}}\ntrain: {profile: cpu-tiny-internlm2}\n", encoding="utf-8"
    )
    r = run_cmd(["snakemake", "-n", "--cores", "1", "--configfile", "overlay.yaml"], cwd=project, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


def test_internlm2_of_another_shape_pads_its_vocabulary(tmp_path):
    """bench/gpu_qlora.py builds internlm2-chat-7b's shape this way on a GPU; here a small one on the CPU."""
    from transformers import AutoConfig

    from zhufu.train.base_model import build_internlm2

    texts = ["祝姐姐生日快乐", "愿你岁岁平安，万事顺意✨"]
    shape = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 4096,
    }
    out = build_internlm2(texts, tmp_path / "m", shape)
    config = AutoConfig.from_pretrained(out, trust_remote_code=True)
    assert (config.vocab_size, config.hidden_size, config.model_type) == (4096, 32, "internlm2")


def test_internlm2_answers_a_left_padded_batch_as_it_answers_each_request(internlm2):
    """The evaluation asks in batches (zhufu.model.chat.replies): InternLM2's own code must take the
    left padding's attention mask and positions, so each row gets its one-at-a-time answer."""
    from zhufu.model.chat import load_chat_model, replies, reply

    chat = load_chat_model(internlm2[1])
    texts = ["祝姐姐生日快乐", "祝领导春节快乐，严肃风格，要长一些", "你好"]
    for temperature in (0.0, 0.7):
        kw = dict(system="你是祝福大师", max_new_tokens=16, temperature=temperature)
        one = [reply(chat, t, seed=k, **kw) for k, t in enumerate(texts)]
        assert replies(chat, texts, seeds=[0, 1, 2], batch_size=3, **kw) == one
