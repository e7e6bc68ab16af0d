"""merge, import, clean (end to end on a dirty fixture), the dataset card, and the Snakemake rules."""

import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, copy_project, run_cmd

FIXTURES = ROOT / "tests" / "fixtures"
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
    # every rule of issue 4 is exercised by the fixture
    for name, counts in report["rules"].items():
        assert counts["dropped"] + counts["modified"] > 0, f"the fixture never triggers {name}"
        assert counts["dropped"] == sum(1 for d in report["dropped"] if d["rule"] == name)
        assert counts["modified"] == sum(1 for m in report["modified"] if m["rule"] == name)
    assert report["rows_in"] == len(records) == report["rows_out"] + report["rows_dropped"]


def test_train_json_is_conversation_only_with_inputs_untouched(cleaned):
    records = {r["id"]: r for r in json.loads((FIXTURES / "dirty.json").read_text())}
    report = json.loads((cleaned / "report.json").read_text())
    train = json.loads((cleaned / "train.json").read_text())
    assert len(train) == report["rows_out"]
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
        (None, "工作升职", "正常"),  # 邻居 is not in this config's grid
        ("领导", "春节", "严肃"),
        (None, None, "正常"),
        (None, None, "正常"),
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
    assert len(train) == 20
    assert (project / "results/figures/suitability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "phrase bank" in (project / "results/data/dataset_card.md").read_text()
    # a changed threshold reruns clean (and what follows), not merge
    config["clean"]["near_dedup"]["threshold"] = 0.95
    (project / "test_config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True))
    r = run_cmd([*snake, "-n", *targets], cwd=project)
    assert r.returncode == 0, r.stderr[-3000:]
    plan = r.stdout + r.stderr
    assert "rule clean:" in plan and "rule figures:" in plan and "rule merge:" not in plan
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
