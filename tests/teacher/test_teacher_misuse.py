"""The offline teacher's HTTP API under misuse: raw sockets on 127.0.0.1 send what a careless or hostile
client would. Every request gets an answer or a closed connection within the server's timeout; none hangs
a thread, none ends the server, and the well-formed ones are still answered. The checks it shares with the
demo and the review page (Host, Origin, type, length, size, time) are tests/core/test_web.py's; these are
the API's own (the request's fields, prompts, a load)."""

from __future__ import annotations

import concurrent.futures
import json
import time

import openai
import pytest
from helpers import http_exchange

from zhufu.teacher.prompt import MAX_CHARS_CAP
from zhufu.teacher.server import TeacherServer

TIMEOUT_S = 1.0
GOOD = json.dumps(
    {"model": "m", "messages": [{"role": "user", "content": "祝姐姐生日快乐，小红书风格"}]},
    ensure_ascii=False,
).encode()


@pytest.fixture(scope="module")
def server():
    srv = TeacherServer(("127.0.0.1", 0), request_timeout_s=TIMEOUT_S, max_body_bytes=64 * 1024)
    import threading

    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def exchange(
    server, raw: bytes, *, pause_after: bytes | None = None, read_timeout: float = 10
) -> tuple[int, str]:
    """Send raw bytes, read until the server closes or a full response arrives; (status, body) or (0, '')."""
    host, port = server.server_address[:2]
    raw = raw.replace(b"Host: HOST", f"Host: {host}:{port}".encode())
    status, _, body = http_exchange(server.server_address, raw, read_timeout)
    return status, body.decode("utf-8", "replace")


def post(
    body: bytes, *, ctype: str = "application/json", length: int | None = None, extra: str = ""
) -> bytes:
    n = len(body) if length is None else length
    headers = f"POST /v1/chat/completions HTTP/1.1\r\nHost: HOST\r\nContent-Type: {ctype}\r\n"
    return (headers + f"Content-Length: {n}\r\n{extra}\r\n").encode() + body


MISUSES = [
    ("bad JSON", post(b'{"messages": ['), 400, "not valid JSON"),
    ("a JSON list", post(b"[1, 2]"), 400, "JSON object"),
    ("n = true", post(b'{"messages": [{"role": "user", "content": "x"}], "n": true}'), 400, "'n'"),
    ("n = 10**6", post(b'{"messages": [{"role": "user", "content": "x"}], "n": 1000000}'), 400, "'n'"),
    (
        "max_tokens = -1",
        post(b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": -1}'),
        400,
        "max_tokens",
    ),
    ("model = {}", post(b'{"messages": [{"role": "user", "content": "x"}], "model": {}}'), 400, "'model'"),
    ("role missing", post(b'{"messages": [{"content": "x"}]}'), 400, "role"),
]


@pytest.mark.parametrize(("name", "raw", "status", "message"), MISUSES, ids=[m[0] for m in MISUSES])
def test_misuse_gets_a_clear_http_error(server, name, raw, status, message):
    got, body = exchange(server, raw)
    assert got == status, body
    assert message in json.loads(body)["error"]["message"]


def test_prompt_patterns_that_could_be_slow_or_huge_are_answered(server):
    for content in ("1" * 60_000 + "个字", "字数少于" + "9" * 5000 + "字", "少于99999999999字，祝姐姐生日"):
        body = json.dumps({"messages": [{"role": "user", "content": content}]}).encode()
        start = time.monotonic()
        got, text = exchange(server, post(body))
        assert got == 200, text
        assert time.monotonic() - start < 5
        answer = json.loads(text)["choices"][0]["message"]["content"]
        assert 0 < len(answer) < MAX_CHARS_CAP


def test_the_server_still_answers_the_sdk_after_all_that(server):
    client = openai.OpenAI(base_url=server.base_url, api_key="offline", max_retries=0, timeout=10)
    resp = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "祝姐姐生日快乐"}])
    assert resp.choices[0].message.content


def test_fifty_concurrent_requests_some_malformed(server):
    """A short load: 50 at once, one in five malformed or stalled. Every good one is answered 200; every bad
    one gets its error or is dropped; all within a bounded time; the server answers afterwards."""
    kinds = []
    for i in range(50):
        if i % 10 == 3:
            kinds.append(("bad", post(b"{not json")))
        elif i % 10 == 7:
            kinds.append(("short", post(b"{", length=100)))
        else:
            body = json.dumps(
                {"messages": [{"role": "user", "content": f"祝姐姐生日快乐{i}"}]}, ensure_ascii=False
            )
            kinds.append(("good", post(body.encode())))
    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        results = list(pool.map(lambda k: (k[0], *exchange(server, k[1])), kinds))
    elapsed = time.monotonic() - start
    by_kind = {k: [status for kind, status, _ in results if kind == k] for k in ("good", "bad", "short")}
    assert len(by_kind["good"]) == 40 and set(by_kind["good"]) == {200}
    assert len(by_kind["bad"]) == 5 and set(by_kind["bad"]) == {400}
    assert len(by_kind["short"]) == 5 and set(by_kind["short"]) == {408}
    assert elapsed < 30
    assert exchange(server, post(GOOD))[0] == 200
    print(f"50 concurrent requests in {elapsed:.2f}s: {by_kind['good'].count(200)} good answered 200")
