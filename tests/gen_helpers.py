"""Shared bits of the generate tests: a small valid config pointed at a fault server, and shard readers."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import yaml

from zhufu.config import validate_config

SMALL = {
    "seed": 7,
    "rounds": 2,
    "system_prompt": "你现在是一个送祝福大师，帮我针对不同人和事情、节日送对应的祝福",
    "grid": {
        "recipients": ["姐姐", "爷爷", "领导"],
        "scenes": ["生日", "春节", "七夕节", "工作升职"],
        "suitability": None,
    },
    "prompt_template": "字数少于{max_chars}字。风格：{style_prompt}。对象：{recipient}；场景：{scene}。{injection}",
    "injections": ["", "不要用“祝你”。"],
    "input_templates": ["祝{recipient}{scene}", "我想祝{recipient}{scene}"],
    "styles": {
        "小红书": {
            "prompt": "小红书风格，参考：{examples}",
            "examples": ["今天也要闪闪发光呀✨", "所求皆如愿呢🌷", "快乐常常在哦🍀"],
            "few_shot_k": 1,
            "trigger": "小红书风格",
            "max_chars": 50,
        },
        "严肃": {"prompt": "商务严肃风格", "trigger": "严肃风格", "max_chars": 100},
    },
    "provider": {
        "kind": "openai",
        "model": "fault-model",
        "base_url": "http://127.0.0.1:9/v1",
        "api_key_env": "ZHUFU_TEST_KEY",
        "temperature": 0.7,
        "top_p": 0.9,
        "max_tokens": 64,
        "timeout_s": 1.0,
        "concurrency": 8,
        "backoff_s": 0.02,
        "backoff_max_s": 0.2,
    },
}
KEY = "test-key.secret"


def make_config(server=None, **provider) -> dict:
    config = copy.deepcopy(SMALL)
    if server is not None:
        kind = provider.get("kind", "openai")
        config["provider"]["base_url"] = server.zhipu_url if kind == "zhipuai" else server.url
    config["provider"].update(provider)
    return validate_config(config, "test config")


def make_cli_config(server=None, **provider) -> dict:
    """make_config for the CLI, which merges a config file over config.yaml as `snakemake --configfile`
    does: an overlay adds styles, never removes one, so this one lists config.yaml's three style names."""
    config = make_config(server, **provider)
    config["styles"]["正常"] = {"prompt": "正常风格", "max_chars": 30}
    return validate_config(config, "test config")


def n_cells(config: dict) -> int:
    return (
        len(config["styles"])
        * config["rounds"]
        * len(config["grid"]["recipients"])
        * len(config["grid"]["scenes"])
    )


def all_shards(config: dict, out_dir: Path) -> list[tuple[str, int, Path]]:
    return [
        (s, r, out_dir / s / f"round_{r}.json") for s in config["styles"] for r in range(config["rounds"])
    ]


def read_records(out_dir: Path) -> list[dict]:
    records = []
    for path in sorted(out_dir.rglob("round_*.json")):
        records.extend(json.loads(path.read_text(encoding="utf-8")))
    return records


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return path
