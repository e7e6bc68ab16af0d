"""Human review: decisions in review/decisions.jsonl, applied by clean; the page in real headless Chromium,
and the plan it triggers (clean reruns, generation does not)."""

import json
import threading

import pytest
from helpers import BIN, CHROMIUM, CHROMIUM_FLAGS, ROOT, copy_project, run_cmd

from zhufu.config import load_config
from zhufu.data.clean import clean_records
from zhufu.data.decisions import load_decisions, record_text
from zhufu.errors import DataError
from zhufu.model.review import make_review_server

CONFIG = load_config()
RECORDS = json.loads((ROOT / "tests/fixtures/dirty.json").read_text(encoding="utf-8"))
BY_ID = {r["id"]: r for r in RECORDS}


def run_clean(decisions):
    return clean_records(
        RECORDS, CONFIG["clean"], CONFIG["styles"], CONFIG["system_prompt"], None, 1, decisions
    )


def decision(rid, what, text=None, judged=None):
    d = {"id": rid, "decision": what, "judged": judged if judged is not None else record_text(BY_ID[rid])}
    return {**d, "text": text} if text else d


def test_decisions_reject_edit_accept_and_stale():
    kept0, report0 = run_clean(None)
    kept_ids0 = {r["id"] for r in kept0}
    assert "keep_plain" in kept_ids0 and "refusal_cn" not in kept_ids0 and "keep_peer" in kept_ids0
    decisions = {
        "keep_plain": decision("keep_plain", "reject"),
        "keep_xhs": decision("keep_xhs", "edit", "新的一岁闪闪发光呀✨"),
        "refusal_cn": decision("refusal_cn", "accept"),
        "keep_peer": decision("keep_peer", "reject", judged="an older text"),
    }
    kept, report = run_clean(decisions)
    by_id = {r["id"]: r for r in kept}
    assert "keep_plain" not in by_id
    assert {"id": "keep_plain", "rule": "review"}.items() <= next(
        d for d in report["dropped"] if d["id"] == "keep_plain"
    ).items()
    assert by_id["keep_xhs"]["conversation"][0]["output"] == "新的一岁闪闪发光呀✨"
    assert any(m["id"] == "keep_xhs" and m["rule"] == "review" for m in report["modified"])
    assert "refusal_cn" in by_id  # accepted over the refusal rule
    assert "keep_peer" in by_id  # stale: not applied
    assert report["review"]["stale"] == [{"id": "keep_peer", "decision": "reject", "judged": "an older text"}]
    assert {"id": "refusal_cn", "decision": "accept", "overrides": "refusal"} in report["review"]["applied"]
    assert report["rules"]["review"] == {"enabled": True, "dropped": 1, "modified": 1}
    # keep_plain out, refusal_cn in, and exact_dup (a copy of keep_plain) is no longer a duplicate
    assert set(by_id) == kept_ids0 - {"keep_plain"} | {"refusal_cn", "exact_dup"}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "line 2: not a JSON object"),
        ('{"id": "x", "decision": "maybe", "judged": ""}', "line 2: expected"),
        ('{"id": "x", "decision": "edit", "judged": ""}', "line 2: expected"),
    ],
)
def test_a_bad_decisions_line_is_one_error_naming_the_line(tmp_path, line, message):
    path = tmp_path / "decisions.jsonl"
    path.write_text(json.dumps(decision("keep_plain", "accept")) + "\n" + line + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=message):
        load_decisions(path)


def snakemake(project, *args):
    return run_cmd([str(BIN / "snakemake"), "--cores", "2", *args], cwd=project, timeout=900)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)")
def test_review_in_chromium_then_clean_reruns_and_generation_does_not(tmp_path):
    from playwright.sync_api import sync_playwright

    project = copy_project(tmp_path / "project")
    (project / "review").mkdir(exist_ok=True)
    (project / "review" / "decisions.jsonl").unlink(missing_ok=True)
    target = "results/data/clean_report.json"
    first = snakemake(project, target)
    assert first.returncode == 0, first.stderr[-3000:]
    merged = json.loads((project / "results/data/merged.json").read_text(encoding="utf-8"))
    decisions_path = project / "review" / "decisions.jsonl"
    server = make_review_server(
        project / "results/data/merged.json", project / target, decisions_path, "127.0.0.1", 0
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
            page = browser.new_page()
            page.goto(url)
            page.locator("body[data-ready='1']").wait_for(timeout=30_000)
            assert page.locator("#rows tr").count() == len(merged)
            assert f"0 / {len(merged)} judged" in page.inner_text("#progress")
            # filter: 严肃 answers for 爷爷
            page.select_option("#f-style", "严肃")
            page.select_option("#f-recipient", "爷爷")
            rows = page.locator("#rows tr")
            expected = [
                r for r in merged if r["meta"]["style"] == "严肃" and r["meta"]["recipient"] == "爷爷"
            ]
            assert rows.count() == len(expected) >= 2
            first_id, second_id = rows.nth(0).get_attribute("data-id"), rows.nth(1).get_attribute("data-id")
            # reject the first with the keyboard; the cursor moves on; edit the second
            page.keyboard.press("r")
            page.locator("#rows tr").nth(0).locator("td.decision", has_text="reject").wait_for()
            page.once("dialog", lambda d: d.accept("敬祝爷爷福寿安康，春节吉祥。"))
            page.keyboard.press("e")
            page.locator("#rows tr").nth(1).locator("td.decision", has_text="edit").wait_for()
            assert f"2 / {len(merged)} judged" in page.inner_text("#progress")
            page.screenshot(path=str(tmp_path / "review.png"), full_page=True)
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
    by_id = {r["id"]: r for r in merged}
    lines = [json.loads(x) for x in decisions_path.read_text(encoding="utf-8").splitlines()]
    assert lines == [
        {"id": first_id, "decision": "reject", "judged": by_id[first_id]["conversation"][0]["output"]},
        {
            "id": second_id,
            "decision": "edit",
            "judged": by_id[second_id]["conversation"][0]["output"],
            "text": "敬祝爷爷福寿安康，春节吉祥。",
        },
    ]
    # the plan: clean reruns (the decisions file is a new input); nothing upstream does
    plan = snakemake(project, target, "-n", "--quiet", "rules")
    assert plan.returncode == 0, plan.stderr[-2000:]
    planned = plan.stdout + plan.stderr
    assert "clean" in planned
    for upstream in ("generate", "merge", "import_data"):
        assert upstream not in planned.replace("merged", "")
    second = snakemake(project, target)
    assert second.returncode == 0, second.stderr[-3000:]
    report = json.loads((project / target).read_text(encoding="utf-8"))
    assert any(d["id"] == first_id and d["rule"] == "review" for d in report["dropped"])
    assert any(m["id"] == second_id and m["rule"] == "review" for m in report["modified"])
    assert report["review"]["stale"] == []
