"""`zhufu serve-model`: a tiny Qwen2 behind the OpenAI-compatible API, driven by the real `openai` SDK
(stream and not, usage, n, stop, seed, requests batched together), and misused over raw sockets (wrong Host,
cross-origin, oversized body, bad JSON, no token), each refusal with its status and OpenAI's error shape."""

from __future__ import annotations

import json
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from helpers import ROOT, TIANJI_SYSTEM, greedy_answer, http_exchange, run_cmd, tiny_teacher

from zhufu.errors import ModelError
from zhufu.model.api import ModelAPIServer
from zhufu.model.chat import load_chat_model

ASK = "祝姐姐生日快乐，小红书风格"
TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_teacher(tmp_path_factory.mktemp("serve_model"))


@pytest.fixture(scope="module")
def chat(model_dir):
    return load_chat_model(model_dir)


def _serve(chat, **kw):
    srv = ModelAPIServer(("127.0.0.1", 0), chat, name="tiny", request_timeout_s=1.0, **kw)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


@pytest.fixture(scope="module")
def server(chat):
    srv = _serve(chat, max_body_bytes=4096)
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120)


def messages(text: str = ASK) -> list[dict]:
    return [{"role": "system", "content": TIANJI_SYSTEM}, {"role": "user", "content": text}]


def test_models_lists_the_served_model(client):
    assert [m.id for m in client.models.list()] == ["tiny"]


def test_a_greedy_answer_is_the_models_own_with_usage(client, model_dir):
    out = client.chat.completions.create(model="tiny", messages=messages(), temperature=0, max_tokens=12)
    expected = greedy_answer(model_dir, ASK, system=TIANJI_SYSTEM, max_new_tokens=12)
    assert expected
    assert out.choices[0].message.content == expected
    assert out.choices[0].finish_reason in ("stop", "length")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    prompt = tok.apply_chat_template(messages(), tokenize=False, add_generation_prompt=True)
    assert out.usage.prompt_tokens == len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert 0 < out.usage.completion_tokens <= 12
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens


def test_a_stream_sends_the_same_answer_in_pieces_and_its_usage(client):
    whole = client.chat.completions.create(model="tiny", messages=messages(), temperature=0, max_tokens=12)
    stream = client.chat.completions.create(
        model="tiny",
        messages=messages(),
        temperature=0,
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 1
    assert "".join(pieces) == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_n_gives_that_many_choices_and_a_seed_repeats_them(client):
    ask = dict(model="tiny", messages=messages(), temperature=1.0, max_tokens=16, n=2)
    first = client.chat.completions.create(**ask, seed=7)
    again = client.chat.completions.create(**ask, seed=7)
    assert [c.index for c in first.choices] == [0, 1]
    texts = [c.message.content for c in first.choices]
    assert texts == [c.message.content for c in again.choices]
    others = {
        tuple(c.message.content for c in client.chat.completions.create(**ask, seed=s).choices)
        for s in (1, 2, 3)
    }
    assert len(others | {tuple(texts)}) > 1, "every seed gave the same answers: the seed is not used"
    assert 0 < first.usage.completion_tokens <= 2 * 16


def test_stop_cuts_the_answer_before_the_stop_string(client):
    whole = client.chat.completions.create(model="tiny", messages=messages(), temperature=0, max_tokens=12)
    text = whole.choices[0].message.content
    stop = text[3]
    cut = client.chat.completions.create(
        model="tiny", messages=messages(), temperature=0, max_tokens=12, stop=[stop]
    )
    assert cut.choices[0].message.content == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_requests_that_arrive_together_share_a_generate_call(client, server, model_dir):
    asks = [
        f"祝{who}生日快乐" for who in ("妈妈", "老师", "小王同学", "姐姐", "爷爷", "哥", "舅舅和舅妈", "朋友")
    ]
    before = server.batcher.batches
    with ThreadPoolExecutor(len(asks)) as pool:
        outs = list(
            pool.map(
                lambda a: client.chat.completions.create(
                    model="tiny", messages=messages(a), temperature=0, max_tokens=8
                ),
                asks,
            )
        )
    calls = server.batcher.batches - before
    assert calls < len(asks), f"{len(asks)} requests took {calls} generate calls: nothing was batched"
    for a, out in zip(
        asks, outs, strict=True
    ):  # left padding leaves each answer as it is alone (the oracle strips)
        assert out.choices[0].message.content.strip() == greedy_answer(
            model_dir, a, system=TIANJI_SYSTEM, max_new_tokens=8
        )


def test_an_sdk_error_is_openais_bad_request(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=messages(), n=99)
    assert "'n' must be an integer from 1 to 8" in str(e.value)


# ------------------------------------------------------------------------------------------ misuse


def _post(host: str, body: bytes, **headers) -> bytes:
    base = {"Host": host, "Content-Type": "application/json", "Content-Length": str(len(body))}
    lines = ["POST /v1/chat/completions HTTP/1.1"] + [f"{k}: {v}" for k, v in {**base, **headers}.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


GOOD = json.dumps({"model": "tiny", "messages": messages(), "max_tokens": 2}, ensure_ascii=False).encode()

MISUSE = [
    ("wrong Host", lambda h: _post("evil.example:80", GOOD), 421, "unexpected Host"),
    ("cross-origin", lambda h: _post(h, GOOD, Origin="http://evil.example"), 403, "cross-origin"),
    ("oversized body", lambda h: _post(h, b"{" + b" " * 5000 + b"}"), 413, "over the limit"),
    ("bad JSON", lambda h: _post(h, b"{not json"), 400, "not valid JSON"),
    ("form body", lambda h: _post(h, GOOD, **{"Content-Type": "text/plain"}), 415, "application/json"),
    ("no messages", lambda h: _post(h, b'{"model": "tiny"}'), 400, "'messages' must be"),
]


@pytest.mark.parametrize(("what", "make", "status", "message"), MISUSE, ids=[m[0] for m in MISUSE])
def test_misuse_is_refused(server, what, make, status, message):
    host = f"127.0.0.1:{server.server_address[1]}"
    got, headers, body = http_exchange(server.server_address, make(host))
    assert got == status, body
    assert message in json.loads(body)["error"]["message"]
    assert headers["x-content-type-options"] == "nosniff"
    ok, _, answer = http_exchange(server.server_address, _post(host, GOOD))
    assert ok == 200, answer  # and it keeps answering


def test_a_token_is_required_when_set(chat):
    srv = _serve(chat, token=TOKEN)
    try:
        host = f"127.0.0.1:{srv.server_address[1]}"
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            got, _, body = http_exchange(srv.server_address, _post(host, GOOD, **headers))
            assert got == 401, body
            assert json.loads(body)["error"]["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=srv.base_url, api_key="wrong", max_retries=0).models.list()
        good = openai.OpenAI(base_url=srv.base_url, api_key=TOKEN, max_retries=0)
        assert [m.id for m in good.models.list()] == ["tiny"]
    finally:
        srv.shutdown()
        srv.server_close()


def test_a_non_loopback_address_needs_a_token(chat):
    with pytest.raises(ModelError, match="needs a token"):
        ModelAPIServer(("0.0.0.0", 0), chat, name="tiny")


def test_the_cli_refuses_a_public_address_without_a_token(model_dir):
    result = run_cmd(
        [sys.executable, "-m", "zhufu", "serve-model", str(model_dir), "--host", "0.0.0.0", "--port", "0"],
        cwd=ROOT,
        timeout=300,
        env={"ZHUFU_SERVE_TOKEN": ""},
    )
    assert result.returncode == 1
    assert "zhufu serve-model: error: serve-model: listening on 0.0.0.0 needs a token" in result.stderr
