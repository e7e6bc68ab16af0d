"""The offline teacher, as a user's tools see it: a real server on 127.0.0.1, real `openai` and `zhipuai` clients.

Prompts come from the real grid (`zhufu.grid.build_prompt` over `config.yaml`), so what is tested here is
what `zhufu generate` sends.
"""

from __future__ import annotations

import copy
import http.client
import json
import random
import re
import subprocess
import sys
import urllib.error
import urllib.request

import openai
import pytest
import yaml
import zhipuai
from helpers import ROOT
from hypothesis import given, settings
from hypothesis import strategies as st
from snakemake.utils import update_config

from zhufu.config import load_config, validate_config
from zhufu.errors import ConfigError
from zhufu.grid import Cell, build_prompt, cells, load_suitability
from zhufu.teacher.bank import load_phrases
from zhufu.teacher.compose import compose
from zhufu.teacher.prompt import Ask, parse_prompt
from zhufu.teacher.server import running_teacher, start_teacher, teacher_stats
from zhufu.text import EMOJI_RE

EMOJI = EMOJI_RE
# The default grid's generated recipient × scene pairs: 8 × 6, less 5 marked 0 in resources/suitability.csv,
# less the 9 that grid.holdout keeps out of training for the evaluation.
DEFAULT_CELLS = 34
HAN = re.compile(r"[\u4e00-\u9fff]")


@pytest.fixture(scope="module")
def server():
    srv = start_teacher()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key="offline", max_retries=0, timeout=10)


@pytest.fixture(scope="module")
def config():
    return load_config()


def v2_config() -> dict:
    """config.yaml with configs/tianji-v2-styles.yaml merged over it, as `snakemake --configfile` does."""
    base = yaml.safe_load((ROOT / "config.yaml").read_text(encoding="utf-8"))
    update_config(base, yaml.safe_load((ROOT / "configs/tianji-v2-styles.yaml").read_text(encoding="utf-8")))
    return validate_config(base, "config.yaml + configs/tianji-v2-styles.yaml")


def grid_prompts(config: dict, style: str, rounds: int | None = None):
    matrix = load_suitability(ROOT / config["grid"]["suitability"])
    for r in range(config["rounds"] if rounds is None else rounds):
        for cell in cells(config, style, r, matrix):
            yield build_prompt(config, cell)


def ask(client, messages, **kw) -> str:
    resp = client.chat.completions.create(model="zhufu-offline-teacher", messages=messages, **kw)
    return resp.choices[0].message.content


def han_share(text: str) -> float:
    letters = [ch for ch in text if ch.isalpha()]
    return sum(bool(HAN.match(ch)) for ch in letters) / max(1, len(letters))


def stats(server) -> dict:
    return teacher_stats(server.base_url)


# --- the OpenAI-shaped API ------------------------------------------------------------------------------------


def test_openai_client_gets_a_complete_honestly_labelled_answer(client, config):
    prompt = build_prompt(config, Cell("小红书", 0, "姐姐", "生日"))
    resp = client.chat.completions.create(model="deepseek-chat", messages=prompt.messages, temperature=1.0)
    assert resp.model == "deepseek-chat"  # echoes the request
    assert resp.object == "chat.completion" and resp.id and resp.created > 0
    assert resp.system_fingerprint == "zhufu-offline-teacher (phrase bank, not an LLM)"
    choice = resp.choices[0]
    assert choice.index == 0 and choice.finish_reason == "stop" and choice.message.role == "assistant"
    assert choice.message.content and han_share(choice.message.content) > 0.8
    u = resp.usage
    assert u.prompt_tokens > 0 and u.completion_tokens == len(choice.message.content)
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens


def test_zhipuai_client_reaches_the_zhipu_path(server, config):
    root = server.base_url.removesuffix("/v1")
    zp = zhipuai.ZhipuAI(api_key="zhufu.offline", base_url=f"{root}/api/paas/v4", max_retries=0)
    prompt = build_prompt(config, Cell("严肃", 0, "领导", "春节"))
    resp = zp.chat.completions.create(model="glm-4", messages=prompt.messages, temperature=0.95)
    text = resp.choices[0].message.content
    assert resp.model == "glm-4" and resp.choices[0].finish_reason == "stop"
    assert text and han_share(text) > 0.8 and not EMOJI.search(text)
    assert resp.usage.completion_tokens == len(text)


def test_models_endpoint_lists_the_teacher(client):
    assert "zhufu-offline-teacher" in [m.id for m in client.models.list()]


def test_streaming_gives_the_same_text(client, config):
    messages = build_prompt(config, Cell("正常", 1, "同事", "中秋节")).messages
    whole = ask(client, messages, temperature=1.0)
    stream = client.chat.completions.create(
        model="zhufu-offline-teacher", messages=messages, temperature=1.0, stream=True
    )
    assert "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices) == whole


def test_n_gives_different_choices(client, config):
    messages = build_prompt(config, Cell("小红书", 0, "弟弟", "康复")).messages
    resp = client.chat.completions.create(model="m", messages=messages, n=4)
    texts = [c.message.content for c in resp.choices]
    assert [c.index for c in resp.choices] == [0, 1, 2, 3]
    assert len(set(texts)) >= 3


# --- what the answers look like ------------------------------------------------------------------------------


def test_default_grid_answers_fit_their_style(client, config):
    """Every default cell, every style: Chinese, shorter than the prompt's limit, emoji only where wanted."""
    for style, spec in config["styles"].items():
        prompts = list(grid_prompts(config, style, rounds=1))
        assert len(prompts) == DEFAULT_CELLS, style
        for prompt in prompts:
            text = ask(client, prompt.messages, temperature=1.0)
            where = f"{style} {prompt.cell.recipient}×{prompt.cell.scene}: {text}"
            assert len(text) < spec["max_chars"] and len(text) >= spec["min_chars"], where
            assert han_share(text) > 0.85, where
            n_emoji = len(EMOJI.findall(text))
            if style == "小红书":
                assert 1 <= n_emoji <= 2, where
                ends_with_particle = re.search(r"[呀哦呢啦哟鸭吧嘛][^\u4e00-\u9fff]*$", text)
                assert ends_with_particle, where
            else:
                assert n_emoji == 0, where


def test_elders_get_nin_and_peers_get_ni(client, config):
    for recipient, pronoun, other in [
        ("爷爷", "您", "你"),
        ("赵老师", "您", "你"),
        ("领导", "您", "你"),
        ("妹妹", "你", "您"),
    ]:
        texts = [
            ask(client, build_prompt(config, Cell("严肃", r, recipient, "春节")).messages) for r in range(4)
        ]
        assert any(pronoun in t for t in texts), texts
        assert not any(other in t for t in texts), texts


def test_serious_answers_are_longer_than_normal_ones(client, config):
    mean = {}
    for style in ("正常", "严肃"):
        texts = [ask(client, p.messages) for p in grid_prompts(config, style, rounds=1)]
        mean[style] = sum(map(len, texts)) / len(texts)
    assert mean["严肃"] > 2 * mean["正常"], mean


def test_injected_rules_are_obeyed(client, config):
    """No 称谓/场景 and no 愿你/祝你 when the prompt's injection forbids them."""
    strict = copy.deepcopy(config)
    # Tianji's strictest injection (the default config no longer draws it: see config.yaml)
    strict["injections"] = [
        "回答里不要出现对象称谓和场景名称，也不要用“愿你”“祝你”（给自家长辈的祝福可以保留称谓和“祝你”）。"
    ]
    bank = load_phrases()
    for style in config["styles"]:
        prompts = list(grid_prompts(strict, style, rounds=1))
        assert len(prompts) == DEFAULT_CELLS, style
        for prompt in prompts:
            text = ask(client, prompt.messages)
            c = prompt.cell
            names = [c.recipient, *bank["recipients"][c.recipient]["address"]]
            words = [c.scene, *bank["scenes"][c.scene]["keywords"]]
            where = f"{style} {c.recipient}×{c.scene}: {text}"
            assert not any(n in text for n in names), where
            assert not any(w in text for w in words), where
            assert not any(w in text for w in ("愿你", "祝你", "愿您", "祝您")), where


def test_tianji_v2_styles_are_shaped_and_respect_their_bands(client):
    config = v2_config()
    assert len(config["styles"]) == 9
    bank = load_phrases()
    for style, spec in config["styles"].items():
        texts = []
        for prompt in grid_prompts(config, style, rounds=1):
            assert parse_prompt(prompt.messages[-1]["content"], bank).style == style
            text = ask(client, prompt.messages)
            texts.append(text)
            where = f"{style} {prompt.cell.recipient}×{prompt.cell.scene}: {text}"
            assert spec["min_chars"] <= len(text) < spec["max_chars"], where
            if spec["emoji"]:
                assert spec["emoji"]["min"] <= len(EMOJI.findall(text)) <= spec["emoji"]["max"], where
        assert len(texts) == DEFAULT_CELLS, style
        assert len(set(texts)) >= 0.8 * len(texts), style
    long_mean = (
        sum(len(ask(client, p.messages)) for p in grid_prompts(config, "祝福长文", rounds=1)) / DEFAULT_CELLS
    )
    assert long_mean > 90


def test_style_markers(client):
    config = v2_config()

    def one(style: str, r: int = 0) -> str:
        return ask(client, build_prompt(config, Cell(style, r, "姐姐", "中秋节")).messages)

    assert any(w in one("文言文") + one("文言文", 1) for w in ("如晤", "伏愿", "谨", "敬启"))
    poem = one("诗词赋")
    assert re.match(r"^[\u4e00-\u9fff]{7}，[\u4e00-\u9fff]{7}。", poem), poem
    assert any(
        w in one("白话") + one("白话", 1) for w in ("嘿", "就盼着", "只希望", "就想让", "说真的", "咱")
    )


def test_a_free_form_request_is_understood(client):
    text = ask(client, [{"role": "user", "content": "祝妹妹谈判顺利，小红书风格"}])
    assert EMOJI.search(text) and len(text) < 50
    assert "妹" in text or "谈判" in text or "顺利" in text


# --- reproducibility and variety -----------------------------------------------------------------------------


def test_same_request_same_answer_and_seed_or_temperature_change_it(client, config):
    messages = build_prompt(config, Cell("小红书", 0, "同事", "工作升职")).messages
    first = ask(client, messages, temperature=1.0)
    assert ask(client, messages, temperature=1.0) == first
    assert ask(client, messages, temperature=1.0, seed=7) == ask(client, messages, temperature=1.0, seed=7)
    variants = {ask(client, messages, temperature=1.0, seed=s) for s in range(6)}
    variants.add(ask(client, messages, temperature=0.7))
    assert len(variants) >= 5


def test_cells_get_varied_answers(client, config):
    """At least 80% distinct answers over the default grid's 小红书 cells (all six rounds)."""
    texts = [ask(client, p.messages, temperature=1.0) for p in grid_prompts(config, "小红书")]
    assert len(texts) == 204  # (43 suitable pairs − 9 held out for the evaluation) × 6 rounds
    assert len(set(texts)) >= 0.8 * len(texts), len(set(texts))
    # ...and the variety is in the wording, not just the names: openings differ too.
    assert len({t[:6] for t in texts}) >= 0.5 * len(texts)


# --- the counter, errors -------------------------------------------------------------------------------------


def test_counter_counts_chat_requests_only(server, client, config):
    before = stats(server)
    messages = build_prompt(config, Cell("正常", 0, "爷爷", "生日")).messages
    for _ in range(3):
        ask(client, messages)
    client.models.list()
    after = stats(server)
    assert after["requests"] - before["requests"] == 3
    assert after["completions"] - before["completions"] == 3
    assert server.request_count == after["requests"]


def raw_post(server, path: str, body: bytes) -> tuple[int, dict]:
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    status, payload = resp.status, json.loads(resp.read().decode("utf-8"))
    conn.close()
    return status, payload


def test_malformed_json_is_a_400_with_an_openai_error_body(server):
    before = stats(server)
    status, payload = raw_post(server, "/v1/chat/completions", b'{"messages": [')
    assert status == 400
    assert payload["error"]["type"] == "invalid_request_error"
    assert "not valid JSON" in payload["error"]["message"]
    after = stats(server)
    assert after["requests"] == before["requests"] + 1 and after["errors"] == before["errors"] + 1


def test_missing_messages_is_a_bad_request_for_the_sdk(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="m", messages=[])
    assert "messages" in str(e.value)


def test_unknown_path_is_a_404_with_json(server):
    status, payload = raw_post(server, "/v1/embeddings", b"{}")
    assert status == 404 and "no such endpoint" in payload["error"]["message"]
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(server.base_url.removesuffix("/v1") + "/nope", timeout=5)
    assert e.value.code == 404 and json.loads(e.value.read())["error"]["code"] == "not_found"


# --- lifecycle, CLI, phrase bank ------------------------------------------------------------------------------


def test_running_teacher_yields_a_base_url_and_stops():
    with running_teacher() as url:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v1", url)
        c = openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=5)
        assert ask(c, [{"role": "user", "content": "祝爷爷康复"}])
        assert teacher_stats(url)["requests"] == 1
    with pytest.raises(OSError):
        teacher_stats(url, timeout=2)


def test_serve_teacher_cli_says_what_it_is_and_serves():
    proc = subprocess.Popen(
        [sys.executable, "-m", "zhufu", "serve-teacher", "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        banner = "".join(proc.stdout.readline() for _ in range(3))
        assert "NOT an LLM" in banner and "phrase bank" in banner
        url = re.search(r"http://127\.0\.0\.1:\d+/v1", banner).group(0)
        c = openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=5)
        assert EMOJI.search(ask(c, [{"role": "user", "content": "祝姐姐生日快乐,小红书风格"}]))
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_serve_teacher_on_a_busy_port_is_one_line_and_exit_1(server):
    port = server.server_address[1]
    result = subprocess.run(
        [sys.executable, "-m", "zhufu", "serve-teacher", "--port", str(port)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "Traceback" not in result.stderr


def test_a_broken_phrase_bank_names_the_key(tmp_path):
    bank = yaml.safe_load((ROOT / "resources/phrases.yaml").read_text(encoding="utf-8"))
    del bank["scenes"]["春节"]["greet"]
    path = tmp_path / "phrases.yaml"
    path.write_text(yaml.safe_dump(bank, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"scenes\.春节\.greet"):
        start_teacher(phrases=path)


def test_the_bank_covers_tianji_recipients_and_scenes(config):
    bank = load_phrases()
    full = yaml.safe_load((ROOT / "configs/full-grid.yaml").read_text(encoding="utf-8"))["grid"]
    assert set(full["recipients"]) <= set(bank["recipients"])
    assert set(full["scenes"]) <= set(bank["scenes"])
    assert set(v2_config()["styles"]) <= set(bank["styles"])
    phrases = [
        p
        for scene in bank["scenes"].values()
        for key, items in scene.items()
        if key not in {"keywords", "emoji"}
        for p in items
    ]
    assert len(phrases) >= 400 and len(set(phrases)) >= 0.95 * len(phrases)
    assert not any("你们" in p for p in phrases)


def test_default_run_data_passes_the_cleaning_rules(client, config):
    """What the teacher writes for the default run is kept by `zhufu clean`: nothing is dropped or rewritten
    except duplicates: exact ones only between rounds of one cell (six draws of a short 正常 answer such as
    「老妹，一切顺利！」 can meet), near ones (one address apart) anywhere, and at most 5% in all."""
    from zhufu.data.clean import clean_records

    matrix = load_suitability(ROOT / config["grid"]["suitability"])
    records, prompt_of = [], {}
    for style in config["styles"]:
        for p in grid_prompts(config, style):
            # seed: the round, as the generate step sends it (the n-th draw of a prompt is another answer)
            out = ask(client, p.messages, temperature=config["provider"]["temperature"], seed=p.cell.round)
            prompt_of[p.id] = p.messages[-1]["content"]
            meta = {
                "recipient": p.cell.recipient,
                "scene": p.cell.scene,
                "style": style,
                "round": p.cell.round,
            }
            meta |= {"provider": "offline", "model": "zhufu-offline-teacher", "prompt": prompt_of[p.id]}
            meta["usage"] = {"prompt_tokens": 0, "completion_tokens": 0}
            conversation = [{"system": config["system_prompt"], "input": p.input, "output": out}]
            records.append({"id": p.id, "conversation": conversation, "meta": meta})
    assert len(records) == len(config["styles"]) * config["rounds"] * DEFAULT_CELLS
    kept, report = clean_records(records, config["clean"], config["styles"], config["system_prompt"], matrix)
    assert report["modified"] == []
    assert {d["rule"] for d in report["dropped"]} <= {"exact_dedup", "near_dedup"}
    cell_of = {r["id"]: (r["meta"]["recipient"], r["meta"]["scene"], r["meta"]["style"]) for r in records}
    for d in report["dropped"]:
        if d["rule"] == "exact_dedup":  # near-duplicates may cross cells: 亲爱的姐：… and 亲爱的妹：…
            assert cell_of[d["id"]] == cell_of[d["duplicate_of"]], d
    assert len(kept) >= 0.95 * len(records), len(kept)


BANK = load_phrases()


@settings(max_examples=400, deadline=None)
@given(
    recipient=st.sampled_from([*BANK["recipients"], "王阿姨", "小李", ""]),
    scene=st.sampled_from([*BANK["scenes"], "国庆节", ""]),
    style=st.sampled_from([*BANK["styles"], "未知风格"]),
    max_chars=st.integers(2, 300),
    no_address=st.booleans(),
    no_scene=st.booleans(),
    no_wish_words=st.booleans(),
    seed=st.integers(0, 2**32),
)
def test_any_ask_gets_a_fitting_answer(
    recipient, scene, style, max_chars, no_address, no_scene, no_wish_words, seed
):
    """Whatever the limit, recipient (known or not), scene and rules: non-empty, shorter than the limit,
    emoji only for 小红书 (always, once there is room) and 放飞自我, and the rules kept."""
    ask_ = Ask(recipient, scene, style, max_chars, no_address, no_scene, no_wish_words)
    text = compose(ask_, BANK, random.Random(seed))
    assert text and len(text) < max_chars
    n_emoji = len(EMOJI.findall(text))
    if style == "小红书" and max_chars >= 12:
        assert 1 <= n_emoji <= 2, text
    elif style not in {"小红书", "放飞自我"}:
        assert n_emoji == 0, text
    if no_wish_words:
        assert not any(w in text for w in ("愿你", "祝你", "愿您", "祝您")), text
    if no_address and recipient in BANK["recipients"]:
        assert not any(a in text for a in [recipient, *BANK["recipients"][recipient]["address"]]), text
    if no_scene and scene in BANK["scenes"]:
        assert not any(w in text for w in [scene, *BANK["scenes"][scene]["keywords"]]), text


def test_the_last_user_message_counts_and_content_parts_work(client):
    parts = [{"type": "text", "text": "祝爷爷重阳节快乐，"}, {"type": "text", "text": "严肃风格"}]
    history = [
        {"role": "user", "content": "祝同学生日快乐，小红书风格"},
        {"role": "assistant", "content": "生日快乐呀🎂"},
        {"role": "user", "content": parts},
    ]
    text = ask(client, history)
    assert "您" in text and not EMOJI.search(text) and "生日" not in text
