"""What an edit reruns, at the Snakemake level: the default workflow runs once for real; each edit is made in
a copy of the finished project (results/ and .snakemake/ metadata, mtimes kept; the session's one default run,
tests/conftest.py) and checked through the plan
(`snakemake -n`, jobs per rule) and, where it is cheap, a real rerun. README "Rerunning after edits" is the
same table."""

import json
import re

import pytest
import yaml
from helpers import BIN, ROOT, copy_run, run_cmd

from zhufu.config import PROVIDER_IDENTITY, PROVIDER_OPERATION

# the first test also runs the default workflow (the session fixture default_run), unless another did
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

# The jobs of the default workflow after the raw shards: merge → clean → figures, base_model (the tiny one
# is built from train.json), check_format, render_config → train → loss_figure, pth_to_hf → merge_model →
# evaluate.
AFTER_TRAIN = {"train": 1, "loss_figure": 1, "pth_to_hf": 1, "merge_model": 1, "evaluate": 1, "all": 1}
AFTER_RENDER = {"render_config": 1, **AFTER_TRAIN}
AFTER_CLEAN = {"clean": 1, "figures": 1, "base_model": 1, "check_format": 1, **AFTER_RENDER}
AFTER_MERGE = {"merge": 1, **AFTER_CLEAN}
AFTER_GENERATE = {"generate": 18, **AFTER_MERGE}  # config.yaml: 3 styles × 6 rounds


def snakemake(project, *args, timeout=1800):
    return run_cmd([str(BIN / "snakemake"), "--cores", "2", *args], cwd=project, timeout=timeout)


def plan(project, *args) -> dict[str, int]:
    """Jobs per rule that `snakemake -n` would run ({} when nothing is to be done)."""
    result = snakemake(project, "-n", *args, timeout=300)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    if "Nothing to be done" in out:
        return {}
    table = out[out.index("Job stats:") : out.index("\ntotal")]
    counts = {m[1]: int(m[2]) for m in re.finditer(r"(?m)^(\w+)\s+(\d+)\s*$", table)}
    assert counts, out[-3000:]
    return counts


@pytest.fixture
def copy(default_run, tmp_path):
    """The finished default project (tests/conftest.py), copied with its results, metadata and cache, every
    mtime kept."""
    return copy_run(default_run, tmp_path / "project")


def edit_config(project, change):
    path = project / "config.yaml"
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    change(config)
    path.write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")


def append_line(path, line="# edited\n"):
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line)


def test_nothing_changed_plans_nothing_and_runs_nothing(copy):
    assert plan(copy) == {}
    result = snakemake(copy)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Nothing to be done" in result.stdout + result.stderr


def test_every_provider_key_is_identity_or_operation():
    schema = yaml.safe_load((ROOT / "schemas/config.schema.yaml").read_text(encoding="utf-8"))
    keys = set(schema["properties"]["provider"]["properties"])
    assert not set(PROVIDER_IDENTITY) & set(PROVIDER_OPERATION)
    assert keys == set(PROVIDER_IDENTITY) | set(PROVIDER_OPERATION)


@pytest.mark.parametrize(
    "key,value",
    [
        ("rpm", 600),
        ("concurrency", 2),
        ("budget", 5.0),
        ("timeout_s", 30),
        ("batch", True),
        ("batch_options", {"poll_s": 1, "max_lines": 100}),
    ],
)
def test_an_operation_setting_reruns_nothing(copy, key, value):
    def change(config):
        assert config["provider"].get(key) != value  # batch_options is not in config.yaml: defaults apply
        config["provider"][key] = value

    edit_config(copy, change)
    assert plan(copy) == {}


def test_all_operation_settings_at_once_rerun_nothing_for_real(copy):
    def change(config):
        config["provider"].update(
            rpm=600, tpm=100000, concurrency=3, timeout_s=20, max_attempts=3, budget=1.0, backoff_s=0.5
        )
        config["provider"]["price"] = {"input_per_1m": 2, "output_per_1m": 8, "currency": "CNY"}

    edit_config(copy, change)
    result = snakemake(copy)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Nothing to be done" in result.stdout + result.stderr


def test_sampling_is_identity_and_reruns_every_shard(copy):
    edit_config(copy, lambda c: c["provider"].update(temperature=0.7))
    assert plan(copy) == AFTER_GENERATE


def test_an_added_evaluation_input_reruns_evaluate_only(copy):
    new = "祝爷爷中秋节快乐，严肃风格"
    edit_config(copy, lambda c: c["evaluate"]["inputs"].append(new))
    assert plan(copy) == {"evaluate": 1, "all": 1}
    checkpoint = (copy / "results/train/work_dir/last_checkpoint").stat().st_mtime_ns
    result = snakemake(copy)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (copy / "results/eval/generations.jsonl").read_text().splitlines()]
    answers = sorted(r["model"] for r in rows if r["input"] == new)
    first = sorted(r["model"] for r in rows if r["input"] == "祝姐姐生日快乐")
    assert set(answers) == {"base", "tuned"} and answers == first  # as many samples as an old input
    assert (copy / "results/train/work_dir/last_checkpoint").stat().st_mtime_ns == checkpoint


def test_training_eval_inputs_rerender_and_retrain(copy):
    edit_config(copy, lambda c: c["train"].update(eval_inputs=["祝姐姐生日快乐"]))
    assert plan(copy) == AFTER_RENDER


def test_a_raw_shard_edited_by_hand_reruns_merge_and_after_never_generate(copy):
    shard = copy / "results/raw/正常/round_0.json"
    records = json.loads(shard.read_text(encoding="utf-8"))
    records[0]["conversation"][0]["output"] = "祝您生日快乐，万事如意，身体健康！"
    shard.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    assert plan(copy) == AFTER_MERGE


def test_a_change_of_data_mix_reruns_clean_and_after_never_generate(copy):
    edit_config(copy, lambda c: c["data"]["mix"][0].update(share=0.3))
    assert plan(copy) == AFTER_CLEAN
    edit_config(copy, lambda c: c["data"].update(mix=[]))
    assert plan(copy) == AFTER_CLEAN


def test_an_edited_general_source_reruns_clean_and_after(copy):
    source = copy / "resources/general_dialogue.json"
    source.write_text(source.read_text(encoding="utf-8").replace("北京", "北京市"), encoding="utf-8")
    assert plan(copy) == AFTER_CLEAN


def test_an_edited_off_task_list_reruns_evaluate_only(copy):
    append_line(copy / "resources/off_task.yaml", "  - {kind: travel, input: 去苏州玩一天怎么安排？}\n")
    assert plan(copy) == {"evaluate": 1, "all": 1}


def test_a_cleaning_threshold_reruns_clean_and_after(copy):
    edit_config(copy, lambda c: c["clean"]["chinese_ratio"].update(min_ratio=0.6))
    assert plan(copy) == AFTER_CLEAN


def test_a_training_setting_reruns_render_config_and_after(copy):
    edit_config(copy, lambda c: c["train"]["overrides"].update(lr=0.004))
    assert plan(copy) == AFTER_RENDER


def render(project) -> str:
    """What render_config writes for the project's config (`zhufu render-config`, the rule's code)."""
    out = project / "rendered.py"
    result = run_cmd(
        [str(BIN / "zhufu"), "render-config", "--config", "config.yaml", "-o", str(out)], cwd=project
    )
    assert result.returncode == 0, result.stderr
    return out.read_text(encoding="utf-8")


def test_resource_settings_rerun_nothing_and_stay_out_of_the_xtuner_config(copy):
    before = render(copy)
    edit_config(copy, lambda c: c["train"]["overrides"].update(mem_mb=9000, runtime_min=90))
    assert plan(copy) == {}
    assert render(copy) == before


def test_an_added_scene_reruns_every_shard_requesting_only_the_new_cells(copy):
    edit_config(copy, lambda c: c["grid"]["scenes"].append("元宵节"))
    assert plan(copy) == AFTER_GENERATE
    old = {p: len(json.loads(p.read_text(encoding="utf-8"))) for p in (copy / "results/raw").rglob("*.json")}
    result = snakemake(copy, "shards")
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(old) == 18  # 3 styles × 6 rounds
    for shard, n_old in old.items():
        n_new = len(json.loads(shard.read_text(encoding="utf-8")))
        rel = shard.relative_to(copy / "results/raw")
        log = (copy / "logs/generate" / rel.with_suffix(".log")).read_text(encoding="utf-8")
        requested = [int(n) for n in re.findall(r"(\d+) requested", log)]
        cached = [int(n) for n in re.findall(r"(\d+) cached", log)]
        assert n_new > n_old, rel
        assert requested[-1] == n_new - n_old, log[-2000:]
        assert cached[-1] == n_old, log[-2000:]
    # and then the rest, with no shard job left
    assert plan(copy) == AFTER_MERGE


def test_the_phrase_bank_reruns_offline_generation(copy):
    append_line(copy / "resources/phrases.yaml")
    assert plan(copy) == AFTER_GENERATE


@pytest.mark.parametrize(
    "module,expected",
    [
        ("zhufu/generate/run.py", AFTER_GENERATE),
        ("zhufu/teacher/compose.py", AFTER_GENERATE),
        ("zhufu/data/clean.py", AFTER_CLEAN),
        ("zhufu/train/export.py", {"pth_to_hf": 1, "merge_model": 1, "evaluate": 1, "all": 1}),
        ("zhufu/model/evaluate.py", {"evaluate": 1, "all": 1}),
        ("zhufu/model/chat.py", {"evaluate": 1, "all": 1}),
        ("zhufu/data/decisions.py", AFTER_CLEAN),
        ("zhufu/generate/engine.py", AFTER_GENERATE),
        # the web demo and the review page are commands: no rule imports them (docs/architecture.md)
        ("zhufu/model/serve.py", {}),
        ("zhufu/model/review.py", {}),
    ],
)
def test_a_stage_module_reruns_that_stage_and_after(copy, module, expected):
    append_line(copy / module)
    assert plan(copy) == expected


def test_a_shared_helper_reruns_nothing_says_so_and_forcerun_applies_it(copy):
    append_line(copy / "zhufu/io.py")
    result = snakemake(copy, "-n")
    assert result.returncode == 0
    assert "Nothing to be done" in result.stdout + result.stderr
    assert "zhufu/io.py (the shared core) changed after" in result.stderr
    assert "--forcerun" in result.stderr
    assert plan(copy, "--forcerun", "merge") == AFTER_MERGE
