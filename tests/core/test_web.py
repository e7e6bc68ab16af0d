"""The local web layer (zhufu.web) under misuse, against all three of its servers: the web demo, the review
page and the offline teacher's API. Raw sockets on 127.0.0.1 send what a careless or hostile client would;
each server must refuse it with the same status, answer within its time-out, and keep answering."""

from __future__ import annotations

import json
import threading
import time

import pytest
from helpers import ROOT, http_exchange

from zhufu.model.review import make_review_server
from zhufu.model.serve import make_server
from zhufu.teacher.server import TeacherServer

TIMEOUT_S = 1.0


def _demo(tmp_path):
    # The checks come before the model: no request here reaches it, so the demo runs without one
    # (tests/model/test_serve.py drives it with a real model).
    srv = make_server(None, "127.0.0.1", 0, label="tiny", body_timeout_s=TIMEOUT_S)
    return srv, "/api/chat", {"text": "祝姐姐生日快乐"}, "/healthz", 4096


def _review(tmp_path):
    report = tmp_path / "clean_report.json"
    report.write_text(json.dumps({"dropped": [], "modified": []}), encoding="utf-8")
    srv = make_review_server(ROOT / "tests/fixtures/dirty.json", report, tmp_path / "decisions.jsonl")
    srv.body_timeout_s = TIMEOUT_S
    return srv, "/api/decision", {"id": "keep_plain", "decision": "accept"}, "/api/records", 64 * 1024


def _teacher(tmp_path):
    srv = TeacherServer(("127.0.0.1", 0), request_timeout_s=TIMEOUT_S, max_body_bytes=64 * 1024)
    body = {"model": "m", "messages": [{"role": "user", "content": "祝姐姐生日快乐，小红书风格"}]}
    return srv, "/v1/chat/completions", body, "/v1/models", 64 * 1024


SERVERS = {"demo": _demo, "review": _review, "teacher": _teacher}


class Target:
    def __init__(self, name, srv, path, good, get_path, limit):
        self.name, self.srv, self.path, self.get_path, self.limit = name, srv, path, get_path, limit
        self.good = json.dumps(good, ensure_ascii=False).encode("utf-8")
        self.host = f"127.0.0.1:{srv.server_address[1]}"

    def request(self, method: str, path: str, headers: dict, body: bytes = b"") -> bytes:
        lines = [f"{method} {path} HTTP/1.1"] + [f"{k}: {v}" for k, v in headers.items() if v is not None]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    def post(self, body: bytes | None = None, **headers) -> bytes:
        body = self.good if body is None else body
        base = {"Host": self.host, "Content-Type": "application/json", "Content-Length": str(len(body))}
        return self.request("POST", self.path, {**base, **headers}, body)

    def exchange(self, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        return http_exchange(self.srv.server_address, raw)

    def error(self, body: bytes) -> str:
        err = json.loads(body)["error"]
        return err["message"] if isinstance(err, dict) else err  # the teacher answers in OpenAI's shape


@pytest.fixture(params=sorted(SERVERS), scope="module")
def target(request, tmp_path_factory):
    srv, path, good, get_path, limit = SERVERS[request.param](tmp_path_factory.mktemp(request.param))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield Target(request.param, srv, path, good, get_path, limit)
    srv.shutdown()
    srv.server_close()


MISUSES = [
    # DNS rebinding: evil.example resolves to 127.0.0.1, the Host header still says evil.example
    ("another Host", lambda t: t.post(Host="evil.example:80"), 421, "Host"),
    ("the Host without its port", lambda t: t.post(Host="127.0.0.1"), 421, "Host"),
    ("no Host", lambda t: t.post(Host=None), 421, "Host"),
    # a cross-site POST, even with the right type
    ("another Origin", lambda t: t.post(Origin="http://evil.example"), 403, "cross-origin"),
    ("Origin null", lambda t: t.post(Origin="null"), 403, "cross-origin"),
    # a form or text/plain POST from another site (CSRF needs no preflight for these)
    ("text/plain", lambda t: t.post(**{"Content-Type": "text/plain"}), 415, "application/json"),
    (
        "a form",
        lambda t: t.post(b"text=x", **{"Content-Type": "application/x-www-form-urlencoded"}),
        415,
        "application/json",
    ),
    ("no Content-Length", lambda t: t.post(**{"Content-Length": None}), 411, "Content-Length"),
    (
        "chunked",
        lambda t: t.post(
            b"5\r\nhello\r\n0\r\n\r\n", **{"Content-Length": None, "Transfer-Encoding": "chunked"}
        ),
        411,
        "chunked",
    ),
    ("Content-Length 12abc", lambda t: t.post(b"", **{"Content-Length": "12abc"}), 400, "not a number"),
    ("a negative Content-Length", lambda t: t.post(b"", **{"Content-Length": "-5"}), 400, "not a number"),
    ("a huge Content-Length", lambda t: t.post(b"{}", **{"Content-Length": str(10**12)}), 413, "at most"),
    ("a body over the limit", lambda t: t.post(b" " * (t.limit + 1)), 413, "at most"),
    ("bad JSON", lambda t: t.post(b'{"text": '), 400, "JSON"),
    ("not UTF-8", lambda t: t.post('{"text": "生日"}'.encode("gbk")), 400, "JSON"),
    ("deeply nested JSON", lambda t: t.post(b"[" * 2000 + b"]" * 2000), 400, "nested too deeply"),
]


@pytest.mark.parametrize(("name", "make", "status", "message"), MISUSES, ids=[m[0] for m in MISUSES])
def test_misuse_gets_the_same_status_from_every_server(target, name, make, status, message):
    got, headers, body = target.exchange(make(target))
    assert got == status, body
    assert message in target.error(body)
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["connection"].lower() == "close"


def test_a_well_formed_post_from_the_page_passes_the_checks(target):
    body = target.good
    if target.name == "demo":  # no model here: an empty text is refused by the demo's own check instead
        body = json.dumps({"text": " "}).encode()
    got, headers, reply = target.exchange(target.post(body, Origin=f"http://{target.host}"))
    if target.name == "demo":
        assert got == 400 and "the text is empty" in target.error(reply)
        return
    assert got == 200, reply
    assert headers["content-type"] == "application/json; charset=utf-8"
    assert headers["x-content-type-options"] == "nosniff"


def test_gets_check_the_host_too(target):
    assert target.exchange(target.request("GET", target.get_path, {"Host": "evil.example"}))[0] == 421
    got, headers, _ = target.exchange(target.request("GET", target.get_path, {"Host": target.host}))
    assert got == 200 and headers["x-content-type-options"] == "nosniff"


def test_a_short_body_times_out_instead_of_hanging(target):
    start = time.monotonic()
    got, _, body = target.exchange(target.post(b'{"text"', **{"Content-Length": "500"}))
    assert got == 408 and "ended after 7 of 500 bytes" in target.error(body)
    assert time.monotonic() - start < TIMEOUT_S * 5


def test_a_stalled_client_is_dropped(target):
    """Half a request line, then nothing: the server closes the connection after its time-out."""
    start = time.monotonic()
    got, _, _ = target.exchange(b"POST /api/cha")
    assert got == 0 and time.monotonic() - start < TIMEOUT_S * 5


@pytest.mark.parametrize("name", ["demo", "review"])
def test_pages_forbid_framing_and_other_origins(name, tmp_path):
    srv, *_ = SERVERS[name](tmp_path)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        t = Target(name, srv, "/", {}, "/", 0)
        got, headers, page = t.exchange(t.request("GET", "/", {"Host": t.host}))
    finally:
        srv.shutdown()
        srv.server_close()
    assert got == 200 and b"ZhufuCJK" in page
    assert headers["content-type"] == "text/html; charset=utf-8"
    csp = headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "default-src 'self'" in csp
