"""One test (or a few) per cleaning rule, with hypothesis where the shape of the text varies."""

import copy

import pytest
from helpers import ROOT
from hypothesis import given, settings
from hypothesis import strategies as st

from zhufu.config import load_config
from zhufu.data.dedup import exact_duplicates, near_duplicates, normalise, shingles
from zhufu.data.prefilter import PATTERN_KEYS, required_chars
from zhufu.data.rules import RuleContext, repetition_ratio
from zhufu.data.verdicts import record_verdict
from zhufu.text import chinese_ratio, count_chars, count_emoji

CONFIG = load_config()
RULES = CONFIG["clean"]
STYLES = CONFIG["styles"]
HAN = st.characters(min_codepoint=0x4E00, max_codepoint=0x9FA5)
BLESSING_WORDS = [
    "生日快乐",
    "身体健康",
    "万事如意",
    "心想事成",
    "步步高升",
    "阖家幸福",
    "前程似锦",
    "平安喜乐",
]


def run(text, recipient="姐姐", scene="生日", style="正常", rules=None, matrix=None):
    ctx = RuleContext(styles=STYLES, matrix=matrix)
    meta = {"recipient": recipient, "scene": scene, "style": style}
    return record_verdict(text, meta, rules or RULES, ctx)


def only(rule_name, **overrides):
    """The rules config with every rule but one disabled."""
    rules = copy.deepcopy(RULES)
    for name, cfg in rules.items():
        if isinstance(cfg, dict) and "enabled" in cfg:
            cfg["enabled"] = name == rule_name
    rules[rule_name].update(overrides)
    return rules


# ---- suitability


def test_suitability_drops_pairs_marked_zero_and_keeps_the_rest():
    matrix = {("爷爷", "谈判顺利"): False, ("爷爷", "春节"): True}
    assert run("祝爷爷谈判顺利，一切顺心！", "爷爷", "谈判顺利", matrix=matrix).dropped[0] == "suitability"
    assert run("祝爷爷春节快乐，福寿安康！", "爷爷", "春节", matrix=matrix).dropped is None
    # a pair the matrix does not mention counts as suitable (zhufu.grid.is_suitable)
    assert run("祝爷爷康复，早日出院！", "爷爷", "康复", matrix=matrix).dropped is None


# ---- refusal


@pytest.mark.parametrize(
    "text",
    [
        "作为AI，我无法感受节日，但祝你快乐",
        "抱歉，我无法完成这个请求。",
        "对不起，我不能写这样的内容",
        "我是一个人工智能助手",
        "I'm sorry, I cannot do that",
        "你好，这个问题我暂时无法回答，让我们换个话题再聊聊吧。",  # DeepSeek
        "作为一个人工智能语言模型，我还没学习如何回答这个问题，你可以向我问一些其它的问题。",  # GLM
        "我还没学会回答这个问题",
        "抱歉，我还未学习到如何回答这个问题的内容，暂时无法提供相关信息。",  # Qwen
        "这个问题我无法回答。",
    ],
)
def test_refusals_and_ai_self_talk_are_dropped(text):
    assert run(text, rules=only("refusal")).dropped[0] == "refusal"


def test_a_blessing_that_mentions_sorry_is_not_a_refusal():
    assert run("抱歉来晚了，祝姐姐生日快乐！", rules=only("refusal")).dropped is None


# ---- meta answers


@pytest.mark.parametrize(
    ("text", "after"),
    [
        ("好的，以下是为姐姐写的祝福：祝姐姐生日快乐！", "祝姐姐生日快乐！"),
        ("当前祝福语如下：祝姐姐生日快乐！", "祝姐姐生日快乐！"),
        ("祝福语：祝姐姐生日快乐！", "祝姐姐生日快乐！"),
        ("好的！\n以下是小红书风格的祝福语：\n祝姐姐生日快乐！", "祝姐姐生日快乐！"),
    ],
)
def test_preambles_are_stripped_when_a_blessing_follows(text, after):
    v = run(text, rules=only("meta_answer"))
    assert v.dropped is None and v.text == after and v.changes[0][0] == "meta_answer"


@pytest.mark.parametrize(
    "text", ["好的，以下是为您准备的祝福语：", "以下是几条祝福语。", "好的，这是你要的祝福！"]
)
def test_a_preamble_with_nothing_after_it_is_dropped(text):
    assert run(text, rules=only("meta_answer")).dropped[0] == "meta_answer"


def test_a_blessing_is_not_mistaken_for_a_preamble():
    v = run("好运连连，祝姐姐生日快乐！", rules=only("meta_answer"))
    assert v.dropped is None and v.changes == []


@given(st.text(HAN, min_size=4, max_size=30))
def test_any_preamble_plus_blessing_leaves_exactly_the_blessing(blessing):
    for pre in ("好的，以下是祝福语：", "当前祝福语如下：", "祝福语："):
        v = run(pre + blessing, rules=only("meta_answer"))
        assert v.dropped is None and v.text == blessing


@pytest.mark.parametrize(
    "text",
    [
        "当前祝福语如下",  # the seed's own example of a bad answer: no colon, nothing after it
        "当前祝福语如下。",
        "以下是为您准备的祝福",
        "以下是为您准备的祝福：",
        "好的，这是一条祝福",
        "好的，这是一条祝福。",
        "这是为您写的小红书风格祝福！",
        "下面是几条祝福语",
    ],
)
def test_talk_about_the_answer_alone_is_dropped_with_or_without_a_colon(text):
    assert run(text, rules=only("meta_answer")).dropped[0] == "meta_answer"


@pytest.mark.parametrize(
    "pre",
    [
        "当前祝福语如下\n",
        "当前祝福语如下：",
        "以下是为您准备的祝福\n",
        "以下是为您准备的祝福。",
        "好的，这是一条祝福。",
        "好的，这是一条祝福\n\n",
        "为你写了一条生日祝福！",
    ],
)
def test_talk_about_the_answer_is_stripped_before_a_blessing(pre):
    v = run(pre + "祝姐姐生日快乐，天天开心！", rules=only("meta_answer"))
    assert v.dropped is None and v.text == "祝姐姐生日快乐，天天开心！"


@pytest.mark.parametrize(
    "text", ["这是我对你最真诚的祝福，愿你生日快乐！", "这是一份来自远方的祝福，祝你生日快乐！"]
)
def test_a_blessing_that_speaks_of_itself_is_kept(text):
    v = run(text, rules=only("meta_answer"))
    assert v.dropped is None and v.text == text


# ---- trailing remarks and the first-line cut


@pytest.mark.parametrize(
    "remark",
    [
        "\n\n（注：此祝福语适合发给姐姐）",  # the example
        "希望她会喜欢！",
        "（可根据实际情况调整）",
        "\n注：可以根据姐姐的喜好调整。",
        "希望这条祝福对你有帮助。",
        "你可以根据姐姐的喜好修改。",
        "如果需要其他风格，随时告诉我！",
        "希望她会喜欢！（可根据实际情况调整）",
    ],
)
def test_trailing_remarks_and_notes_are_stripped(remark):
    v = run("祝姐姐生日快乐，天天开心！" + remark, rules=only("trailing_remark"))
    assert v.dropped is None and v.text == "祝姐姐生日快乐，天天开心！"
    assert [c[0] for c in v.changes] == ["trailing_remark"]


@pytest.mark.parametrize(
    "text",
    [
        "祝姐姐生日快乐，希望你喜欢我送的礼物！",
        "生日快乐（比心）！",
        "祝爷爷早日康复，希望您身体越来越好！",
        "祝同事工作升职，如有需要随时找我帮忙！哈哈",
    ],
)
def test_blessings_that_end_like_remarks_are_kept(text):
    assert run(text, rules=only("trailing_remark")).changes == []


def test_an_answer_that_is_only_a_note_is_dropped():
    assert run("（注：此祝福语适合发给姐姐）", rules=only("trailing_remark")).dropped[0] == "trailing_remark"


def test_the_first_line_cut_is_off_by_default_and_keeps_the_first_line_when_on():
    text = "生日快乐！\n\n愿你天天开心。"
    assert RULES["first_line"]["enabled"] is False
    assert run(text).changes == []
    v = run(text, rules=only("first_line"))
    assert v.text == "生日快乐！" and [c[0] for c in v.changes] == ["first_line"]
    rules = copy.deepcopy(RULES)
    rules["first_line"]["enabled"] = True
    # the preamble goes first, then the cut: the seed's own case (「好的！\n以下是…：\n祝福」)
    v = run(
        "好的！\n以下是小红书风格的祝福语：\n祝姐姐生日快乐，天天开心！\n（可根据实际情况调整）", rules=rules
    )
    assert v.text == "祝姐姐生日快乐，天天开心！"


# ---- quotes, leading punctuation


@pytest.mark.parametrize("q", ["“{}”", "「{}」", '"{}"', "『{}』", "“{}”。"])
def test_wrapping_quotes_are_stripped(q):
    v = run(q.format("祝姐姐生日快乐！"), rules=only("wrapping_quotes"))
    assert v.text == "祝姐姐生日快乐！"


def test_quotes_inside_the_text_stay():
    text = "“生日快乐”和“天天开心”都送给姐姐！"
    assert run(text, rules=only("wrapping_quotes")).text == text


@pytest.mark.parametrize("prefix", ["！啦～", "。哦！", "，", "～～", "？！", "！ "])
def test_stray_leading_punctuation_and_particles_are_stripped(prefix):
    v = run(prefix + "祝姐姐生日快乐！", rules=only("leading_punctuation"))
    assert v.text == "祝姐姐生日快乐！" and v.changes[0][0] == "leading_punctuation"


@pytest.mark.parametrize(
    "text", ["哈哈，姐姐生日快乐！", "啦啦啦，生日快乐！", "🎂生日快乐呀！", "《生日歌》送给姐姐！"]
)
def test_legitimate_openings_are_kept(text):
    assert run(text, rules=only("leading_punctuation")).text == text


@given(
    st.text(st.sampled_from("!！。，,、；;：:？?…~～"), min_size=1, max_size=6),
    st.text(HAN, min_size=1, max_size=20),
)
def test_leading_punctuation_never_eats_han(prefix, body):
    assert run(prefix + body, rules=only("leading_punctuation")).text == body


# ---- lists and alternatives


@pytest.mark.parametrize(
    "text",
    [
        "1. 生日快乐！\n2. 天天开心！",
        "1、生日快乐；2、天天开心",
        "①生日快乐 ②天天开心",
        "一、生日快乐。二、天天开心。",
        "- 生日快乐\n- 天天开心",
        "版本一：生日快乐。版本二：天天开心。",
        "祝福语1：生日快乐！祝福语2：天天开心！",
        "生日快乐！或者：天天开心！",
    ],
)
def test_lists_and_alternatives_are_dropped(text):
    assert run(text, rules=only("list_items")).dropped[0] == "list_items"


def test_one_numbered_phrase_is_not_a_list():
    assert run("祝姐姐生日快乐，2025年一切顺利！", rules=only("list_items")).dropped is None


# ---- Chinese ratio


def test_chinese_ratio_counts_letters_not_digits_punctuation_or_emoji():
    assert chinese_ratio("2025年生日快乐！🎂") == 1.0
    assert chinese_ratio("Happy birthday") == 0.0
    assert chinese_ratio("") == 0.0


@given(
    st.text(HAN, min_size=1, max_size=30),
    st.text(st.characters(min_codepoint=97, max_codepoint=122), max_size=60),
)
def test_chinese_ratio_decides_by_the_configured_threshold(han, latin):
    v = run(han + latin, rules=only("chinese_ratio"))
    words = -(-len(latin) // RULES["chinese_ratio"]["latin_word_chars"])  # one per 8 letters, rounded up
    expected_drop = len(han) / (len(han) + words) < RULES["chinese_ratio"]["min_ratio"]
    assert (v.dropped is not None) == expected_drop


def test_a_latin_word_weighs_one_han_character():
    assert chinese_ratio("姐姐生日快乐呀🎂Happy Birthday！") == 7 / 9
    assert chinese_ratio("恭喜Congratulations") == 2 / 4  # 15 letters: two words' weight
    assert chinese_ratio("おめでとう生日") == 2 / 7  # kana count one each


@pytest.mark.parametrize(
    ("text", "style", "kept"),
    [
        ("姐姐生日快乐呀🎂Happy Birthday！", "小红书", True),
        ("姐姐今天也是yyds，生日快乐呀🎉", "小红书", True),
        ("生日快乐，buff叠满呀✨", "小红书", True),
        ("OK，姐姐生日快乐，天天开心呀🎉", "小红书", True),
        ("Happy birthday to my dear sister!", "正常", False),
        ("生日kuai乐ya jie jie hao", "正常", False),
        ("祝你qwertyuiopasdfghjklzxcvbnm快乐", "正常", False),
        ("sdfkj 生日 asdkjh qwe", "正常", False),
    ],
)
def test_english_set_phrases_pass_and_english_or_garbled_answers_drop(text, style, kept):
    assert (run(text, style=style, rules=only("chinese_ratio")).dropped is None) == kept


# ---- broken text


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("姐姐生日快乐呀🎂", True),
        ("姐姐生日快乐，\n天天开心！", True),  # a newline is text
        ("姐姐生日快\ufffd乐呀", False),  # cut inside a multi-byte character, decoded with errors="replace"
        ("\ufffd\ufffd生日快乐", False),
        ("生日快乐\x00", False),
        ("生日\x1b[0m快乐", False),  # a terminal escape
        ("生日快乐\x85", False),  # a C1 control character (latin-1 mojibake leaves them)
    ],
)
def test_broken_text_drops_replacement_and_control_characters(text, kept):
    v = run(text, rules=only("broken_text"))
    assert (v.dropped is None) == kept
    if not kept:
        assert v.dropped[0] == "broken_text"
        assert "broken character" in v.dropped[1]


def test_broken_text_decoded_from_cut_utf8_is_dropped_by_the_default_rules():
    cut = "祝姐姐生日快乐".encode()[:-1].decode("utf-8", errors="replace")  # what a tokenizer cut leaves
    assert run(cut).dropped[0] == "broken_text"


# ---- character repetition


def test_repetition_ratio_catches_what_data_juicers_top_k_misses():
    assert repetition_ratio("快乐快乐快乐快乐快乐快乐", 3) == 1.0
    assert repetition_ratio("祝姐姐生日快乐，天天开心，越来越漂亮！", 3) == 0.0
    assert run("快乐快乐快乐快乐快乐快乐", rules=only("char_repetition")).dropped[0] == "char_repetition"
    assert run("新年快乐，万事如意，新年快乐！", rules=only("char_repetition")).dropped is None


@given(st.text(HAN, min_size=3, max_size=8), st.integers(min_value=3, max_value=8))
def test_a_phrase_repeated_many_times_is_dropped(phrase, times):
    if len(set(phrase)) < 3:
        return
    assert run(phrase * times, rules=only("char_repetition")).dropped is not None


# ---- honorifics: the whole recipient name decides (Tianji's 邻居 ⊂ 邻居赵大妈 bug)


def test_neighbour_zhao_dama_is_an_elder_even_though_neighbour_is_a_peer():
    rules = only("honorific")
    assert "邻居" in rules["honorific"]["peers"] and "邻居赵大妈" in rules["honorific"]["elders"]
    assert (
        run("祝您春节快乐，身体健康！", "邻居赵大妈", "春节", rules=rules).text == "祝您春节快乐，身体健康！"
    )
    assert (
        run("祝你春节快乐，身体健康！", "邻居赵大妈", "春节", rules=rules).text == "祝您春节快乐，身体健康！"
    )
    assert run("祝您春节快乐，常来常往！", "邻居", "春节", rules=rules).text == "祝你春节快乐，常来常往！"


def test_elders_keep_plural_and_words_containing_ni():
    v = run("祝你和奶奶新年快乐，你们都要健康，迷你蛋糕也给你！", "爷爷", "春节", rules=only("honorific"))
    assert v.text == "祝您和奶奶新年快乐，你们都要健康，迷你蛋糕也给您！"


def test_recipients_in_neither_list_and_unknown_recipients_are_untouched():
    rules = only("honorific")
    assert run("祝你快乐，您辛苦了！", "大家", "春节", rules=rules).changes == []
    assert run("祝你快乐，您辛苦了！", None, "春节", rules=rules).changes == []


@given(st.text(st.sampled_from(list("你您们祝快乐健康，！")), max_size=30))
def test_honorific_only_swaps_ni_and_nin_and_keeps_length(text):
    for recipient in ("邻居赵大妈", "邻居"):
        out = run(text, recipient, rules=only("honorific")).text
        assert len(out) == len(text)
        assert all(a == b or {a, b} == {"你", "您"} for a, b in zip(text, out, strict=True))
        if recipient == "邻居":
            assert "您" not in out


# ---- length bands and emoji


def test_length_bands_count_characters_not_bytes():
    assert count_chars("祝姐姐生日快乐") == 7  # 21 bytes in UTF-8
    assert count_chars("生日快乐🎂✨ ") == 6
    lo, hi = STYLES["正常"]["min_chars"], STYLES["正常"]["max_chars"]
    assert run("乐" * (lo - 1), rules=only("length")).dropped[0] == "length"
    assert run("乐" * lo, rules=only("length")).dropped is None
    assert run("乐" * hi, rules=only("length")).dropped is None
    assert run("乐" * (hi + 1), rules=only("length")).dropped[0] == "length"


@given(st.integers(min_value=0, max_value=120), st.sampled_from(["正常", "小红书", "严肃"]))
def test_length_band_verdict_matches_the_style_band(n, style):
    band = STYLES[style]
    v = run("福" * n, style=style, rules=only("length"))
    assert (v.dropped is None) == (band["min_chars"] <= n <= band["max_chars"])


def test_emoji_counting_treats_joined_sequences_as_one():
    assert count_emoji("🎂✨") == 2
    assert count_emoji("👨‍👩‍👦") == 1
    assert count_emoji("❤️") == 1
    assert count_emoji("生日快乐") == 0


@given(st.integers(min_value=0, max_value=6))
def test_xiaohongshu_needs_its_emoji_band_and_serious_allows_none(k):
    text = "祝姐姐生日快乐，天天开心呀" + "🎉" * k
    band = STYLES["小红书"]["emoji"]
    v = run(text, style="小红书", rules=only("emoji"))
    assert (v.dropped is None) == (band["min"] <= k <= band["max"])
    v = run(text, style="严肃", rules=only("emoji"))
    assert (v.dropped is None) == (k == 0)
    assert run(text, style="正常", rules=only("emoji")).dropped is None  # 正常 has no emoji band


# ---- dedup


def test_exact_dedup_normalises_punctuation_space_width_and_emoji():
    keys = [
        normalise(t)
        for t in ["祝姐姐生日快乐！", "祝姐姐 生日快乐。🎂", "ＡＢ祝你好", "ab祝你好", "不同的话"]
    ]
    assert exact_duplicates(keys) == {1: 0, 3: 2}


def test_near_dedup_keeps_the_first_and_confirms_with_exact_jaccard():
    texts = [
        "中秋快乐愿你和家人团团圆圆月圆人更圆",
        "中秋快乐愿你和家人团团圆圆月圆人更圆呀",
        "春节快乐愿你新的一年身体健康万事如意",
        "完全不同的一句话送给亲爱的同事朋友们",
    ]
    found = near_duplicates(texts, ngram=3, threshold=0.8, num_perm=64)
    assert list(found) == [1] and found[1][0] == 0 and found[1][1] >= 0.8


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.lists(st.sampled_from(BLESSING_WORDS), min_size=2, max_size=5).map("".join),
        min_size=1,
        max_size=25,
    )
)
def test_near_dedup_never_drops_a_text_without_a_kept_near_twin(texts):
    found = near_duplicates(texts, ngram=3, threshold=0.8, num_perm=64)
    for i, (j, jac) in found.items():
        assert j < i and j not in found and jac >= 0.8
        a = {texts[i][k : k + 3] for k in range(len(texts[i]) - 2)}
        b = {texts[j][k : k + 3] for k in range(len(texts[j]) - 2)}
        assert len(a & b) / len(a | b) == pytest.approx(jac)
    # identical texts are always caught
    assert set(exact_duplicates(texts)) <= set(found)


# ---- the rule chain


def test_repairs_uncover_each_other_and_are_reported_in_order():
    v = run("好的，以下是祝福语：“！啦～祝姐姐生日快乐，天天开心！”")
    assert v.text == "祝姐姐生日快乐，天天开心！"
    assert [c[0] for c in v.changes] == ["meta_answer", "wrapping_quotes", "leading_punctuation"]


def test_disabled_rules_do_nothing():
    rules = copy.deepcopy(RULES)
    for cfg in rules.values():
        if isinstance(cfg, dict) and "enabled" in cfg:
            cfg["enabled"] = False
    v = run("作为AI，我无法……", rules=rules)
    assert v.dropped is None and v.changes == []


@given(
    st.text(st.sampled_from(list("祝你快乐生日福安康年 ")), max_size=40),
    st.integers(1, 5),
    st.floats(0.05, 0.95),
)
def test_the_repetition_fast_path_agrees_with_the_full_ratio(text, n, max_ratio):
    from zhufu.data.rules import Drop, rule_char_repetition

    verdict = rule_char_repetition(text, {}, {"ngram": n, "max_ratio": max_ratio}, RuleContext(styles={}))
    assert isinstance(verdict, Drop) == (repetition_ratio(text, n) > max_ratio)


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.text(HAN, min_size=1, max_size=25), min_size=1, max_size=12),
    st.sampled_from([16, 64]),
    st.integers(0, 5),
)
def test_bulk_signatures_equal_datasketch_minhash(texts, num_perm, seed):
    import xxhash
    from datasketch import MinHash

    from zhufu.data.dedup import minhash_signatures, shingles

    sets = [shingles(t, 3) for t in texts]
    bulk = minhash_signatures(sets, num_perm, seed, chunk_rows=5)
    for row, grams in zip(bulk, sets, strict=True):
        m = MinHash(num_perm=num_perm, seed=seed, hashfunc=xxhash.xxh32_intdigest)
        m.update_batch(list(grams))
        assert (row == m.hashvalues).all()


def test_rules_across_processes_give_the_same_verdicts_as_one_process():
    import json

    from zhufu.data.verdicts import record_verdicts

    records = json.loads((ROOT / "tests" / "fixtures" / "dirty.json").read_text())
    items = [(r["conversation"][0]["output"], r["meta"]) for r in records] * 50
    one = record_verdicts(items, RULES, STYLES, {("爷爷", "谈判顺利"): False}, workers=1)
    two = record_verdicts(items, RULES, STYLES, {("爷爷", "谈判顺利"): False}, workers=2)
    assert one == two
    assert sum(1 for v in one if v.dropped) > 0 and sum(1 for v in one if v.changes) > 0


def test_near_dedup_finds_pairs_just_above_the_threshold():
    """The issue's example: 45-character blessings that differ in one character and the final mark
    (3-gram Jaccard 40/46 = 0.87). datasketch's default bands found such a pair about 68% of the time."""
    import random

    rng = random.Random(3)
    texts = []
    for _ in range(300):
        base = [chr(0x4E00 + rng.randrange(3000)) for _ in range(45)]
        copy = list(base)
        copy[20] = "的" if copy[20] != "的" else "了"
        texts += ["".join(base) + "！", "".join(copy) + "。"]
    keys = [normalise(t) for t in texts]
    a, b = shingles(keys[0], 3), shingles(keys[1], 3)
    assert len(a & b) / len(a | b) == pytest.approx(40 / 46)
    found = near_duplicates(keys, ngram=3, threshold=0.8, num_perm=64)
    assert sum(1 for i in range(1, 600, 2) if found.get(i, (None,))[0] == i - 1) >= 297
    assert not any(i % 2 == 0 for i in found)


@pytest.mark.parametrize(("threshold", "num_perm"), [(0.8, 64), (0.7, 64), (0.9, 128), (0.5, 32)])
def test_lsh_bands_reach_the_recall_at_the_margin_within_the_permutations(threshold, num_perm):
    from zhufu.data.dedup import lsh_bands

    bands, rows = lsh_bands(threshold, num_perm)
    assert bands * rows <= num_perm
    assert 1 - (1 - (threshold + 0.03) ** rows) ** bands >= 0.99


# ---- the shortcut that skips pattern rules: it must never skip a text a pattern matches

PATTERNS = [(name, p) for name, keys in PATTERN_KEYS.items() for k in keys for p in RULES[name][k]]


@settings(max_examples=40, deadline=None)
@given(st.data())
@pytest.mark.parametrize(("rule", "pattern"), PATTERNS)
def test_every_text_a_pattern_matches_contains_one_of_its_rules_required_chars(rule, pattern, data):
    import re

    needs = required_chars([p for k in PATTERN_KEYS[rule] for p in RULES[rule][k]])
    assert needs  # the default patterns all give the shortcut
    text = data.draw(st.from_regex(re.compile(pattern)))
    assert re.search(pattern, text)
    assert not needs.isdisjoint(text), (pattern, text)


def test_required_chars_of_alternatives_cover_every_branch():
    needs = required_chars(["(?:好的|收到|当然)[，！]"])
    assert needs == {"，", "！"}  # the rarer class of the sequence
    needs = required_chars(["(?:好的|收到|当然)"])
    assert all(not needs.isdisjoint(alt) for alt in ("好的", "收到", "当然"))
    assert required_chars(["祝?福"]) == {"福"}  # an optional character is not required
    assert required_chars([r"\d+"]) is None  # nothing to require: the rule always runs
    assert required_chars(["(?i:ok)"]) is None  # case folding: not a plain set of characters


def test_a_rule_set_with_other_patterns_gets_its_own_patterns():
    from zhufu.data.verdicts import record_verdicts

    rules = copy.deepcopy(RULES)
    rules["rule_sets"] = {"strict": {"refusal": {"patterns": ["天天"]}}}
    text = "我祝姐姐生日快乐，天天开心！"  # 我: the default refusal patterns are searched, not skipped
    items = [(text, {"style": "正常", "rule_set": "strict"}), (text, {"style": "正常"})]
    strict, plain = record_verdicts(items, rules, STYLES, None, workers=1)
    assert plain.dropped is None and strict.dropped[0] == "refusal"
