"""merge, import, clean (end to end on a dirty fixture), the dataset card, and the Snakemake rules."""

import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, copy_project, run_cmd

FIXTURES = ROOT / "tests" / "fixtures"
CLEANING_RULES = [
    "system_prompt", "input_rewrite", "suitability", "refusal", "meta_answer", "first_line", "trailing_remark",
    "wrapping_quotes", "leading_punctuation", "list_items", "broken_text", "chinese_ratio", "char_repetition",
    "honorific",
    "peer_address", "length", "emoji", "exact_dedup", "near_dedup",
    "review",  # human review decisions (review/decisions.jsonl); none in the fixture
]  # fmt: skip
SUITABILITY = """recipient,生日,春节,中秋节,谈判顺利,工作升职,康复
姐姐,1,1,1,1,1,1
妹妹,1,1,1,1,1,1
弟弟,1,1,1,1,1,1
爷爷,1,1,1,0,0,1
领导,1,1,1,1,1,1
同事,1,1,1,1,1,1
赵老师,1,1,1,0,1,1
邻居赵大妈,1,1,1,0,0,1
"""


def zhufu(*args, cwd=ROOT):
    return run_cmd([sys.executable, "-m", "zhufu", *map(str, args)], cwd=cwd, timeout=300)


@pytest.fixture
def config_file(tmp_path):
    """The project's config.yaml with the suitability matrix of the fixture."""
    csv = tmp_path / "suitability.csv"
    csv.write_text(SUITABILITY, encoding="utf-8")
    config = yaml.safe_load((ROOT / "config.yaml").read_text(encoding="utf-8"))
    config["grid"]["suitability"] = str(csv)
    config["data"] = {
        "mix": []
    }  # the fixture's pinned verdicts are of blessings only (data.mix: test_mix.py)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return path


def record(rid, output, recipient="姐姐", scene="生日", style="正常", **meta):
    return {
        "id": rid,
        "conversation": [{"system": "S", "input": f"祝{recipient}{scene}", "output": output}],
        "meta": {
            "recipient": recipient,
            "scene": scene,
            "style": style,
            "round": 0,
            "provider": "offline",
            "model": "m",
            "prompt": "p",
            "usage": {"prompt_tokens": 1, "completion_tokens": 2},
            **meta,
        },
    }


def write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")
    return path


# ---------------------------------------------------------------- merge


def test_merge_keeps_ids_and_meta_in_shard_order(tmp_path):
    write(tmp_path / "raw" / "正常" / "round_0.json", [record("a", "甲"), record("b", "乙")])
    write(tmp_path / "raw" / "严肃" / "round_0.json", [record("c", "丙", style="严肃")])
    out = tmp_path / "merged.json"
    r = zhufu("merge", tmp_path / "raw", "-o", out)
    assert r.returncode == 0, r.stderr
    merged = json.loads(out.read_text())
    assert [m["id"] for m in merged] == ["c", "a", "b"]  # sorted paths: 严肃 < 正常
    assert merged[0]["meta"]["style"] == "严肃" and merged[1]["meta"]["usage"] == {
        "prompt_tokens": 1,
        "completion_tokens": 2,
    }


def test_a_bad_record_fails_with_one_line_naming_file_and_index(tmp_path):
    bad = record("b", "乙")
    del bad["meta"]["scene"]
    shard = write(tmp_path / "raw" / "x" / "round_1.json", [record("a", "甲"), record("c", "丙"), bad])
    out = tmp_path / "merged.json"
    r = zhufu("merge", tmp_path / "raw", "-o", out)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert str(shard) in lines[0] and "record 2" in lines[0] and "'scene' is a required property" in lines[0]
    assert "Traceback" not in r.stderr and not out.exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"id": "a"}, "expected a JSON list"),
        ([{"id": "a", "conversation": [], "meta": {}}], "record 0"),
        (
            [{"conversation": [{"system": "", "input": "x", "output": "y"}], "meta": {}}],
            "'id' is a required property",
        ),
    ],
)
def test_malformed_shards_are_named(tmp_path, content, message):
    shard = write(tmp_path / "s.json", content)
    r = zhufu("merge", shard, "-o", tmp_path / "m.json")
    assert r.returncode == 1 and str(shard) in r.stderr and message in r.stderr


def test_invalid_json_is_named_with_its_line(tmp_path):
    shard = tmp_path / "s.json"
    shard.write_text('[{"id": "a",\n oops}]')
    r = zhufu("merge", shard, "-o", tmp_path / "m.json")
    assert r.returncode == 1 and f"{shard}: not valid JSON (line 2" in r.stderr


def test_duplicate_ids_across_shards_name_both_files(tmp_path):
    a = write(tmp_path / "raw" / "a" / "round_0.json", [record("x", "甲"), record("dup", "乙")])
    b = write(tmp_path / "raw" / "b" / "round_0.json", [record("dup", "丙")])
    r = zhufu("merge", a, b, "-o", tmp_path / "m.json")
    assert r.returncode == 1
    line = r.stderr.strip()
    assert "duplicate id dup" in line and f"{a} record 1" in line and f"{b} record 0" in line


# ---------------------------------------------------------------- end to end on the dirty fixture


@pytest.fixture
def cleaned(tmp_path, config_file):
    out = tmp_path / "out"
    r = zhufu(
        "clean", FIXTURES / "dirty.json", "-o", out / "train.json", "--report", out / "report.json",
        "--card", out / "card.md", "--config", config_file,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return out


def test_every_fixture_record_gets_its_pinned_verdict(cleaned):
    records = {r["id"]: r for r in json.loads((FIXTURES / "dirty.json").read_text())}
    expected = json.loads((FIXTURES / "dirty_expected.json").read_text())
    assert set(expected) == set(records) and len(records) >= 40
    report = json.loads((cleaned / "report.json").read_text())
    dropped = {d["id"]: d for d in report["dropped"]}
    kept = [k["id"] for k in report["kept"]]
    mods: dict[str, list] = {}
    for m in report["modified"]:
        mods.setdefault(m["id"], []).append(m)
    for rid, exp in expected.items():
        if exp["verdict"] == "drop":
            assert rid in dropped, rid
            assert dropped[rid]["rule"] == exp["rule"], (rid, dropped[rid])
            assert dropped[rid]["text"] == records[rid]["conversation"][0]["output"]
            if "duplicate_of" in exp:
                assert dropped[rid]["duplicate_of"] == exp["duplicate_of"]
        else:
            assert rid in kept and rid not in dropped, rid
            got = mods.get(rid, [])
            if exp["verdict"] == "keep":
                assert got == [], (rid, got)
            else:
                assert [m["rule"] for m in got] == exp["rules"], (rid, got)
                outputs = [m for m in got if m["field"] == "output"]
                final = outputs[-1]["after"] if outputs else records[rid]["conversation"][0]["output"]
                assert final == exp["output"], rid
                assert (outputs or got)[0]["before"] in (
                    records[rid]["conversation"][0]["output"],
                    records[rid]["conversation"][0]["system"],
                )
    # every rule is reported; every enabled rule is exercised by the fixture, a rule off by default touches nothing
    assert set(report["rules"]) == set(CLEANING_RULES)
    for name, counts in report["rules"].items():
        if counts["enabled"]:
            assert counts["dropped"] + counts["modified"] > 0, f"the fixture never triggers {name}"
        else:
            assert counts["dropped"] + counts["modified"] == 0, name
        assert counts["dropped"] == sum(1 for d in report["dropped"] if d["rule"] == name)
        assert counts["modified"] == sum(1 for m in report["modified"] if m["rule"] == name)
    assert report["rows_in"] == len(records) == report["rows_out"] + report["rows_dropped"]


def test_train_json_is_conversation_only_with_inputs_untouched(cleaned):
    records = {r["id"]: r for r in json.loads((FIXTURES / "dirty.json").read_text())}
    report = json.loads((cleaned / "report.json").read_text())
    train = json.loads((cleaned / "train.json").read_text())
    expected = json.loads((FIXTURES / "dirty_expected.json").read_text())
    assert len(train) == report["rows_out"] == sum(e["verdict"] != "drop" for e in expected.values()) > 0
    for row, kept in zip(train, report["kept"], strict=True):
        assert list(row) == ["conversation"]
        turn = row["conversation"][0]
        assert set(turn) == {"system", "input", "output"}
        assert turn["input"] == records[kept["id"]]["conversation"][0]["input"]
        assert turn["system"] == "你现在是一个送祝福大师，帮我针对不同人和事情、节日送对应的祝福"


def test_the_card_states_counts_provenance_and_the_offline_teacher(cleaned):
    card = (cleaned / "card.md").read_text()
    report = json.loads((cleaned / "report.json").read_text())
    sha = hashlib.sha256((cleaned / "train.json").read_bytes()).hexdigest()
    assert "This data was composed by Zhufu's offline teacher, a phrase bank, not an LLM" in card
    assert f"`{sha}`" in card
    assert "seed: `20240501`" in card and "config hash: `" in card and "zhufu-offline-teacher" in card
    assert f"**{report['rows_out']}** conversations kept of {report['rows_in']}" in card
    assert "| near_dedup | yes | 1 | 0 |" in card and "| honorific | yes | 0 | 3 |" in card
    for heading in (
        "Rows per style",
        "Rows per scene",
        "Rows per recipient",
        "Length (characters) per style",
    ):
        assert heading in card
    assert "| 邻居赵大妈 | 2 |" in card


def test_card_command_rebuilds_the_same_card(cleaned, config_file):
    out = cleaned / "card2.md"
    r = zhufu(
        "card", cleaned / "train.json", "--report", cleaned / "report.json", "--merged", FIXTURES / "dirty.json",
        "-o", out, "--config", config_file,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert out.read_text() == (cleaned / "card.md").read_text()


def test_card_for_an_llm_provider_does_not_claim_a_phrase_bank(tmp_path):
    from zhufu.data.card import render_card

    train = write(tmp_path / "train.json", [])
    report = {"rows_in": 1, "rows_out": 0, "rows_dropped": 1, "rows_modified": 0, "rules": {}, "kept": []}
    records = [record("a", "甲", provider="deepseek", model="deepseek-chat")]
    card = render_card(train, report, records, {"provider": "openai", "model": "deepseek-chat"})
    assert "phrase bank" not in card and "| deepseek | deepseek-chat | 1 |" in card


def test_clean_rejects_a_merged_file_with_bad_records(tmp_path, config_file):
    bad = write(tmp_path / "merged.json", [record("a", "甲"), {"id": "b"}])
    r = zhufu(
        "clean", bad, "-o", tmp_path / "t.json", "--report", tmp_path / "r.json", "--config", config_file
    )
    assert r.returncode == 1 and f"{bad}: record 1" in r.stderr and not (tmp_path / "t.json").exists()


# ---------------------------------------------------------------- import


TIANJI_ROWS = [
    {
        "conversation": [
            {
                "system": "你现在是一个送祝福大师，帮我针对不同人和事情、节日送对应的祝福",
                "input": "祝邻居赵大妈春节,小红书风格",
                "output": "祝你新春快乐呀🧧，福气满满！",
            }
        ],
        "src_input": "祝福语的字数少于50字……",
        "style_name": "小红书",
    },
    {"conversation": [{"system": "x", "input": "祝邻居工作升职 ", "output": "恭喜您升职，前程似锦！"}]},
    {
        "conversation": [
            {"input": "祝领导春节快乐，严肃风格", "output": "恭祝领导新春大吉，阖家安康，万事顺遂。"}
        ]
    },
    {"conversation": [{"input": "祝大家元宵节快乐", "output": "元宵节快乐，团团圆圆！"}]},
    {"conversation": [{"input": "祝大家元宵节快乐", "output": "元宵节快乐，团团圆圆！"}]},
]


def test_import_parses_meta_from_inputs_with_whole_names(tmp_path, config_file):
    src = write(tmp_path / "tianji.json", TIANJI_ROWS)
    out = tmp_path / "raw" / "imported" / "round_0.json"
    r = zhufu("import", src, "-o", out, "--config", config_file)
    assert r.returncode == 0, r.stderr
    recs = json.loads(out.read_text())
    metas = [(m["meta"]["recipient"], m["meta"]["scene"], m["meta"]["style"]) for m in recs]
    assert metas == [
        ("邻居赵大妈", "春节", "小红书"),  # the longest recipient name, not 邻居
        ("邻居", "工作升职", "正常"),  # not in this config's grid, but in Tianji's list
        ("领导", "春节", "严肃"),
        (None, "元宵节", "正常"),  # 大家 is nobody's name
        (None, "元宵节", "正常"),
    ]
    assert recs[0]["meta"]["prompt"] == "祝福语的字数少于50字……" and recs[0]["meta"]["provider"] == "import"
    assert recs[1]["conversation"][0]["input"] == "祝邻居工作升职 "  # never rewritten, trailing space and all
    assert len({r["id"] for r in recs}) == 5  # identical rows still get distinct, stable ids
    again = tmp_path / "again.json"
    assert zhufu("import", src, "-o", again, "--config", config_file).returncode == 0
    assert [r["id"] for r in json.loads(again.read_text())] == [r["id"] for r in recs]


def test_imported_data_merges_and_cleans_with_the_same_rules(tmp_path, config_file):
    config = yaml.safe_load(config_file.read_text())
    config["grid"]["recipients"].append("邻居")
    config_file.write_text(yaml.safe_dump(config, allow_unicode=True))
    src = write(tmp_path / "tianji.json", TIANJI_ROWS)
    raw = tmp_path / "raw"
    assert (
        zhufu("import", src, "-o", raw / "imported" / "round_0.json", "--config", config_file).returncode == 0
    )
    write(raw / "正常" / "round_0.json", [record("g1", "祝姐姐生日快乐，天天开心！")])
    assert zhufu("merge", raw, "-o", tmp_path / "merged.json").returncode == 0
    r = zhufu(
        "clean",
        tmp_path / "merged.json",
        "-o",
        tmp_path / "train.json",
        "--report",
        tmp_path / "rep.json",
        "--config",
        config_file,
    )
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "rep.json").read_text())
    by_rule = {(m["id"], m["rule"]): m for m in report["modified"]}
    ids = [r["id"] for r in json.loads((raw / "imported" / "round_0.json").read_text())]
    assert by_rule[(ids[0], "honorific")]["after"] == "祝您新春快乐呀🧧，福气满满！"
    assert by_rule[(ids[1], "honorific")]["after"] == "恭喜你升职，前程似锦！"
    assert by_rule[(ids[1], "system_prompt")]["before"] == "x"
    assert [d["rule"] for d in report["dropped"]] == ["exact_dedup"]


TIANJI_V1_ROWS = [  # (input, expected meta) in Tianji's v1 format, none of them all in the default grid
    ("祝赵老师元宵节,严肃风格", ("赵老师", "元宵节", "严肃")),
    ("祝李总谈判顺利,严肃风格", ("李总", "谈判顺利", "严肃")),
    ("祝福表哥中秋节快乐", ("表哥", "中秋节", "正常")),
    ("祝邻居赵大妈春节,小红书风格", ("邻居赵大妈", "春节", "小红书")),
    ("祝妈妈中秋快乐", ("母亲", "中秋节", "正常")),  # synonyms: resources/synonyms.yaml
    ("祝同学工作升职 ,小红书风格", ("同学", "工作升职", "小红书")),
    ("送祝福给外婆 重阳节", ("外婆", "重阳节", "正常")),
    ("祝哥哥新年快乐，白话风格", ("哥哥", "春节", "白话")),  # a Tianji v2 style the config lacks
]


def test_import_parses_against_tianji_lists_and_synonyms_whatever_the_grid(tmp_path, config_file):
    rows = [{"conversation": [{"input": i, "output": "祝你节日快乐，万事如意！"}]} for i, _ in TIANJI_V1_ROWS]
    src = write(tmp_path / "tianji.json", rows)
    out = tmp_path / "imported.json"
    r = zhufu("import", src, "-o", out, "--config", config_file)
    assert r.returncode == 0, r.stderr
    metas = [
        (m["meta"]["recipient"], m["meta"]["scene"], m["meta"]["style"]) for m in json.loads(out.read_text())
    ]
    assert metas == [expected for _, expected in TIANJI_V1_ROWS]
    assert "name no recipient or scene" not in r.stderr


def test_a_synonym_takes_the_grids_name_when_the_grid_has_one():
    from zhufu.config import load_config
    from zhufu.data.importing import parse_input

    config = load_config()
    assert parse_input("祝母亲中秋节快乐", config)["recipient"] == "母亲"
    config["grid"]["recipients"].append("妈妈")
    assert parse_input("祝母亲中秋节快乐", config)["recipient"] == "妈妈"
    assert parse_input("祝老妈中秋快乐", config)["recipient"] == "妈妈"
    assert parse_input("祝赵大妈春节快乐", config)["recipient"] is None  # 妈 alone is no name


def test_import_names_a_row_that_is_not_a_conversation(tmp_path, config_file):
    src = write(
        tmp_path / "t.json", [{"conversation": [{"input": "x", "output": "y"}]}, {"instruction": "x"}]
    )
    r = zhufu("import", src, "-o", tmp_path / "o.json", "--config", config_file)
    assert r.returncode == 1 and f"{src}: row 1" in r.stderr


# ---------------------------------------------------------------- the Snakemake rules


def test_snakemake_rules_merge_clean_figures_and_rerun_on_a_threshold(tmp_path):
    project = copy_project(tmp_path / "project")
    (project / "fixture_suitability.csv").write_text(SUITABILITY, encoding="utf-8")
    shards = project / "shards"
    records = json.loads((FIXTURES / "dirty.json").read_text())
    write(shards / "a.json", records[:20])
    write(shards / "b.json", records[20:])
    config = yaml.safe_load((project / "config.yaml").read_text())
    config["grid"]["suitability"] = "fixture_suitability.csv"
    config["data"] = {"mix": []}  # the fixture's verdicts count blessings only
    (project / "test_config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True))
    (project / "Snakefile.dataset").write_text(
        'configfile: "test_config.yaml"\n\ninclude: "rules/common.smk"\n\n'
        'SHARDS = ["shards/a.json", "shards/b.json"]\n\ninclude: "rules/dataset.smk"\n'
    )
    snake = [str(Path(sys.executable).parent / "snakemake"), "-s", "Snakefile.dataset", "--cores", "1"]
    targets = ["results/data/dataset_card.md", "results/figures/cells.png"]
    r = run_cmd([*snake, *targets], cwd=project)
    assert r.returncode == 0, r.stderr[-3000:]
    train = json.loads((project / "results/data/train.json").read_text())
    expected = json.loads((FIXTURES / "dirty_expected.json").read_text())
    assert len(train) == sum(1 for e in expected.values() if e["verdict"] != "drop") == 23
    assert (project / "results/figures/suitability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "phrase bank" in (project / "results/data/dataset_card.md").read_text()
    # a changed threshold reruns clean (and what follows), not merge
    config["clean"]["near_dedup"]["threshold"] = 0.95
    (project / "test_config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True))
    r = run_cmd([*snake, "-n", *targets], cwd=project)
    assert r.returncode == 0, r.stderr[-3000:]
    plan = r.stdout + r.stderr
    assert "rule clean:" in plan and "rule figures:" in plan and "rule merge:" not in plan
    # so does general data mixed in (data.mix), and a change to its source file
    config["data"] = {"mix": [{"source": "resources/general_dialogue.json", "count": 5}]}
    (project / "test_config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True))
    r = run_cmd([*snake, "-n", *targets], cwd=project)
    plan = r.stdout + r.stderr
    assert r.returncode == 0, plan[-3000:]
    assert "rule clean:" in plan and "rule figures:" in plan and "rule merge:" not in plan
    r = run_cmd([*snake, *targets], cwd=project)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((project / "results/data/clean_report.json").read_text())
    assert report["rows_mixed"] == 5
    assert len(json.loads((project / "results/data/train.json").read_text())) == report["rows_out"] + 5
    source = project / "resources/general_dialogue.json"
    source.write_text(source.read_text(encoding="utf-8").replace("北京", "北京市"), encoding="utf-8")
    r = run_cmd([*snake, "-n", *targets], cwd=project)
    plan = r.stdout + r.stderr
    assert "rule clean:" in plan and "rule merge:" not in plan, plan[-3000:]
    # a broken shard stops merge with the file and record named in the log
    write(shards / "b.json", [{"id": "zz"}])
    r = run_cmd([*snake, *targets], cwd=project)
    assert r.returncode != 0
    assert "shards/b.json: record 0" in (project / "logs/merge.log").read_text()
    shutil.rmtree(project / "results")


# ---------------------------------------------------------------- import parsing, for every shape of input


def test_parse_input_recovers_every_cell_from_the_inputs_generation_writes():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from zhufu.config import load_config
    from zhufu.data.importing import parse_input
    from zhufu.grid import Cell, cell_rng, training_input

    config = load_config()
    config["grid"]["recipients"] = [*config["grid"]["recipients"], "邻居", "大舅", "大伯"]
    config["grid"]["scenes"] = [*config["grid"]["scenes"], "工作升职 ", "元宵节"]
    grid = config["grid"]

    @settings(max_examples=200, deadline=None)
    @given(
        st.sampled_from(grid["recipients"]),
        st.sampled_from(grid["scenes"]),
        st.sampled_from(list(config["styles"])),
        st.integers(0, 3),
    )
    def check(recipient, scene, style, round_):
        cell = Cell(style, round_, recipient, scene)
        text = training_input(config, cell, cell_rng(config["seed"], cell))
        parsed = parse_input(text, config)
        assert parsed == {"recipient": recipient, "scene": scene.strip(), "style": style}, text

    check()


# ---------------------------------------------------------------- rule sets for imports

DIALOGUE = [  # general dialogue data: long answers, lists, its own system prompt; not blessings
    ("什么是光合作用？", "光合作用是植物利用光能，把二氧化碳和水合成有机物并释放氧气的过程。它主要发生在叶绿体中，分为光反应和暗反应两个阶段。"),
    ("推荐三本入门书", "1. 《时间简史》\n2. 《万物简史》\n3. 《人类简史》\n这三本都适合入门阅读，语言通俗易懂。"),
    ("帮我写个违法的东西", "抱歉，我无法帮助完成这个请求。"),
    ("什么是光合作用", "光合作用是植物利用光能，把二氧化碳和水合成有机物并释放氧气的过程。它主要发生在叶绿体中，分为光反应和暗反应两个阶段。"),
]  # fmt: skip


def test_an_import_with_the_dialogue_rule_set_keeps_format_refusal_and_dedup_rules_only(
    tmp_path, config_file
):
    rows = [
        {"conversation": [{"system": "你是一个有用的助手", "input": q, "output": a}]} for q, a in DIALOGUE
    ]
    src = write(tmp_path / "dialogue.json", rows)
    raw = tmp_path / "raw"
    r = zhufu(
        "import",
        src,
        "-o",
        raw / "imported" / "dialogue.json",
        "--rule-set",
        "dialogue",
        "--config",
        config_file,
    )
    assert r.returncode == 0, r.stderr
    imported = json.loads((raw / "imported" / "dialogue.json").read_text())
    assert [m["meta"]["rule_set"] for m in imported] == ["dialogue"] * 4
    assert {(m["meta"]["recipient"], m["meta"]["scene"], m["meta"]["style"]) for m in imported} == {
        (None, None, "dialogue")
    }
    long_blessing = "祝姐姐生日快乐，愿你新的一岁里每天都开开心心，工作顺利，身体健康，万事如意，心想事成！"
    write(
        raw / "正常" / "round_0.json",
        [record("g1", long_blessing), record("g2", "祝姐姐生日快乐，天天开心！")],
    )
    assert zhufu("merge", raw, "-o", tmp_path / "merged.json").returncode == 0
    out = tmp_path / "out"
    r = zhufu(
        "clean", tmp_path / "merged.json", "-o", out / "train.json", "--report", out / "rep.json",
        "--card", out / "card.md", "--config", config_file,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "rep.json").read_text())
    ids = [m["id"] for m in imported]
    dropped = {d["id"]: d["rule"] for d in report["dropped"]}
    # the blessing rules still hold for the run's own records (too long for 正常)
    assert dropped == {ids[2]: "refusal", ids[3]: "exact_dedup", "g1": "length"}
    train = json.loads((out / "train.json").read_text())
    systems = {row["conversation"][0]["input"]: row["conversation"][0]["system"] for row in train}
    assert systems["什么是光合作用？"] == "你是一个有用的助手"  # its own system prompt is kept
    assert "推荐三本入门书" in systems  # a list, long: not a blessing, not dropped for it
    assert report["rule_sets"] == {
        "dialogue": {"rows_in": 4, "rows_out": 2, "dropped": {"refusal": 1, "exact_dedup": 1}, "modified": {}}
    }
    assert "| dialogue | 4 | 2 | exact_dedup 1, refusal 1 | 0 |" in (out / "card.md").read_text()


def test_an_unknown_rule_set_is_one_line_naming_it(tmp_path, config_file):
    src = write(tmp_path / "d.json", [{"conversation": [{"input": "x", "output": "y"}]}])
    r = zhufu("import", src, "-o", tmp_path / "o.json", "--rule-set", "chitchat", "--config", config_file)
    assert r.returncode != 0 and "'chitchat'" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_snakemake_imports_each_file_with_its_rule_set(tmp_path):
    project = copy_project(tmp_path / "project")
    write(project / "chat.json", [{"conversation": [{"input": q, "output": a}]} for q, a in DIALOGUE])
    write(project / "tianji.json", TIANJI_ROWS)
    config = yaml.safe_load((project / "config.yaml").read_text())
    config["clean"]["imports"] = [{"path": "chat.json", "rule_set": "dialogue"}, "tianji.json"]
    (project / "test_config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True))
    (project / "Snakefile.dataset").write_text(
        'configfile: "test_config.yaml"\n\ninclude: "rules/common.smk"\n\nSHARDS = []\n\ninclude: "rules/dataset.smk"\n'
    )
    snake = [str(Path(sys.executable).parent / "snakemake"), "-s", "Snakefile.dataset", "--cores", "1"]
    r = run_cmd([*snake, "results/data/clean_report.json"], cwd=project)
    assert r.returncode == 0, r.stderr[-3000:]
    chat = json.loads((project / "results/raw/imported/chat.json").read_text())
    tianji = json.loads((project / "results/raw/imported/tianji.json").read_text())
    assert {m["meta"].get("rule_set") for m in chat} == {"dialogue"}
    assert {m["meta"].get("rule_set") for m in tianji} == {None}
    report = json.loads((project / "results/data/clean_report.json").read_text())
    assert report["rule_sets"]["dialogue"]["rows_in"] == 4 and report["rows_in"] == 4 + len(TIANJI_ROWS)
    # editing a threshold reruns clean, not the imports
    config["clean"]["near_dedup"]["threshold"] = 0.9
    (project / "test_config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True))
    r = run_cmd([*snake, "-n", "results/data/clean_report.json"], cwd=project)
    assert "rule clean:" in r.stdout + r.stderr and "rule import_data:" not in r.stdout + r.stderr
