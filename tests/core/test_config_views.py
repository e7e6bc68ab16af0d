"""The config views of zhufu/config.py, which are the rules' params: an edit reruns a rule exactly when it
changes that rule's view. Each row edits one key of the embedded default and says whether the view moves."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
from helpers import ROOT

from zhufu import config as views
from zhufu.config import load_config

CONFIG = load_config()


def edited(path: str, value):
    config = copy.deepcopy(CONFIG)
    *parents, last = path.split(".")
    node = config
    for p in parents:
        node = node[p]
    node[last] = value(node.get(last)) if callable(value) else value
    return config


bump = lambda v: v + 1  # noqa: E731
CASES = [
    # (view, edited key, new value, reruns)
    ("clean_view", "clean.min_chinese_ratio", 0.5, True),
    ("clean_view", "system_prompt", "你好", True),
    ("clean_view", "seed", bump, True),  # in the card's provenance
    ("clean_view", "provider.temperature", 0.3, True),  # data-shaping: in the card's hash
    ("clean_view", "provider.rpm", 7, False),  # how data is fetched, not what it is
    ("clean_view", "provider.budget", 3.0, False),
    ("clean_view", "train.profile", "other", False),
    ("clean_view", "evaluate.samples", bump, False),
    ("figures_view", "grid.scenes", lambda v: v[:-1], True),
    ("figures_view", "clean.min_chinese_ratio", 0.5, False),
    ("figures_view", "seed", bump, False),
    ("evaluate_view", "evaluate.samples", bump, True),
    ("evaluate_view", "clean.min_chinese_ratio", 0.5, True),  # answers are scored with the cleaner's rules
    ("evaluate_view", "provider.model", "other", False),
    ("evaluate_view", "train.profile", "other", False),
    ("evaluate_view", "rounds", bump, False),
    ("estimate_view", "rounds", bump, True),
    ("estimate_view", "provider.price", {"input_per_1m": 9.0, "output_per_1m": 9.0}, True),
    ("estimate_view", "clean.min_chinese_ratio", 0.5, False),
    ("estimate_view", "evaluate.samples", bump, False),
    ("judge_view", "evaluate.judge.pass_score", 5, True),
    ("judge_view", "evaluate.judge.max_cost", 1.0, False),
    ("judge_view", "evaluate.samples", bump, False),
    # the general data mixed in is cleaning's, never generation's, nor the evaluation's
    ("clean_view", "data.mix", [], True),
    ("clean_view", "data.mix", [{"source": "resources/general_dialogue.json", "count": 5}], True),
    ("figures_view", "data.mix", [], False),
    ("estimate_view", "data.mix", [], False),
    ("evaluate_view", "data.mix", [], False),
    ("judge_view", "data.mix", [], False),
    ("evaluate_view", "evaluate.off_task", None, True),
    ("clean_view", "evaluate.off_task", None, False),
]


@pytest.mark.parametrize(("view", "key", "value", "reruns"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_a_view_moves_exactly_when_its_rule_should_rerun(view, key, value, reruns):
    fn = getattr(views, view)
    assert (fn(edited(key, value)) != fn(CONFIG)) is reruns


def test_data_mix_shapes_no_shard():
    """generate's params are shard_config: a change of data.mix reruns clean, never generation."""
    for style in CONFIG["styles"]:
        assert views.shard_config(edited("data.mix", []), style) == views.shard_config(CONFIG, style)


def test_an_import_sees_only_its_own_rule_set():
    config = edited("clean.rule_sets", lambda v: {**v, "a": {}, "b": {"min_chinese_ratio": 0.1}})
    a, b = views.import_view(config, "a"), views.import_view(config, "b")
    assert a["clean"] == {"rule_sets": {"a": {}}} and b["clean"] == {
        "rule_sets": {"b": {"min_chinese_ratio": 0.1}}
    }
    assert views.import_view(edited("clean.min_chinese_ratio", 0.5), None) == views.import_view(CONFIG, None)


def test_import_specs_name_each_import_by_its_stem():
    config = edited("clean.imports", ["data/tianji.json", {"path": "x/chat.json", "rule_set": "dialogue"}])
    assert views.import_specs(config) == {
        "tianji": {"path": "data/tianji.json", "rule_set": None},
        "chat": {"path": "x/chat.json", "rule_set": "dialogue"},
    }


def test_the_estimate_lists_every_shard():
    assert views.estimate_view(edited("rounds", 2))["shards"] == [
        (s, r) for s in CONFIG["styles"] for r in (0, 1)
    ]


def test_no_suitability_matrix_is_no_input():
    assert views.suitability_input(edited("grid.suitability", None)) == []
    assert views.suitability_input(CONFIG) == CONFIG["grid"]["suitability"]


def test_every_params_value_in_the_rules_is_a_named_view():
    """No inline config lookup or dict built in a rule's params:. rules/train.smk is left out on purpose: its
    params are single config keys or named functions of the train family (training_overrides, training_view,
    the resolved profile), and renaming a param reruns its rule once on upgrade; for base_model that makes
    results/base_model newer than the checkpoints, which retrains a GPU profile for hours."""
    inline = []
    for smk in sorted((ROOT / "rules").glob("*.smk")):
        if smk.name == "train.smk":
            continue
        for block in re.findall(r"^    params:\n((?:        .*\n)+)", smk.read_text(encoding="utf-8"), re.M):
            for line in block.splitlines():
                value = line.split("=", 1)[1] if "=" in line and not line.strip().startswith("#") else ""
                if re.search(r"config\[|\{", value):
                    inline.append(f"{Path(smk).name}: {line.strip()}")
    assert not inline, inline
