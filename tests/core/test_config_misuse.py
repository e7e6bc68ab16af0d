"""What a careless or hostile user feeds the config and the files it names: one line naming the key or
file, a non-zero exit, never a traceback, never code run from config, never a key echoed."""

from __future__ import annotations

import ast
import copy
import json
import sys
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, run_cmd

from zhufu.config import load_config, validate_config
from zhufu.errors import ConfigError, DataError, ProviderError
from zhufu.generate.providers import resolve_api_key
from zhufu.grid import load_suitability
from zhufu.io import read_json
from zhufu.teacher.bank import load_phrases
from zhufu.train.profiles import resolve_profile
from zhufu.train.xtuner_config import _literal, render_config

PWNED = "/tmp/zhufu-hardening-pwned"

# --- train.overrides: nothing from config reaches the XTuner config as code --------------------------------

INJECTIONS = [
    ({"description": f"x\nimport os; os.system('touch {PWNED}')"}, None),  # a comment line, rendered by repr
    ({"prompt_template": f"qwen_chat; __import__('os').system('touch {PWNED}')"}, "prompt_template must be"),
    ({"lora": {"target_modules": {f"a=__import__('os').system('touch {PWNED}') or 1, b": 1}}}, "lora.target"),
    ({"lora": {"modules_to_save": [f"x')\nimport os; os.system('touch {PWNED}')#"]}}, "lora.modules_to_save"),
    ({"dist_backend": f"nccl'); __import__('os').system('touch {PWNED}'); ('"}, "dist_backend must be"),
    ({"deepspeed": f"z\nimport os; os.system('touch {PWNED}')"}, "deepspeed must be"),
    ({"lora": "r=8"}, "lora must be a mapping"),
    ({"max_iters": float("nan")}, "max_iters must be"),
    ({"lr": float("inf")}, "lr must be a positive finite number"),
    ({"betas": [0.9]}, "betas must be a list of two"),
    ({"seed": "42"}, "seed must be an integer"),
    ({"batch_size": True}, "batch_size must be a positive integer"),
    ({"max_length": 2.5}, "max_length must be a positive integer"),
    ({"min_samples": 0}, "min_samples must be a positive integer"),
]


@pytest.mark.parametrize(("overrides", "message"), INJECTIONS, ids=[str(i) for i in range(len(INJECTIONS))])
def test_overrides_are_literals_or_refused(tmp_path, overrides, message):
    if message is not None:
        with pytest.raises(ConfigError, match=message):
            resolve_profile("cpu-tiny", overrides)
        return
    text = render_config(resolve_profile("cpu-tiny", overrides), model_path="/m", data_path="/d")
    tree = ast.parse(text)
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    assert all(isinstance(c.func, ast.Name) and c.func.id == "dict" for c in calls)
    imports = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert "os" not in imports
    assert not any(line.startswith("import os") for line in text.splitlines())


def test_literal_refuses_a_dict_key_that_is_not_a_name():
    assert _literal({"r": 8, "names": ["a"]}) == "dict(r=8, names=['a'])"
    for key in ("a=__import__('os').system('id') or 1, b", "class", "1x", 3):
        with pytest.raises(ConfigError, match="not a Python name"):
            _literal({key: 1})


def test_injected_override_in_a_config_file_is_one_line_and_writes_nothing(tmp_path):
    config = yaml.safe_load((ROOT / "config.yaml").read_text(encoding="utf-8"))
    config["train"]["overrides"] = {"prompt_template": "qwen_chat\nimport os"}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    out = tmp_path / "x.py"
    r = run_cmd([sys.executable, "-m", "zhufu", "render-config", "--config", str(path), "-o", str(out)], ROOT)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "prompt_template must be" in r.stderr
    assert not out.exists()


# --- keys are never echoed --------------------------------------------------------------------------------

KEYS = [
    "sk-3f9a0c1b2d4e5f60718293a4b5c6d7e8",  # DeepSeek/OpenAI shape (has '-': fails the name pattern)
    "0123456789abcdef0123456789abcdef.Xy7Zq8Wv9UtS",  # ZhipuAI id.secret
    "AIzaSyB1c2D3e4F5g6H7i8J9k0LmNoPqRsTuVw",  # matches the env-var-name pattern
    "3f9a0c1b2d4e5f60718293a4b5c6d7e8",  # 32 hex: matches the env-var-name pattern too
]


@pytest.fixture(scope="module")
def default_config():
    return load_config()


@pytest.mark.parametrize("key", KEYS)
def test_a_key_in_api_key_env_is_refused_and_not_shown(default_config, key):
    config = copy.deepcopy(default_config)
    config["provider"].update(kind="openai", base_url="https://api.deepseek.com/v1", api_key_env=key)
    with pytest.raises(ConfigError) as e:
        validate_config(config, "c.yaml")
    assert "provider.api_key_env" in str(e.value) and key not in str(e.value)
    assert key[:12] not in str(e.value)
    with pytest.raises(ProviderError) as e2:  # the provider layer refuses it too (a config built in code)
        resolve_api_key({"kind": "openai", "api_key_env": key})
    assert key[:12] not in str(e2.value)


def test_a_real_env_var_name_still_names_itself(monkeypatch):
    monkeypatch.delenv("DEEPSEEK_API_KEY", raising=False)
    with pytest.raises(ProviderError, match="environment variable DEEPSEEK_API_KEY is not set"):
        resolve_api_key({"kind": "openai", "api_key_env": "DEEPSEEK_API_KEY"})


def test_the_cli_does_not_echo_a_key_from_the_config(tmp_path):
    config = yaml.safe_load((ROOT / "config.yaml").read_text(encoding="utf-8"))
    config["provider"].update(kind="openai", base_url="https://api.deepseek.com/v1", api_key_env=KEYS[0])
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    r = run_cmd([sys.executable, "-m", "zhufu", "estimate", "--config", str(path)], ROOT, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert KEYS[0][:12] not in r.stderr + r.stdout and "api_key_env" in r.stderr


# --- templates ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (
            "prompt_template",
            '用JSON回答 {"text": …}，字数少于{max_chars}字',
            r"prompt_template: unknown field \{\"text\"\}",
        ),
        ("prompt_template", "字数少于{max_chars}字 {", "prompt_template: not a valid template"),
        ("prompt_template", "{recipient.__class__.__mro__}", r"unknown field \{recipient.__class__"),
        ("prompt_template", "{0}", r"unknown field \{0\}"),
        ("prompt_template", "{max_chars:{scene}}", "a field inside the format"),
        ("input_templates", ["祝{recipient}{scene}}"], r"input_templates\[0\]: not a valid template"),
        ("input_templates", ["祝{recipient}{name}"], r"input_templates\[0\]: unknown field \{name\}"),
    ],
)
def test_a_brace_in_a_template_is_one_line(default_config, key, value, message):
    config = copy.deepcopy(default_config)
    config[key] = value
    with pytest.raises(ConfigError, match=message):
        validate_config(config, "c.yaml")


def test_a_brace_in_a_style_prompt_is_named(default_config):
    config = copy.deepcopy(default_config)
    name = next(iter(config["styles"]))
    config["styles"][name]["prompt"] = "像这样写：{examples} 然后 {"
    with pytest.raises(ConfigError, match=rf"styles\.{name}\.prompt: not a valid template"):
        validate_config(config, "c.yaml")


def test_doubled_braces_are_literal_braces(default_config):
    config = copy.deepcopy(default_config)
    config["prompt_template"] = (
        "用 {{json}} 回答，少于{max_chars}字：{recipient}{scene}{style_prompt}{injection}"
    )
    assert validate_config(config, "c.yaml")["prompt_template"] == config["prompt_template"]


# --- files the config names, and the config file itself ---------------------------------------------------

GBK_CSV = "对象,生日,春节\n姐姐,1,1\n".encode("gbk")


def test_a_gbk_suitability_csv_is_one_line(tmp_path):
    path = tmp_path / "s.csv"
    path.write_bytes(GBK_CSV)
    with pytest.raises(ConfigError, match=rf"{path}: not UTF-8 .*iconv -f GBK"):
        load_suitability(path)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"recipient,a\nx,1\x00\n", "expected 1 or 0, got '1\\\\x00'"),  # a NUL byte
        (b"recipient,a,b\nx,1\n", "1 values for 2 scenes"),
        (b"recipient,a\nx,yes\n", "expected 1 or 0"),
        (b"", "expected a header row"),
    ],
)
def test_broken_suitability_csvs_are_one_line(tmp_path, data, message):
    path = tmp_path / "s.csv"
    path.write_bytes(data)
    with pytest.raises(ConfigError, match=message):
        load_suitability(path)


def test_the_clean_cli_names_a_gbk_suitability_csv(tmp_path):
    config = yaml.safe_load((ROOT / "config.yaml").read_text(encoding="utf-8"))
    (tmp_path / "s.csv").write_bytes(GBK_CSV)
    config["grid"]["suitability"] = str(tmp_path / "s.csv")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    (tmp_path / "m.json").write_text("[]", encoding="utf-8")
    args = [
        "clean",
        str(tmp_path / "m.json"),
        "-o",
        str(tmp_path / "t.json"),
        "--report",
        str(tmp_path / "r"),
    ]
    r = run_cmd([sys.executable, "-m", "zhufu", *args, "--config", str(tmp_path / "c.yaml")], ROOT)
    assert r.returncode == 1 and "Traceback" not in r.stderr and "not UTF-8" in r.stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("seed: 1\n".encode("utf-16"), "not UTF-8"),
        ("种子: [".encode("gbk"), "not UTF-8"),
        (b"seed: [1,\n", "not valid YAML"),
        (b"- a\n- b\n", "expected a mapping"),
    ],
)
def test_a_broken_config_file_is_one_line(tmp_path, content, message):
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_a_directory_as_config_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(tmp_path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[]".encode("utf-16"), "not UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'[{"id": "a"', "not valid JSON"),
    ],
)
def test_broken_shards_are_one_line(tmp_path, content, message):
    path = tmp_path / "shard.json"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_json(path)


def test_merge_cli_on_hostile_shards_is_one_line(tmp_path):
    (tmp_path / "deep.json").write_bytes(b"[" * 100_000 + b"]" * 100_000)
    (tmp_path / "dir.json").mkdir()
    for shard, message in (("deep.json", "nested too deeply"), ("dir.json", "no *.json shards")):
        r = run_cmd([sys.executable, "-m", "zhufu", "merge", str(tmp_path / shard), "-o", "-"], tmp_path)
        assert r.returncode == 1 and "Traceback" not in r.stderr and message in r.stderr, r.stderr


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (
            {"conversation": [{"input": "祝姐姐生日快乐", "output": "生日快乐"}], "meta": [1, 2]},
            "'meta' must",
        ),
        ({"conversation": [{"input": "祝姐姐生日快乐", "output": "生日快乐"}], "meta": "x"}, "'meta' must"),
        (
            {"conversation": [{"input": "祝姐姐生日快乐", "output": "快乐"}], "style_name": ["a"]},
            "'style_name'",
        ),
        ({"conversation": [{"input": "祝姐姐生日快乐", "output": "快乐"}], "id": 7}, "'id' must be a string"),
        ({"conversation": [{"input": 1, "output": "快乐"}]}, "row 0: expected"),
    ],
)
def test_hostile_import_rows_are_named(tmp_path, row, message):
    src = tmp_path / "tianji.json"
    src.write_text(json.dumps([row], ensure_ascii=False), encoding="utf-8")
    r = run_cmd([sys.executable, "-m", "zhufu", "import", str(src), "-o", str(tmp_path / "o.json")], ROOT)
    assert r.returncode == 1 and "Traceback" not in r.stderr and message in r.stderr, r.stderr


def test_a_gbk_jsonl_import_is_one_line(tmp_path):
    src = tmp_path / "tianji.jsonl"
    src.write_bytes('{"conversation": [{"input": "祝姐姐", "output": "快乐"}]}\n'.encode("gbk"))
    r = run_cmd([sys.executable, "-m", "zhufu", "import", str(src), "-o", str(tmp_path / "o.json")], ROOT)
    assert r.returncode == 1 and "Traceback" not in r.stderr and "not UTF-8" in r.stderr


# --- the phrase bank ----------------------------------------------------------------------------------------


def _bank(tmp_path: Path, mutate) -> Path:
    bank = yaml.safe_load((ROOT / "resources" / "phrases.yaml").read_text(encoding="utf-8"))
    mutate(bank)
    path = tmp_path / "phrases.yaml"
    path.write_text(yaml.safe_dump(bank, allow_unicode=True), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b["categories"].update(grandparent="wish"), "categories.grandparent must be a mapping"),
        (lambda b: b["recipients"].update({"姐姐": None}), "recipients.姐姐 must be a mapping"),
        (lambda b: b["scenes"]["生日"].update(wish=[1, 2]), "scenes.生日.wish must be a list of strings"),
        (lambda b: b["general"].update(wish="祝你快乐"), "general.wish must be a list of phrases"),
    ],
)
def test_a_hostile_phrase_bank_names_the_entry(tmp_path, mutate, message):
    load_phrases.cache_clear()
    with pytest.raises(ConfigError, match=message):
        load_phrases(str(_bank(tmp_path, mutate)))


def test_a_gbk_phrase_bank_is_one_line(tmp_path):
    path = tmp_path / "phrases.yaml"
    path.write_bytes("categories: {长辈: {wish: [健康]}}\n".encode("gbk"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_phrases(str(path))


# --- CLI arguments ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["serve-teacher", "--port", "99999"], "port must be"),
        (["serve-teacher", "--port", "-1"], "port must be"),
        (["check-format", "t.json", "--max-length", "-5"], "expected a positive integer"),
        (["check-format", "t.json", "--min-samples", "0"], "expected a positive integer"),
        (["merge", "no-such-dir/", "-o", "m.json"], "no such file or directory"),
        (["render-config", "--profile", "gpt-5"], "unknown profile 'gpt-5'"),
        (["train", "--nproc-per-node", "0"], "expected a positive integer"),
    ],
)
def test_hostile_cli_arguments_are_one_line(tmp_path, args, message):
    r = run_cmd([sys.executable, "-m", "zhufu", *args], tmp_path, timeout=120)
    assert r.returncode != 0 and "Traceback" not in r.stderr and message in r.stderr, r.stderr
