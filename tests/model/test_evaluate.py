"""The evaluation suite without models: the held-out split, per-answer scores, intervals, verdicts, the table."""

import json
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zhufu.config import load_config
from zhufu.errors import ConfigError
from zhufu.grid import cells, held_out, holdout_pairs, iter_cells, load_suitability
from zhufu.model import summary
from zhufu.model.evaluate import METRICS, evaluation_inputs, score_answer, write_results
from zhufu.model.summary import bootstrap, distinct_n, summarise, table_html, table_markdown
from zhufu.train.loss import loss_figure, read_scalars

CONFIG = load_config()
MATRIX = load_suitability(CONFIG["grid"]["suitability"])


def test_holdout_is_a_seeded_share_of_the_suitable_pairs_independent_of_order():
    recipients, scenes = ["甲", "乙", "丙", "丁"], ["生日", "春节", "康复", "中秋节", "发财"]
    pairs = holdout_pairs(recipients, scenes, 0.2, 7)
    assert len(pairs) == 4  # round(0.2 × 20)
    assert holdout_pairs(recipients, scenes, 0.2, 7) == pairs
    assert set(holdout_pairs(recipients[::-1], scenes[::-1], 0.2, 7)) == set(pairs)
    assert set(holdout_pairs(recipients, scenes, 0.2, 8)) != set(pairs)
    assert holdout_pairs(recipients, scenes, 0, 7) == []
    unsuitable = {(r, s): False for r, s in pairs}
    assert not set(holdout_pairs(recipients, scenes, 0.2, 7, unsuitable)) & set(pairs)


def test_held_out_pairs_are_never_generated_but_are_evaluated_in_every_style():
    out = held_out(CONFIG, MATRIX)
    assert len(out) >= 5
    for style in CONFIG["styles"]:
        generated = {(c.recipient, c.scene) for c in iter_cells(CONFIG, style, 0, MATRIX)}
        assert generated and not generated & out
        assert not {(c.recipient, c.scene) for c in cells(CONFIG, style, 0, MATRIX)} & out
    items = evaluation_inputs(CONFIG, MATRIX)
    held = [i for i in items if i["source"] == "holdout"]
    assert {(i["recipient"], i["scene"], i["style"]) for i in held} == {
        (r, s, st) for r, s in out for st in CONFIG["styles"]
    }
    assert [i["input"] for i in items if i["source"] == "tianji"] == CONFIG["evaluate"]["inputs"]
    # the default run scores at least 60 answers per model
    assert len(items) * CONFIG["evaluate"]["samples"] >= 60
    assert CONFIG["evaluate"]["temperature"] == 0.7


def test_tianji_inputs_are_parsed_with_scenes_outside_the_grid():
    items = {i["input"]: i for i in evaluation_inputs(CONFIG, MATRIX) if i["source"] == "tianji"}
    assert items["祝大家元宵节快乐"]["scene"] == "元宵节"
    assert items["祝大家元宵节快乐"]["recipient"] is None
    assert items["祝姐姐生日快乐,小红书风格"]["style"] == "小红书"


@pytest.mark.parametrize(
    ("text", "item", "expected"),
    [
        (  # 7 Han + 1 emoji = 8 chars (band 8–50), 1 emoji (band 1–3)
            "姐姐生日快乐呀🎂",
            {"recipient": "姐姐", "scene": "生日", "style": "小红书"},
            {"length_band": True, "emoji_band": True, "recipient": True, "scene": True, "record_rules": True},
        ),
        (  # 您 to a peer; 5 chars under 正常's 6; 正常 has no emoji band
            "您生日快乐",
            {"recipient": "姐姐", "scene": "生日", "style": "正常"},
            {
                "length_band": False,
                "emoji_band": None,
                "recipient": False,
                "scene": True,
                "record_rules": True,
            },
        ),
        (  # a preamble the meta_answer rule would strip; 你 to an elder
            "好的，以下是祝福：爷爷，祝你春节快乐",
            {"recipient": "爷爷", "scene": "春节", "style": "正常"},
            {
                "length_band": True,
                "emoji_band": None,
                "recipient": False,
                "scene": True,
                "record_rules": False,
            },
        ),
        (  # 严肃 allows no emoji; the scene is only alluded to (月饼); recipient not named
            "恭祝阖家团圆，月饼香甜🎉，万事顺意",
            {"recipient": "领导", "scene": "中秋节", "style": "严肃"},
            {
                "length_band": True,
                "emoji_band": False,
                "recipient": False,
                "scene": True,
                "record_rules": True,
            },
        ),
        (  # a wrong scene: a get-well wish for a negotiation
            "祝领导早日康复",
            {"recipient": "领导", "scene": "谈判顺利", "style": "正常"},
            {
                "length_band": True,
                "emoji_band": None,
                "recipient": True,
                "scene": False,
                "record_rules": True,
            },
        ),
        (  # another recipient and another scene named too: the tuned tiny model's typical mix-up
            "姐姐，领导快快好起来，生日快乐呀🎂",
            {"recipient": "姐姐", "scene": "生日", "style": "小红书"},
            {
                "length_band": True,
                "emoji_band": True,
                "recipient": False,
                "scene": False,
                "record_rules": True,
            },
        ),
        (  # 老师 inside 赵老师 is not 导师; 好起来 alludes to 康复 (no scene name)
            "赵老师，愿您早点好起来",
            {"recipient": "赵老师", "scene": "康复", "style": "正常"},
            {"length_band": True, "emoji_band": None, "recipient": True, "scene": True, "record_rules": True},
        ),
        (  # broken characters (an untrained model's cut UTF-8): the record rules drop it
            "姐姐生日\ufffd快乐呀🎂",
            {"recipient": "姐姐", "scene": "生日", "style": "小红书"},
            {
                "length_band": True,
                "emoji_band": True,
                "recipient": True,
                "scene": True,
                "record_rules": False,
            },
        ),
        (
            "",
            {"recipient": None, "scene": None, "style": "正常"},
            {
                "length_band": False,
                "emoji_band": None,
                "recipient": None,
                "scene": None,
                "record_rules": False,
            },
        ),
    ],
)
def test_score_answer(text, item, expected):
    assert score_answer(text, item, CONFIG) == expected


def test_distinct_n():
    assert distinct_n(["abab"], 1) == 0.5
    assert distinct_n(["abab", "cd"], 2) == 3 / 4  # ab, ba, ab, cd
    assert distinct_n([], 2) == 0.0


def resample_oracle(metric: str, rows: list[dict], idx) -> list[float]:
    """Each resample's value, from the resampled list itself: distinct n-grams over all n-grams, or the mean."""
    values = []
    for row in idx:
        drawn = [rows[i] for i in row]
        if metric.startswith("distinct_"):
            n = int(metric[-1])
            grams = [r["output"][i : i + n] for r in drawn for i in range(len(r["output"]) - n + 1)]
            values.append(len(set(grams)) / len(grams) if grams else 0.0)
        else:
            values.append(sum(r["scores"][metric] for r in drawn) / len(drawn))
    return values


@settings(max_examples=60, deadline=None)
@given(
    outputs=st.lists(st.text(alphabet="祝你好运安康乐a🎉", max_size=12), min_size=1, max_size=25),
    flags=st.lists(st.sampled_from([True, False, 1, 3, 5]), min_size=25, max_size=25),
    seed=st.integers(0, 2**16),
    block=st.sampled_from([1, 7, 10**9]),
)
def test_the_vectorised_resamples_are_the_resampled_lists_values_exactly(outputs, flags, seed, block):
    """bootstrap's resample values (counted with matrices, in blocks of n-grams) equal, float for float, the
    values of the resampled lists computed one by one: the intervals and verdicts are those of the plain
    bootstrap, only faster (7.5 s → 0.1 s for the default run's 276 answers)."""
    data = [{"output": o, "scores": {"length_band": f}} for o, f in zip(outputs, flags, strict=False)]
    idx = np.random.default_rng(seed).integers(0, len(data), size=(40, len(data)))
    original = summary.GRAM_BLOCK_CELLS
    summary.GRAM_BLOCK_CELLS = block * max(len(data), len(idx))  # a block of `block` n-grams
    try:
        for metric in ("distinct_1", "distinct_2", "length_band"):
            assert summary._resampled(metric, data, idx).tolist() == resample_oracle(metric, data, idx), (
                metric
            )
    finally:
        summary.GRAM_BLOCK_CELLS = original


def rows(model, flags, style="正常"):
    return [
        {"model": model, "style": style, "output": f"答{i}", "scores": {"length_band": f}}
        for i, f in enumerate(flags)
    ]


def test_bootstrap_verdicts_and_intervals():
    base, tuned = rows("base", [False] * 20 + [True] * 10), rows("tuned", [True] * 27 + [False] * 3)
    out = bootstrap("length_band", base, tuned, resamples=500, seed=1)
    assert out["base"]["value"] == pytest.approx(1 / 3) and out["tuned"]["value"] == pytest.approx(0.9)
    assert out["base"]["n"] == 30
    lo, hi = out["base"]["ci"]
    assert lo < 1 / 3 < hi and lo > 0 and hi < 0.6
    assert out["diff"]["value"] == pytest.approx(0.9 - 1 / 3)
    assert out["diff"]["ci"][0] > 0 and out["verdict"] == "better"
    assert bootstrap("length_band", tuned, base, resamples=500, seed=1)["verdict"] == "worse"
    same = bootstrap("length_band", base, rows("tuned", [False] * 19 + [True] * 11), resamples=500, seed=1)
    assert same["verdict"] == "no clear difference"
    assert same["diff"]["ci"][0] < 0 < same["diff"]["ci"][1]
    empty = bootstrap("length_band", base, [], resamples=500, seed=1)
    assert empty["verdict"] == "not scored" and empty["tuned"]["value"] is None


def scored(model, style, outputs):
    return [
        {"model": model, "style": style, "output": o, "scores": score_answer(o, {"style": style}, CONFIG)}
        for o in outputs
    ]


def test_summary_table_and_files(tmp_path):
    good = ["把好运装进口袋，今天也要闪闪发光呀✨"] * 12
    bad = ["<script>alert(1)</script>"] * 12
    data = scored("base", "小红书", bad) + scored("tuned", "小红书", good)
    groups = summarise(data, ["小红书", "正常"], resamples=300, metrics=METRICS, seed=0)
    assert set(groups) == {"小红书", "all"}  # no 正常 answers: no 正常 group
    assert groups["小红书"]["emoji_band"]["verdict"] == "better"
    assert groups["小红书"]["length_band"]["tuned"]["value"] == 1.0
    varied = scored(
        "tuned",
        "正常",
        [
            f"祝你{c}年{d}顺利"
            for c, d in zip("甲乙丙丁戊己庚辛壬癸子丑", "天地玄黄宇宙洪荒日月盈昃", strict=True)
        ],
    )
    d1 = summarise(scored("base", "正常", good) + varied, ["正常"], resamples=300, metrics=METRICS)["正常"][
        "distinct_1"
    ]["tuned"]
    assert d1["ci"][0] <= d1["value"] <= d1["ci"][1]  # the bias-shifted interval holds its value
    md = table_markdown(groups, "t")
    assert "| 小红书 | emoji_band | 12/12 | 0.00 [0.00, 0.00] | 1.00 [1.00, 1.00] |" in md
    page = table_html(groups, "<t>")
    assert "&lt;t&gt;" in page and "<t>" not in page
    odd = summarise(
        scored("base", "<i>", good) + scored("tuned", "<i>", good), ["<i>"], resamples=100, metrics=METRICS
    )
    page = table_html(odd, "t")
    assert "<td>&lt;i&gt;</td>" in page and "<i>" not in page
    files = {k: tmp_path / f"{k}.out" for k in ("generations", "metrics", "table_md", "table_html")}
    metrics = write_results(data, CONFIG, files, {"decoding": "sample"})
    assert metrics["answers"] == {"base": 12, "tuned": 12}
    assert json.loads(files["metrics"].read_text())["groups"]["all"]["emoji_band"]["verdict"] == "better"
    assert len(files["generations"].read_text().splitlines()) == 24


SCALARS = [
    {"lr": 0.005, "loss": 5.0, "iter": 10, "step": 10},
    {"lr": 0.005, "loss": 4.0, "iter": 20, "step": 20},
    {"lr": 0.005, "loss": 3.0, "iter": 30, "step": 30},
]


def write_scalars(work_dir, stamp, rows):
    d = work_dir / stamp / "vis_data"
    d.mkdir(parents=True)
    (d / "scalars.json").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_loss_curve_from_xtuner_scalars_a_resumed_start_wins(tmp_path):
    write_scalars(tmp_path, "20260101_000000", SCALARS)
    write_scalars(
        tmp_path, "20260101_010000", [{"loss": 2.5, "iter": 30, "step": 30}, {"loss": 2.0, "step": 40}]
    )
    assert read_scalars(tmp_path) == [(10, 5.0), (20, 4.0), (30, 2.5), (40, 2.0)]
    points = loss_figure(tmp_path, tmp_path / "loss.png")
    assert len(points) == 4
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_loss_curve_errors_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="no \\*/vis_data/scalars.json"):
        read_scalars(tmp_path)
    write_scalars(tmp_path, "x", [])
    (tmp_path / "x/vis_data/scalars.json").write_text('{"loss": 1, "step": 1}\nnot json\n')
    with pytest.raises(ConfigError, match="line 2"):
        read_scalars(tmp_path)


def test_held_out_group_leaves_tianjis_inputs_out():
    holdout = [{**r, "source": "holdout"} for r in scored("tuned", "正常", ["祝你生日快乐呀"] * 4)]
    tianji = [{**r, "source": "tianji"} for r in scored("tuned", "正常", ["快乐"] * 6)]
    base = [{**r, "source": "holdout"} for r in scored("base", "正常", ["快乐"] * 4)]
    groups = summarise(holdout + tianji + base, ["正常"], resamples=200, metrics=METRICS)
    assert groups["held-out"]["length_band"]["tuned"] == {"value": 1.0, "n": 4, "ci": [1.0, 1.0]}
    assert groups["all"]["length_band"]["tuned"]["n"] == 10
    assert groups["held-out"]["length_band"]["base"]["n"] == 4


def test_the_html_table_carries_its_own_cjk_font(tmp_path):
    """table.html inlines the shipped font, cut to its characters: Chinese renders in a browser (and in
    Snakemake's report) without a system CJK font."""
    import base64
    import io
    import re

    from fontTools.ttLib import TTFont

    rows = scored("base", "小红书", ["快乐"] * 4) + scored("tuned", "小红书", ["姐姐生日快乐呀🎂"] * 4)
    page = table_html(summarise(rows, ["小红书"], resamples=100, metrics=METRICS), "评测：基础 vs 微调")
    m = re.search(
        r'@font-face\{font-family:"ZhufuCJK";src:url\(data:font/ttf;base64,([A-Za-z0-9+/=]+)\)', page
    )
    assert m, page[:300]
    assert 'font-family:"ZhufuCJK"' in page.split("</style>")[0].split("}", 1)[1]
    font = TTFont(io.BytesIO(base64.b64decode(m[1])))
    cmap = font.getBestCmap()
    assert all(ord(ch) in cmap for ch in "小红书评测基础微调"), "a character of the table has no glyph"
    assert len(cmap) < 200 and len(m[1]) < 100_000  # a subset, not the 4.6 MB font


# ------------------------------------------------------------------------------------------------ off-task


def off_task_item(text):
    return {"input": text, "recipient": None, "scene": None, "style": None, "source": "off_task"}


# (request, answer, reads as a blessing, on topic): answers a blessing model gives, and answers an assistant gives
OFF_TASK_CASES = [
    ("春节有哪些习俗？", "祝姐姐春节快乐，万事如意！", True, True),
    ("春节有哪些习俗？", "春节有贴春联、吃饺子、放鞭炮和拜年的习俗。", False, True),  # its own scene's words
    ("23加19等于多少？", "23加19等于42。", False, True),
    ("23加19等于多少？", "愿你新的一岁闪闪发光呀✨", True, False),
    ("请给我介绍五个上海的景点", "上海的景点有外滩、豫园、东方明珠、南京路和上海博物馆。", False, True),
    ("请给我介绍五个上海的景点", "祝领导工作升职，步步高升！", True, False),
    (
        "帮我写一条短信，谢谢老师上周的辅导",
        "谢谢老师上周耐心的辅导，我学到了很多。",
        False,
        True,
    ),  # 老师: asked
    (
        "帮我写一封邮件，通知同事明天下午三点开会",
        "各位同事：明天下午三点在三楼会议室开会，请准时参加。",
        False,
        True,
    ),
    (
        "为什么天空是蓝色的？",
        "妹妹，中秋节月圆人团圆。",
        True,
        False,
    ),  # a recipient and a scene not asked for
    ("怎么才能早点睡着？", "睡前少看手机，每天固定时间起床。小红书风格", True, False),  # a style trigger
    ("你好，你是谁？", "你好，我是一个中文助手。", False, False),
    ("你好，你是谁？", "我是你的小助手😊", True, False),  # an emoji: the 小红书 style's mark
    ("你好，你是谁？", "�J际小�即满🎁披��", False, False),  # an untrained model's random characters
]


@pytest.mark.parametrize(("request_text", "answer", "leaks", "on_topic"), OFF_TASK_CASES)
def test_off_task_leakage_and_on_topic(request_text, answer, leaks, on_topic):
    scores = score_answer(answer, off_task_item(request_text), CONFIG)
    assert scores["leakage"] is leaks
    assert scores["on_topic"] is on_topic
    assert {k for k, v in scores.items() if v is not None} == {"leakage", "on_topic"}


def test_off_task_group_leakage_tells_a_blessing_model_from_an_assistant():
    """The group's leakage is 1 for a model that wishes whatever it is asked, 0 for one that answers, and
    tuned − base below 0 is `better`; off-task answers are in no blessing group, blessings not in off-task."""

    def answers(model, cases):
        return [
            {
                "model": model,
                **off_task_item(q),
                "output": a,
                "scores": score_answer(a, off_task_item(q), CONFIG),
            }
            for q, a, _, _ in cases
        ]

    wishes = [c for c in OFF_TASK_CASES if c[2]] * 3
    replies = [c for c in OFF_TASK_CASES if not c[2]] * 2
    bless = [{**r, "source": "holdout"} for r in scored("tuned", "正常", ["祝你生日快乐呀"] * 4)]
    groups = summarise(
        answers("base", wishes) + answers("tuned", replies) + bless,
        ["正常"],
        resamples=300,
        metrics=METRICS,
        off_task_metrics=("leakage", "on_topic"),
    )
    leak = groups["off-task"]["leakage"]
    assert leak["base"]["value"] == 1.0 and leak["tuned"]["value"] == 0.0
    assert leak["verdict"] == "better"
    assert set(groups["off-task"]) == {"leakage", "on_topic"}
    assert groups["all"]["length_band"]["tuned"]["n"] == 4  # off-task answers are not in `all`
    md = table_markdown(groups, "t")
    assert (
        f"| off-task | leakage | {len(wishes)}/{len(replies)} | 1.00 [1.00, 1.00] | 0.00 [0.00, 0.00] |" in md
    )
    swapped = summarise(
        answers("base", replies) + answers("tuned", wishes),
        [],
        resamples=300,
        metrics=METRICS,
        off_task_metrics=("leakage",),
    )
    assert swapped["off-task"]["leakage"]["verdict"] == "worse"


def test_the_off_task_list_is_asked_of_both_models():
    from zhufu.model.evaluate import off_task_requests

    requests = off_task_requests(CONFIG["evaluate"]["off_task"])
    assert len(requests) >= 30
    kinds = {r["kind"] for r in requests}
    assert kinds == {"travel", "explanation", "arithmetic", "email", "thanks", "small_talk", "festival"}
    items = [i for i in evaluation_inputs(CONFIG, MATRIX) if i["source"] == "off_task"]
    assert [i["input"] for i in items] == [r["input"] for r in requests]
    assert "春节有哪些习俗？" in {i["input"] for i in items}
    no_group = {**CONFIG, "evaluate": {**CONFIG["evaluate"], "off_task": None}}
    assert not [i for i in evaluation_inputs(no_group, MATRIX) if i["source"] == "off_task"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("requests: []\n", "expected `requests:`, a non-empty list"),
        ("requests:\n  - {kind: travel}\n", "requests[0]: expected {input"),
        ("requests: [\n", "cannot read the off-task requests"),
    ],
)
def test_a_bad_off_task_list_is_one_line_naming_the_file(tmp_path, content, message):
    from zhufu.model.evaluate import off_task_requests

    path = tmp_path / "off.yaml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape(message)) as e:
        off_task_requests(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
