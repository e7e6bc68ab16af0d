"""The whole default workflow, run for real in a copy of the project: every contracted file is checked."""

import json
import re
import shutil

import pytest
from helpers import BIN, CHROMIUM, CHROMIUM_FLAGS, copy_run, run_cmd

# the first test also runs the whole workflow (the session fixture default_run): up to 30 min
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

CONTRACT = [
    "results/data/merged.json",
    "results/data/train.json",
    "results/data/clean_report.json",
    "results/data/dataset_card.md",
    "results/figures/suitability.png",
    "results/figures/lengths.png",
    "results/base_model/config.json",
    "results/train/xtuner_config.py",
    "results/train/work_dir/last_checkpoint",
    "results/model/adapter/adapter_config.json",
    "results/model/merged/config.json",
    "results/eval/generations.jsonl",
    "results/eval/metrics.json",
    "results/eval/table.md",
    "results/eval/table.html",
    "results/figures/loss.png",
]


def snakemake(project, *args, timeout=1800):
    return run_cmd(
        [str(BIN / "snakemake"), "--profile", "profiles/default", "--cores", "2", *args],
        cwd=project,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def run(default_run):
    """The finished default workflow (tests/conftest.py), shared with test_reruns.py and test_slurm.py."""
    return default_run


def test_every_contracted_file_exists(run):
    missing = [p for p in CONTRACT if not (run / p).exists()]
    assert not missing


def test_shards_parse_and_ids_are_unique(run):
    shards = sorted((run / "results/raw").glob("*/round_*.json"))
    assert len(shards) == 3 * 6  # 3 styles × 6 rounds
    ids = []
    for shard in shards:
        records = json.loads(shard.read_text(encoding="utf-8"))
        assert records, shard
        for rec in records:
            turn = rec["conversation"][0]
            assert set(turn) == {"system", "input", "output"}
            assert turn["output"].strip()
            assert rec["meta"]["style"] == shard.parent.name
            assert rec["meta"]["round"] == int(shard.stem.split("_")[1])
            assert rec["meta"]["provider"] == "offline"
            ids.append(rec["id"])
    assert len(ids) == len(set(ids))


def test_train_json_loads_with_datasets(run):
    from datasets import load_dataset

    ds = load_dataset("json", data_files=str(run / "results/data/train.json"), split="train")
    assert len(ds) > 100
    assert ds.column_names == ["conversation"]
    assert set(ds[0]["conversation"][0]) == {"system", "input", "output"}


def test_merged_model_loads_and_generates(run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = run / "results/model/merged"
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "祝姐姐生日快乐，小红书风格"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    ids = tok(prompt, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=24, do_sample=False)
    text = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert text.strip()


def test_evaluation_compares_base_and_tuned(run):
    rows = [
        json.loads(line)
        for line in (run / "results/eval/generations.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert {r["model"] for r in rows} == {"base", "tuned"}
    for model in ("base", "tuned"):
        assert sum(r["model"] == model for r in rows) >= 60
    tuned = {(r["input"], r["sample"]): r["output"] for r in rows if r["model"] == "tuned"}
    base = {(r["input"], r["sample"]): r["output"] for r in rows if r["model"] == "base"}
    assert tuned.keys() == base.keys()
    assert sum(tuned[k] != base[k] for k in tuned) >= len(tuned) // 2
    metrics = json.loads((run / "results/eval/metrics.json").read_text(encoding="utf-8"))
    assert set(metrics["groups"]) == {"小红书", "正常", "严肃", "all", "held-out", "off-task"}
    # issue 23: the off-task requests, asked of both models, scored by leakage and on_topic only
    off_task = metrics["groups"]["off-task"]
    assert set(off_task) == {"leakage", "on_topic"}
    assert off_task["leakage"]["tuned"]["n"] == metrics["settings"]["off_task_inputs"] * 2 >= 60
    assert metrics["groups"]["all"]["record_rules"]["tuned"]["ci"] is not None
    # what the default is for (issue 14): the tuned tiny model beats its untrained base on the style bands,
    # the record rules, and naming the held-out request's recipient and scene
    verdicts = {m: metrics["groups"]["held-out"][m]["verdict"] for m in metrics["groups"]["held-out"]}
    for m in ("length_band", "emoji_band", "record_rules", "recipient", "scene"):
        assert verdicts[m] == "better", (m, metrics["groups"]["held-out"][m])
    assert "| all | length_band |" in (run / "results/eval/table.md").read_text(encoding="utf-8")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_report_opens_in_chromium_with_every_section(run, tmp_path):
    """`snakemake --report`: one HTML file; opened in Chromium it lists the card, the figures, the loss curve and
    the evaluation table. The screenshots are kept as results/report.png (the start page) and report-1..3.png
    (each section opened), and in the test's tmp folder."""
    from playwright.sync_api import sync_playwright

    result = snakemake(run, "--report", "results/report.html")
    assert result.returncode == 0, result.stderr[-4000:]
    report = run / "results/report.html"
    assert report.stat().st_size > 10_000
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(report.as_uri())
        page.wait_for_load_state("networkidle")
        page.wait_for_timeout(1500)
        text = page.inner_text("body")
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        shown = {"2. Training": "results/figures/loss.png", "3. Evaluation": "results/eval/table.html"}
        for n, category in enumerate(("1. Data", "2. Training", "3. Evaluation"), 1):  # each lists its files
            page.get_by_text(category, exact=True).first.click()
            page.wait_for_timeout(800)
            text += page.inner_text("body")
            if category in shown:  # open the section's file in the report's viewer (its eye button)
                page.locator("tr", has_text=shown[category]).locator("a[iconname=eye]").first.click()
                page.wait_for_timeout(2000)
                text += "".join(f.inner_text("body") for f in page.frames if f != page.main_frame)
            page.screenshot(path=str(tmp_path / f"report-{n}.png"), full_page=True)
            page.get_by_text("Results", exact=True).first.click()
            page.wait_for_timeout(500)
        browser.close()
    for shot in ("report.png", "report-1.png", "report-2.png", "report-3.png"):
        shutil.copy(tmp_path / shot, run / "results" / shot)
    for name in ("dataset_card.md", "suitability.png", "lengths.png", "cells.png", "loss.png", "table.html"):
        assert name in text, name
    for category in ("1. Data", "2. Training", "3. Evaluation"):
        assert category in text, category
    assert "held-out" in text and "小红书" in text  # the evaluation table itself, shown in the report
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_second_run_does_nothing(run):
    result = snakemake(run)
    assert result.returncode == 0
    assert "Nothing to be done" in result.stdout + result.stderr


def test_rerun_after_deleting_results_makes_no_teacher_request(run, tmp_path):
    """Deleting results/ and rerunning makes 0 requests: the LLM cache lives outside results/.

    In a copy of the finished run (cache and Snakemake's records included): the module's run stays whole.
    """
    project = copy_run(run, tmp_path / "project")
    before = {p.relative_to(project): p.read_bytes() for p in (project / "results/raw").rglob("*.json")}
    assert len(before) == 18  # 3 styles × 6 rounds
    shutil.rmtree(project / "results")  # all of it: the answer cache lives outside results/
    shutil.rmtree(project / "logs/generate")
    result = snakemake(project, "results/data/merged.json")
    assert result.returncode == 0, result.stderr[-4000:]
    after = {p.relative_to(project): p.read_bytes() for p in (project / "results/raw").rglob("*.json")}
    assert after == before
    logs = "".join(p.read_text(encoding="utf-8") for p in (project / "logs/generate").rglob("*.log"))
    requested = [int(n) for n in re.findall(r"(\d+) requested", logs)]
    assert len(requested) == 18 and all(n == 0 for n in requested), logs[-3000:]
