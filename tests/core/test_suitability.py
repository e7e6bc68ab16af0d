"""The shipped suitability matrix and the grid/style configs in configs/."""

from __future__ import annotations

import csv

import pytest
import yaml
from helpers import ROOT
from snakemake.utils import update_config

from zhufu.config import validate_config
from zhufu.grid import cells, load_suitability

CSV = ROOT / "resources/suitability.csv"

# Tianji v1 (tools/finetune/data_maker), in its order; "工作升职" without Tianji's trailing space.
TIANJI_RECIPIENTS = [
    "赵老师", "大舅", "大伯", "李总", "邻居赵大妈", "母亲", "姐姐", "妹妹", "哥哥", "弟弟", "爷爷", "奶奶", "外公", "外婆",
    "伯母", "叔叔", "阿姨", "堂兄", "堂妹", "表哥", "表妹", "导师", "同学", "同事", "领导", "邻居", "老板", "医生",
]  # fmt: skip
TIANJI_SCENES = [
    "生日", "春节", "元宵节", "端午节", "七夕节", "中秋节", "重阳节", "除夕", "腊八节", "谈判顺利", "乔迁新居",
    "周年纪念", "新婚快乐", "家庭和睦", "比赛取得好成绩", "发财", "工作升职", "康复",
]  # fmt: skip
GRANDPARENTS = ["爷爷", "奶奶", "外公", "外婆"]
ELDERS = [*GRANDPARENTS, "母亲", "大舅", "大伯", "伯母", "叔叔", "阿姨", "邻居赵大妈"]


@pytest.fixture(scope="module")
def matrix() -> dict[tuple[str, str], bool]:
    return load_suitability(CSV)


def merged(*overlays: str) -> dict:
    """config.yaml with configs/ files merged over it, as `snakemake --configfile A B` does."""
    config = yaml.safe_load((ROOT / "config.yaml").read_text(encoding="utf-8"))
    for name in overlays:
        update_config(config, yaml.safe_load((ROOT / name).read_text(encoding="utf-8")))
    return validate_config(config, " + ".join(["config.yaml", *overlays]))


def test_the_csv_is_exactly_tianjis_grid_of_ones_and_zeros():
    with open(CSV, encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["recipient", *TIANJI_SCENES]
    assert [r[0] for r in rows[1:]] == TIANJI_RECIPIENTS
    assert all(len(r) == 19 and set(r[1:]) <= {"0", "1"} for r in rows[1:])
    assert not any(cell != cell.strip() for r in rows for cell in r)


def test_every_pair_is_decided(matrix):
    assert len(matrix) == 28 * 18
    assert {(r, s) for r in TIANJI_RECIPIENTS for s in TIANJI_SCENES} == set(matrix)


@pytest.mark.parametrize("recipient", TIANJI_RECIPIENTS)
def test_get_well_and_the_big_festivals_suit_everyone(matrix, recipient):
    for scene in ("康复", "生日", "春节", "中秋节", "除夕"):
        assert matrix[(recipient, scene)], f"{recipient}×{scene}"


def test_pinned_cells(matrix):
    for elder in ELDERS:
        assert not matrix[(elder, "新婚快乐")], elder
        assert not matrix[(elder, "七夕节")], elder
    for g in GRANDPARENTS:
        assert (
            not matrix[(g, "工作升职")] and not matrix[(g, "谈判顺利")] and not matrix[(g, "比赛取得好成绩")]
        ), g
        assert matrix[(g, "重阳节")], g
    for boss in ("李总", "领导", "老板", "导师", "赵老师", "医生", "同事"):
        assert not matrix[(boss, "七夕节")], boss
    assert matrix[("妹妹", "谈判顺利")]  # Tianji's own evaluation input: 祝妹妹谈判顺利，小红书风格
    assert matrix[("同事", "周年纪念")] and matrix[("领导", "周年纪念")]
    assert matrix[("邻居赵大妈", "比赛取得好成绩")]  # the square-dance contest
    assert not matrix[("老板", "工作升职")]


def test_every_scene_keeps_some_recipients_and_is_explained(matrix):
    notes = (ROOT / "resources/suitability.md").read_text(encoding="utf-8")
    for scene in TIANJI_SCENES:
        kept = [r for r in TIANJI_RECIPIENTS if matrix[(r, scene)]]
        assert len(kept) >= 5, scene
        assert scene in notes, f"resources/suitability.md does not explain {scene}"
    assert sum(matrix.values()) == 413 and "413" in notes


def test_full_grid_config_is_tianjis_full_grid(matrix):
    config = merged("configs/full-grid.yaml")
    assert config["grid"]["recipients"] == TIANJI_RECIPIENTS
    assert config["grid"]["scenes"] == TIANJI_SCENES
    assert set(config["styles"]) == {"小红书", "正常", "严肃"} and config["rounds"] == 2
    held_out = round(0.2 * 413)  # config.yaml's grid.holdout keeps 20% of the suitable pairs for evaluation
    assert len(cells(config, "小红书", 0, matrix)) == 413 - held_out == 330
    no_holdout = {**config, "grid": {**config["grid"], "holdout": {"fraction": 0, "seed": 0}}}
    assert len(cells(no_holdout, "小红书", 0, matrix)) == 413
    assert len(cells(no_holdout, "小红书", 0, None)) == 504


def test_default_grid_skips_the_unsuitable_pairs(matrix):
    config = merged()
    kept = cells(
        {**config, "grid": {**config["grid"], "holdout": {"fraction": 0, "seed": 0}}}, "正常", 0, matrix
    )
    assert len(kept) == 43
    assert ("爷爷", "工作升职") not in {(c.recipient, c.scene) for c in kept}
    assert len(cells(config, "正常", 0, matrix)) == 34  # less the 9 pairs held out for the evaluation


def test_v2_styles_config_has_nine_complete_styles():
    config = merged("configs/full-grid.yaml", "configs/tianji-v2-styles.yaml")
    styles = config["styles"]
    assert list(styles) == [
        "小红书",
        "正常",
        "严肃",
        "白话",
        "文艺",
        "文言文",
        "放飞自我",
        "祝福长文",
        "诗词赋",
    ]
    raw = yaml.safe_load((ROOT / "configs/tianji-v2-styles.yaml").read_text(encoding="utf-8"))["styles"]
    for name, style in raw.items():
        assert set(style) == {
            "prompt",
            "examples",
            "few_shot_k",
            "trigger",
            "min_chars",
            "max_chars",
            "emoji",
        }, name
        assert 3 <= len(style["examples"]) <= 5, name
        assert "{examples}" in style["prompt"] and style["prompt"].startswith(name) or name == "严肃", name
        assert (style["trigger"] is None) == (name == "正常"), name
        for line in style["examples"]:
            assert len(line) < style["max_chars"], (name, line)
    assert styles["严肃"]["emoji"] == {"min": 0, "max": 0} and styles["小红书"]["emoji"]["min"] >= 1
