"""check_format counts what training sees (packed samples when the profile packs) and refuses, in one line
naming the setting, an epoch schedule that mmengine would refuse or that would never leave its warm-up's
start factor. The seed's profile over a small set used to crash before its first step
(`end should be larger than begin, but got begin=0, end=0`)."""

import json

import pytest
from helpers import run_cmd
from test_tiny_architectures import write_train

from zhufu.train.base_model import build_tiny_model

QLORA = "internlm2-chat-7b-qlora"


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """Three training sets of the same records: a small one, a medium one (a warm-up of one iteration at
    3 epochs), one large enough for the profile as it is; and the tiny InternLM2 whose tokenizer reads them."""
    tmp = tmp_path_factory.mktemp("schedule")
    small = write_train(tmp / "small.json", 330)
    medium = write_train(tmp / "medium.json", 420)
    large = write_train(tmp / "large.json", 700)
    model = build_tiny_model(large, tmp / "model", architecture="internlm2", seed=1)
    return tmp, {"small": small, "medium": medium, "large": large}, model


def check(tmp, train, model, overrides: dict):
    overlay = tmp / "overlay.yaml"
    overlay.write_text(
        json.dumps(
            {
                "model": {"tiny": {"architecture": "internlm2"}},
                "train": {"profile": QLORA, "overrides": overrides},
            }
        ),
        encoding="utf-8",
    )
    out = tmp / "format_check.json"
    out.unlink(missing_ok=True)
    args = ["zhufu", "check-format", str(train), "--tokenizer", str(model), "--config", str(overlay)]
    return run_cmd([*args, "-o", str(out)], cwd=tmp, timeout=600), out


def error_lines(r) -> list[str]:
    return [ln for ln in r.stderr.splitlines() if ln.startswith("zhufu check-format: error:")]


def test_a_zero_iteration_warm_up_is_refused_in_one_line(sets):
    tmp, data, model = sets
    small = data["small"]
    r, out = check(tmp, small, model, {"max_epochs": 1})
    assert r.returncode == 1, r.stderr[-2000:]
    (line,) = error_lines(r)
    assert str(small) in line
    assert "= 0 iteration(s) and mmengine would stop before the first step" in line
    assert "train.overrides.warmup_ratio" in line and "train.overrides.max_epochs" in line
    assert "Traceback" not in r.stderr
    assert not out.exists()


def test_a_one_iteration_warm_up_is_refused(sets):
    """Over one iteration mmengine's LinearLR never leaves start_factor (1e-5) and the chained cosine scales
    that: measured, lr 1.8e-9 at iteration 10 of a 2e-4 run. Refused, not trained at lr × 1e-5."""
    tmp, data, model = sets
    r, out = check(tmp, data["medium"], model, {})
    assert r.returncode == 1, r.stderr[-2000:]
    (line,) = error_lines(r)
    assert "= 1 iteration(s)" in line and "never leaves its start factor" in line
    assert not out.exists()


def test_no_warm_up_is_allowed_and_rendered_without_linear_lr(sets):
    tmp, data, model = sets
    small = data["small"]
    r, out = check(tmp, small, model, {"max_epochs": 1, "warmup_ratio": 0})
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(out.read_text())["schedule"]["warmup_iterations"] == 0
    config = tmp / "xtuner_config.py"
    r = run_cmd(
        [
            "zhufu",
            "render-config",
            "--config",
            str(tmp / "overlay.yaml"),
            "--model",
            str(model),
            "--data",
            str(small),
            "-o",
            str(config),
        ],
        cwd=tmp,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    text = config.read_text()
    assert "type=LinearLR" not in text and "type=CosineAnnealingLR" in text


def test_packed_samples_are_counted_as_xtuner_packs_them(sets):
    """The count is XTuner's own: process_hf_dataset with the profile's packing and map_num_proc."""
    from datasets import load_dataset
    from transformers import AutoTokenizer
    from xtuner.dataset import process_hf_dataset
    from xtuner.dataset.map_fns import template_map_fn_factory
    from xtuner.utils import PROMPT_TEMPLATE

    tmp, data, model = sets
    large = data["large"]
    r, out = check(tmp, large, model, {})
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(out.read_text())
    packed = process_hf_dataset(
        dataset=load_dataset("json", data_files=str(large), split="train"),
        tokenizer=AutoTokenizer.from_pretrained(model, trust_remote_code=True),
        max_length=2048,
        template_map_fn=template_map_fn_factory(template=PROMPT_TEMPLATE.internlm2_chat),
        shuffle_before_pack=False,
        pack_to_max_length=True,
        map_num_proc=8,
    )
    assert result["packed"] is True and result["samples"] == len(packed)
    assert result["unpacked_samples"] == 700 and result["samples"] < 700
    # 3 epochs of batch 1; mmengine's int(0.03 × 3 × iterations per epoch), here at least 2
    sched = result["schedule"]
    assert sched["iterations"] == 3 * sched["iterations_per_epoch"]
    assert sched["warmup_iterations"] >= 2
