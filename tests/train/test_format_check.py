"""train.json through XTuner's own process_hf_dataset (real XTuner, the tiny tokenizer built offline)."""

import json
import sys

import pytest
from helpers import ROOT, run_cmd

pytestmark = pytest.mark.slow


def test_check_format_counts_truncated_samples_with_xtuner(tmp_path):
    fixture = json.loads((ROOT / "tests" / "fixtures" / "dirty.json").read_text())
    train = tmp_path / "train.json"
    train.write_text(
        json.dumps(
            [{"conversation": r["conversation"]} for r in fixture if r["conversation"][0]["output"]],
            ensure_ascii=False,
        )
    )
    zhufu = [sys.executable, "-m", "zhufu"]
    r = run_cmd([*zhufu, "base-model", "--train", str(train), "-o", str(tmp_path / "base")], cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    results = {}
    for limit in (256, 80):  # 80: above the system prompt and template (about 50 tokens), below the longest
        out = tmp_path / f"check_{limit}.json"
        r = run_cmd(
            [
                *zhufu,
                "check-format",
                str(train),
                "--tokenizer",
                str(tmp_path / "base"),
                "-o",
                str(out),
                "--max-length",
                str(limit),
            ],
            cwd=ROOT,
        )
        assert r.returncode == 0, r.stderr[-2000:]
        results[limit] = json.loads(out.read_text())
    rows = len(json.loads(train.read_text()))
    wide, narrow = results[256], results[80]
    assert wide["template"] == "qwen_chat" and wide["samples"] == rows and wide["truncated"] == 0
    assert wide["tokens"]["max"] > 80  # so the narrow limit must cut some
    assert 0 < narrow["truncated"] <= rows and narrow["tokens"] == wide["tokens"]


def test_check_format_names_a_missing_tokenizer(tmp_path):
    train = tmp_path / "train.json"
    train.write_text('[{"conversation": [{"system": "s", "input": "i", "output": "o"}]}]')
    r = run_cmd(
        [
            sys.executable,
            "-m",
            "zhufu",
            "check-format",
            str(train),
            "--tokenizer",
            str(tmp_path / "none"),
            "-o",
            str(tmp_path / "o.json"),
        ],
        cwd=ROOT,
    )
    assert r.returncode == 1 and f"{tmp_path / 'none'}: no tokenizer directory" in r.stderr
