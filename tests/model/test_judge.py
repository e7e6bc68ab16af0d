"""The optional LLM judge (zhufu judge, the judge rule): the real openai client against a real server on
127.0.0.1 (Zhufu's offline teacher, which answers judge requests with its rubric), the answer cache, the
spend ledger, the estimate before spending and the max_cost refusal."""

from __future__ import annotations

import json

import pytest
import yaml
from helpers import BIN, copy_project, run_cmd

from zhufu.model.judge import parse_verdict
from zhufu.teacher.server import running_teacher, teacher_stats

GOOD = "亲爱的姐姐，生日快乐！愿你新的一岁所求皆如愿呀🎂"
ROWS = [
    # a blessing the rubric passes: recipient, scene, length, clean text
    {"model": "tuned", "style": "小红书", "recipient": "姐姐", "scene": "生日", "output": GOOD},
    # the wrong recipient and scene
    {
        "model": "tuned",
        "style": "小红书",
        "recipient": "姐姐",
        "scene": "生日",
        "output": "领导快快好起来呀💪",
    },
    # an untrained model's noise: broken characters, far too long
    {
        "model": "base",
        "style": "小红书",
        "recipient": "姐姐",
        "scene": "生日",
        "output": "领导\ufffd团圆" * 20,
    },
    {"model": "base", "style": "正常", "recipient": "弟弟", "scene": "康复", "output": "快乐快乐"},
]


@pytest.fixture
def judged(tmp_path):
    """A folder with the evaluation's answers and a config whose judge is an `openai` provider at a price."""
    (tmp_path / "eval").mkdir()
    rows = [{"input": f"祝{r['recipient']}{r['scene']}", "source": "holdout", "sample": 0, **r} for r in ROWS]
    (tmp_path / "eval" / "generations.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
    )
    return tmp_path


def judge_config(tmp_path, url, **judge):
    cfg = {
        "cache": str(tmp_path / "cache.sqlite"),
        "evaluate": {
            "bootstrap": 200,
            "judge": {
                "provider": {
                    "kind": "openai",
                    "model": "judge-1",
                    "base_url": url,
                    "api_key_env": "ZHUFU_TEST_JUDGE_KEY",
                    "price": {"input_per_1m": 2, "output_per_1m": 8, "currency": "CNY"},
                },
                **judge,
            },
        },
    }
    path = tmp_path / "judge.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    return path


def zhufu(args, cwd):
    return run_cmd([str(BIN / "zhufu"), *args], cwd=cwd, env={"ZHUFU_TEST_JUDGE_KEY": "sk-test-judge"})


def test_estimate_first_then_judge_once_through_the_cache_and_the_ledger(judged):
    with running_teacher() as url:
        cfg = judge_config(judged, url)
        est = zhufu(["judge", "--configfile", str(cfg), "-o", str(judged / "eval"), "--estimate"], judged)
        assert est.returncode == 0, est.stderr[-2000:]
        assert "4 answers, 0 cached, 4 to request" in est.stdout
        assert "at most 0.0" in est.stdout and "CNY" in est.stdout
        assert teacher_stats(url)["requests"] == 0  # the estimate calls nothing

        run = zhufu(["judge", "--configfile", str(cfg), "-o", str(judged / "eval")], judged)
        assert run.returncode == 0, run.stderr[-2000:]
        assert teacher_stats(url)["requests"] == 4
        verdicts = [json.loads(x) for x in (judged / "eval" / "judge.jsonl").read_text("utf-8").splitlines()]
        scores = [v["judge"]["score"] for v in verdicts]
        assert scores[0] == 5, verdicts[0]["judge"]
        assert scores[1] < 4 and scores[2] < 4, scores
        summary = json.loads((judged / "eval" / "judge.json").read_text("utf-8"))
        assert summary["estimate"]["calls"] == 4 and summary["estimate"]["cost_max"] > 0
        assert summary["groups"]["all"]["judge_pass"]["tuned"]["value"] == 0.5
        assert summary["groups"]["all"]["judge_pass"]["base"]["value"] == 0.0
        assert "judge_score" in (judged / "eval" / "judge.md").read_text("utf-8")
        assert "judge_pass" in (judged / "eval" / "judge.html").read_text("utf-8")

        spend = zhufu(["spend", "--configfile", str(cfg), "--json"], judged)
        ledger = json.loads(spend.stdout)
        assert [(r["model"], r["calls"]) for r in ledger] == [("judge-1", 4)]
        assert ledger[0]["cost"] > 0

        again = zhufu(["judge", "--configfile", str(cfg), "-o", str(judged / "eval")], judged)
        assert again.returncode == 0, again.stderr[-2000:]
        assert teacher_stats(url)["requests"] == 4  # every verdict came from the cache
        for path in judged.rglob("*"):
            if path.is_file():
                assert b"sk-test-judge" not in path.read_bytes(), path


def test_max_cost_refuses_before_any_call(judged):
    with running_teacher() as url:
        cfg = judge_config(judged, url, max_cost=0.0001)
        run = zhufu(["judge", "--configfile", str(cfg), "-o", str(judged / "eval")], judged)
        assert run.returncode != 0
        assert "evaluate.judge.max_cost" in run.stderr and "4 to request" in run.stderr
        assert teacher_stats(url)["requests"] == 0
        assert not (judged / "eval" / "judge.json").exists()


def test_a_missing_key_is_named_and_nothing_is_called(judged):
    with running_teacher() as url:
        cfg = judge_config(judged, url)
        run = run_cmd(
            [str(BIN / "zhufu"), "judge", "--configfile", str(cfg), "-o", str(judged / "eval")],
            cwd=judged,
            env={"ZHUFU_TEST_JUDGE_KEY": ""},
        )
        assert run.returncode != 0
        assert "ZHUFU_TEST_JUDGE_KEY" in run.stderr
        assert teacher_stats(url)["requests"] == 0


@pytest.mark.parametrize(
    ("text", "score"),
    [
        ('{"score": 4, "reason": "得体"}', 4),
        ('```json\n{"score": "5", "reason": "很好"}\n```', 5),
        ('评分如下：{"score": 2, "reason": "场景不符"}', 2),
        ('{"score": 7, "reason": "?"}', None),
        ('{"score": true}', None),
        ("这条祝福很好，给4分", None),
    ],
)
def test_parse_verdict(text, score):
    got, reason = parse_verdict(text)
    assert got == score
    if score is None:
        assert "no score 1–5" in reason


def test_judge_is_planned_only_when_enabled(tmp_path):
    project = copy_project(tmp_path / "p")
    off = run_cmd([str(BIN / "snakemake"), "-n", "--cores", "1"], cwd=project)
    assert off.returncode == 0, off.stderr[-2000:]
    assert "judge" not in [line.split()[0] for line in off.stdout.splitlines() if line.strip()]
    (project / "on.yaml").write_text("evaluate:\n  judge: {enabled: true}\n", encoding="utf-8")
    on = run_cmd([str(BIN / "snakemake"), "-n", "--cores", "1", "--configfile", "on.yaml"], cwd=project)
    assert on.returncode == 0, on.stderr[-2000:]
    assert "rule judge:" in on.stdout
    bad = "evaluate:\n  judge: {enabled: true, provider: {rmp: 10}}\n"
    (project / "bad.yaml").write_text(bad, encoding="utf-8")
    err = run_cmd([str(BIN / "snakemake"), "-n", "--cores", "1", "--configfile", "bad.yaml"], cwd=project)
    assert err.returncode != 0
    assert "evaluate.judge.provider" in err.stderr and "rmp" in err.stderr


def test_judge_params_hold_what_shapes_the_verdicts_and_not_how_they_are_fetched():
    """The judge rule's params (judge_view): a new judge model or pass score reruns it; a rate, budget,
    cost cap, timeout or key variable does not."""
    import copy

    from zhufu.config import judge_view, load_config

    base = load_config()
    view = judge_view(base)

    def changed(**judge):
        cfg = copy.deepcopy(base)
        cfg["evaluate"]["judge"].update(judge)
        return judge_view(cfg) != view

    assert changed(provider={"model": "deepseek-chat"})
    assert changed(provider={"kind": "openai", "base_url": "https://api.deepseek.com"})
    assert changed(pass_score=3)
    assert changed(max_tokens=300)
    assert not changed(max_cost=1.0)
    assert not changed(enabled=True)
    assert not changed(provider={"rpm": 10, "budget": 5.0, "timeout_s": 5, "api_key_env": "JUDGE_KEY"})
    assert not changed(provider={"concurrency": 2, "price": {"input_per_1m": 9, "output_per_1m": 9}})


def test_an_off_task_answer_is_judged_for_answering_the_request():
    """The off-task group's answers get the "answers the request" rubric, not the blessing one."""
    from zhufu.config import load_config
    from zhufu.model.judge import OFF_TASK_RUBRIC, RUBRIC, judge_messages

    config = load_config()
    row = {"input": "春节有哪些习俗？", "output": "祝你春节快乐！", "source": "off_task", "style": None}
    user = judge_messages(row, config)[1]["content"]
    assert OFF_TASK_RUBRIC in user and RUBRIC not in user
    assert "【请求】春节有哪些习俗？" in user and "【待评回答】祝你春节快乐！" in user
    assert "【对象】" not in user
    blessing = {"input": "祝姐姐生日快乐", "output": "生日快乐", "source": "holdout", "style": "正常"}
    assert RUBRIC in judge_messages(blessing, config)[1]["content"]
