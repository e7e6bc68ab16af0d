"""Tianji compatibility: configs/tianji-v1.yaml's training inputs, the refiner's input rewrite, peer rewrites."""

import copy
import json

import pytest
import yaml
from helpers import ROOT

from zhufu.config import load_config, validate_config
from zhufu.data.clean import clean_records
from zhufu.grid import build_prompt, cells

# Tianji's refiner templates, as the issue quotes them ({r} recipient, {s} scene)
REFINER = ["我想祝{r}{s}快乐", "我想给{r}{s}祝福", "我想送{r}{s}祝福", "送祝福给{r} {s}", "我想祝福{r}{s}快乐",
           "祝{r}{s}快乐", "送祝福给{r}{s}", "祝福{r}{s}快乐"]  # fmt: skip


@pytest.fixture(scope="module")
def tianji_v1():
    from snakemake.utils import update_config

    config = load_config()
    update_config(config, yaml.safe_load((ROOT / "configs/tianji-v1.yaml").read_text(encoding="utf-8")))
    return validate_config(config, "tianji-v1.yaml")


def test_tianji_v1_inputs_are_tianjis_format_exactly(tianji_v1):
    inputs = {
        (c.style, c.recipient, c.scene): build_prompt(tianji_v1, c).input
        for style in tianji_v1["styles"]
        for c in cells(tianji_v1, style, 0)
    }
    assert len(inputs) == 28 * 18 * 3  # every pair: Tianji had no suitability matrix
    assert inputs[("正常", "赵老师", "生日")] == "祝赵老师生日"
    assert inputs[("小红书", "邻居赵大妈", "春节")] == "祝邻居赵大妈春节,小红书风格"
    assert inputs[("严肃", "姐姐", "工作升职 ")] == "祝姐姐工作升职 ,严肃风格"  # Tianji's trailing space
    for (style, r, s), text in inputs.items():
        assert text == (f"祝{r}{s}" if style == "正常" else f"祝{r}{s},{style}风格")


def record(rid, style, scene, recipient="姐姐", output="祝你节日快乐，万事如意，阖家幸福！"):
    return {
        "id": rid,
        "conversation": [{"system": "S", "input": f"祝{recipient}{scene}", "output": output}],
        "meta": {
            "recipient": recipient,
            "scene": scene,
            "style": style,
            "round": 0,
            "provider": "x",
            "model": "m",
        },
    }


def test_input_rewrite_uses_the_refiners_templates_for_normal_festival_inputs_only(tianji_v1):
    rules = copy.deepcopy(tianji_v1["clean"])
    assert rules["input_rewrite"]["enabled"] is False  # Tianji v1's generator inputs, unless asked
    rules["input_rewrite"]["enabled"] = True
    for name in ("exact_dedup", "near_dedup"):
        rules[name]["enabled"] = False
    records = [record(f"n{i}", "正常", "中秋节") for i in range(40)]
    records += [
        record("x", "小红书", "中秋节", output="中秋快乐呀🌕，团团圆圆！"),
        record("b", "正常", "生日"),
    ]
    kept, report = clean_records(records, rules, tianji_v1["styles"], None, None)
    inputs = [r["conversation"][0]["input"] for r in kept]
    allowed = {t.format(r="姐姐", s="中秋节") for t in REFINER}
    assert set(inputs[:40]) <= allowed and len(set(inputs[:40])) >= 6  # spread over the templates
    assert inputs[40:] == ["祝姐姐中秋节", "祝姐姐生日"]  # other styles and non-festival scenes stay
    rewrites = [m for m in report["modified"] if m["rule"] == "input_rewrite"]
    assert len(rewrites) == report["rules"]["input_rewrite"]["modified"] >= 35
    assert all(m["field"] == "input" and m["before"] == "祝姐姐中秋节" for m in rewrites)
    again, _ = clean_records(copy.deepcopy(records), rules, tianji_v1["styles"], None, None)
    assert [r["conversation"][0]["input"] for r in again] == inputs  # chosen by id: reruns agree


def test_peer_rewrites_are_off_by_default_and_only_touch_peers():
    rules = load_config()["clean"]
    for name in ("exact_dedup", "near_dedup"):
        rules[name]["enabled"] = False
    styles = load_config()["styles"]
    text = "尊敬的姐姐，祝你生日快乐，天天开心！"
    records = [
        record("p", "正常", "生日", "姐姐", text),
        record("e", "正常", "生日", "爷爷", "尊敬的爷爷，祝您生日快乐！"),
    ]
    kept, _ = clean_records(copy.deepcopy(records), rules, styles, None, None)
    assert kept[0]["conversation"][0]["output"] == text
    rules["peer_address"]["enabled"] = True
    kept, report = clean_records(copy.deepcopy(records), rules, styles, None, None)
    assert kept[0]["conversation"][0]["output"] == "姐，祝你生日快乐，天天开心！"
    assert kept[1]["conversation"][0]["output"] == "尊敬的爷爷，祝您生日快乐！"
    assert report["rules"]["peer_address"]["modified"] == 1


def test_the_card_says_when_inputs_were_rewritten(tmp_path):
    from zhufu.data.card import render_card

    train = tmp_path / "train.json"
    train.write_text(json.dumps([]))
    report = {"rows_in": 1, "rows_out": 1, "rows_dropped": 0, "rows_modified": 1, "kept": [],
              "rules": {"input_rewrite": {"enabled": True, "dropped": 0, "modified": 1}}}  # fmt: skip
    card = render_card(train, report, [record("a", "正常", "春节")], {"provider": "offline"})
    assert "1 `input` rewritten by input_rewrite" in card


def test_importing_tianjis_data_with_the_tianji_rule_set_rewrites_its_festival_inputs(tmp_path):
    from zhufu.data.importing import import_records

    config = load_config()
    rows = [
        {"conversation": [{"input": "祝表哥中秋节", "output": "中秋快乐，阖家团圆，万事如意！"}]},
        {"conversation": [{"input": "祝表哥生日", "output": "生日快乐，天天开心，越来越帅！"}]},
    ]
    plain = import_records(copy.deepcopy(rows), config, "t.json")
    tianji = import_records(copy.deepcopy(rows), config, "t.json", rule_set="tianji")
    kept, _ = clean_records(plain, config["clean"], config["styles"], None, None)
    assert [r["conversation"][0]["input"] for r in kept] == ["祝表哥中秋节", "祝表哥生日"]  # only when asked
    kept, report = clean_records(tianji, config["clean"], config["styles"], None, None)
    first, second = (r["conversation"][0]["input"] for r in kept)
    assert first in {t.format(r="表哥", s="中秋节") for t in REFINER} and second == "祝表哥生日"
    assert report["rule_sets"]["tianji"]["modified"]["input_rewrite"] == 1
