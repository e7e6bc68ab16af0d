"""data.mix (zhufu/data/mix.py through zhufu/data/clean.py): general rows cleaned apart with their own rule
set, drawn seeded to a share or a count of train.json, counted apart in the report and the card; the
shipped general set; bad entries as one-line errors."""

import json

import pytest
import yaml
from helpers import ROOT

from zhufu.config import load_config
from zhufu.data.clean import clean
from zhufu.data.mix import conversation_rows, mix_sources
from zhufu.errors import ConfigError, DataError

CONFIG = load_config()
BLESSINGS = [  # twenty different wishes (no two near duplicates), each in the 正常 band 6–30
    f"祝姐姐{a}生日快乐，{b}！"
    for a, b in zip(
        "甲乙丙丁戊己庚辛壬癸子丑寅卯辰巳午未申酉", "天地玄黄宇宙洪荒日月盈昃辰宿列张寒来暑往", strict=True
    )
]
LONG_ANSWER = "上海的景点有外滩、豫园、东方明珠、南京路步行街、上海博物馆、田子坊、新天地和朱家角古镇，外滩适合傍晚去看江景。"


def blessing(i, output):
    turn = {"system": CONFIG["system_prompt"], "input": f"祝姐姐生日快乐{i}", "output": output}
    meta = {"recipient": "姐姐", "scene": "生日", "style": "正常", "round": 0, "provider": "offline"}
    meta.update({"model": "m", "prompt": "p", "usage": None})
    return {"id": f"b{i}", "conversation": [turn], "meta": meta}


def general_rows():
    rows = [
        {"conversation": [{"input": f"{n}加{n}等于多少？", "output": f"{n}加{n}等于{2 * n}。"}]}
        for n in range(30)
    ]
    rows.append({"conversation": [{"system": "你是助手", "input": "介绍上海的景点", "output": LONG_ANSWER}]})
    rows.append(
        {"conversation": [{"input": "你是谁", "output": "作为一个AI语言模型，我无法回答。"}]}
    )  # refusal
    rows.append({"conversation": [{"input": "重复的问题", "output": "1加1等于2。"}]})  # same answer as row 1
    rows.append(
        {"conversation": [{"input": "写一句祝福", "output": BLESSINGS[0]}]}
    )  # same text as a blessing
    return rows


@pytest.fixture
def files(tmp_path):
    merged = tmp_path / "merged.json"
    merged.write_text(json.dumps([blessing(i, t) for i, t in enumerate(BLESSINGS)], ensure_ascii=False))
    source = tmp_path / "general.json"
    source.write_text(json.dumps(general_rows(), ensure_ascii=False), encoding="utf-8")
    return tmp_path, merged, source


def run_clean(tmp_path, merged, mix, seed=1, tag="a"):
    train, report, card = (
        tmp_path / f"train-{tag}.json",
        tmp_path / f"report-{tag}.json",
        tmp_path / f"card-{tag}.md",
    )
    rules = {**CONFIG["clean"], "suitability": {"enabled": False}}
    clean(
        merged, train, report, rules=rules, styles=CONFIG["styles"], system_prompt=CONFIG["system_prompt"],
        card=card, mix=mix, seed=seed,
    )  # fmt: skip
    return (json.loads(train.read_text()), json.loads(report.read_text()), card.read_text(encoding="utf-8"))


def outputs(train):
    return [row["conversation"][0]["output"] for row in train]


def test_a_share_of_train_json_is_drawn_seeded_and_counted_apart(files):
    tmp_path, merged, source = files
    mix = [{"source": str(source), "share": 0.2, "rule_set": "dialogue"}]
    train, report, card = run_clean(tmp_path, merged, mix)
    assert report["rows_out"] == 20  # the blessings, as without a mix
    assert report["rows_mixed"] == 5 and len(train) == report["rows_train"] == 25  # 5 of 25 = 0.2
    assert outputs(train)[:20] == BLESSINGS
    entry = report["mix"][0]
    assert (entry["rows_in"], entry["rows_clean"], entry["rows_drawn"]) == (34, 32, 5)
    assert entry["dropped_by_rule"] == {"refusal": 1, "exact_dedup": 1}
    assert {d["rule"] for d in entry["dropped"]} == {"refusal", "exact_dedup"}
    assert "## General data mixed in (data.mix)" in card
    assert f"| `{source}` | dialogue | share 0.2 | 34 | 32 | 5 | exact_dedup 1, refusal 1 |" in card
    assert "5 general rows of 25" in card
    again, _, _ = run_clean(tmp_path, merged, mix, tag="b")
    assert again == train  # seeded
    other, _, _ = run_clean(tmp_path, merged, mix, seed=2, tag="c")
    assert outputs(other)[20:] != outputs(train)[20:] and len(other) == 25


def test_general_rows_keep_their_own_rules_and_are_never_deduplicated_against_blessings(files):
    tmp_path, merged, source = files
    train, report, _ = run_clean(
        tmp_path, merged, [{"source": str(source), "count": 32, "rule_set": "dialogue"}]
    )
    general = train[20:]
    assert len(general) == 32 and report["rows_mixed"] == 32
    by_output = {t["conversation"][0]["output"]: t["conversation"][0] for t in general}
    # the blessing's twin stays beside it: the two sets are deduplicated apart
    assert outputs(train).count(BLESSINGS[0]) == 2
    # longer than any style's band (length off in dialogue), and its own system prompt kept
    assert by_output[LONG_ANSWER]["system"] == "你是助手"
    assert by_output["1加1等于2。"]["system"] == CONFIG["system_prompt"]  # a row without one gets the run's
    assert not any("AI语言模型" in o for o in outputs(train))  # refusal is on in dialogue
    assert report["rule_sets"] == {}  # merged.json's rule sets only: the mix is counted under `mix`


def test_no_mix_changes_nothing(files):
    tmp_path, merged, _ = files
    train, report, card = run_clean(tmp_path, merged, [])
    assert outputs(train) == BLESSINGS and report["rows_mixed"] == 0 and report["mix"] == []
    assert "General data mixed in" not in card


def test_a_share_the_source_cannot_fill_is_one_line(files):
    tmp_path, merged, source = files
    with pytest.raises(ConfigError) as e:
        run_clean(tmp_path, merged, [{"source": str(source), "share": 0.9, "rule_set": "dialogue"}])
    assert str(e.value) == (
        f"data.mix[0]: share 0.9 needs 180 rows, but {source} has only 32 left after cleaning (rule set "
        "dialogue): lower it or add rows"
    )


def test_an_unknown_source_is_one_line_naming_the_entry(files, tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(ConfigError, match=r"^data\.mix\[1\]\.source: .*nope\.json: no such file"):
        mix_sources([{"source": str(files[2])}, {"source": str(missing)}])
    with pytest.raises(DataError, match=r"^data\.mix\[0\]\.source: .*nope\.json: file not found$"):
        run_clean(files[0], files[1], [{"source": str(missing), "count": 1, "rule_set": "dialogue"}])


def overlay(tmp_path, mix):
    path = tmp_path / "overlay.yaml"
    path.write_text(yaml.safe_dump({"data": {"mix": mix}}, allow_unicode=True), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("mix", "message"),
    [
        ([{"source": "g.json", "share": 1.5}], "data.mix.0.share"),
        ([{"source": "g.json", "share": -0.1}], "data.mix.0.share"),
        ([{"source": "g.json", "count": -1}], "data.mix.0.count"),
        ([{"source": "g.json", "share": 0.1, "count": 3}], "data.mix[0]: give either `share`"),
        ([{"source": "g.json"}], "data.mix[0]: give either `share`"),
        (
            [{"source": "g.json", "share": 0.6}, {"source": "h.json", "share": 0.5}],
            "the shares add up to 1.1",
        ),
        (
            [{"source": "g.json", "share": 0.1, "rule_set": "chat"}],
            "data.mix[0].rule_set: no rule set 'chat'",
        ),
        ([{"source": "g.json", "share": 0.1, "ratio": 2}], "data.mix.0"),
    ],
)
def test_bad_mix_entries_are_config_errors(tmp_path, mix, message):
    with pytest.raises(ConfigError) as e:
        load_config(overlay(tmp_path, mix))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_alpaca_rows_with_a_field_map():
    rows = [{"instruction": "把这句话翻译成英文", "input": "我爱读书", "output": "I love reading."}]
    fields = {"input": ["instruction", "input"], "output": "output"}
    assert conversation_rows(rows, fields, "a.json") == [
        {"conversation": [{"input": "把这句话翻译成英文\n我爱读书", "output": "I love reading."}]}
    ]
    with pytest.raises(DataError, match=r"^a\.json: row 0: an empty input or output"):
        conversation_rows([{"instruction": "x", "output": ""}], fields, "a.json")


def test_the_shipped_general_set_is_clean_and_asks_no_off_task_request(tmp_path):
    source = ROOT / "resources" / "general_dialogue.json"
    rows = json.loads(source.read_text(encoding="utf-8"))
    assert len(rows) >= 250
    off_task = yaml.safe_load((ROOT / "resources" / "off_task.yaml").read_text(encoding="utf-8"))["requests"]
    asked = {r["conversation"][0]["input"] for r in rows}
    assert len(asked) == len(rows) and not asked & {r["input"] for r in off_task}
    merged = tmp_path / "merged.json"
    merged.write_text(json.dumps([blessing(i, t) for i, t in enumerate(BLESSINGS)], ensure_ascii=False))
    _, report, _ = run_clean(tmp_path, merged, [{"source": str(source), "count": 1, "rule_set": "dialogue"}])
    assert report["mix"][0]["rows_clean"] == len(rows)  # the dialogue rules drop none of it
    assert "Licence: Apache-2.0" in (ROOT / "resources" / "general_dialogue.md").read_text(encoding="utf-8")
    assert CONFIG["data"]["mix"][0]["source"] == "resources/general_dialogue.json"
