"""Zhufu's offline teacher: an OpenAI-compatible HTTP server that composes blessings from a phrase bank.

It is a stand-in so that the default workflow runs with no API key and no GPU. It is NOT a language
model: it reads the recipient, scene, style, length limit and extra rules out of the generation prompt
that `zhufu.grid.build_prompt` writes, and assembles a Chinese blessing from `resources/phrases.yaml`.
Every answer says so (`system_fingerprint`), and so does the `zhufu serve-teacher` banner. It also answers
the evaluation judge's requests (zhufu.model.judge), with a rubric's score (zhufu.teacher.judge).

Answers are reproducible: the random choices are seeded by a hash of the request's messages,
temperature and `seed`, so the same request always gets the same answer and different cells differ.

Endpoints: `POST /v1/chat/completions` (also `/chat/completions` and ZhipuAI's
`/api/paas/v4/chat/completions`), `GET /v1/models`, the Batch API (zhufu.teacher.batches: files, batches,
answered after `batch_delay_s`), and `GET /zhufu/stats`, which returns `{"requests": n, ...}`: the
chat-completion requests received so far, and the batch counters.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.request import urlopen

from zhufu.errors import ProviderError
from zhufu.teacher.bank import DEFAULT_PHRASES, load_phrases
from zhufu.teacher.batches import BatchStore, handle_get, handle_post
from zhufu.teacher.compose import compose
from zhufu.teacher.judge import is_judge_request, verdict
from zhufu.teacher.prompt import parse_prompt
from zhufu.web import LocalHandler, LocalServer, Refused

log = logging.getLogger(__name__)

DEFAULT_MODEL = "zhufu-offline-teacher"
FINGERPRINT = "zhufu-offline-teacher (phrase bank, not an LLM)"
CHAT_PATHS = {"/v1/chat/completions", "/chat/completions", "/api/paas/v4/chat/completions"}
STATS_PATHS = {"/zhufu/stats", "/v1/zhufu/stats"}
MODELS_PATHS = {"/v1/models", "/models", "/api/paas/v4/models"}
# The HTTP API (zhufu.web's checks) refuses a body over this size (413), and gives up on a client that sends
# nothing for REQUEST_TIMEOUT_S seconds (a short body, a stalled or slow client): no request can hold a
# thread forever.
MAX_BODY_BYTES = 1 << 20
REQUEST_TIMEOUT_S = 15.0


def request_seed(body: dict, index: int = 0) -> int:
    """The answer's seed: a hash of the messages, the temperature and the `seed` parameter."""
    key = json.dumps(
        {
            "messages": body.get("messages"),
            "temperature": body.get("temperature"),
            "seed": body.get("seed"),
            "i": index,
        },
        ensure_ascii=False,
        sort_keys=True,
    )
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big")


def _text(content: object) -> str:
    """A message's text: a string, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def answer(body: dict, bank: dict, index: int = 0) -> str:
    """The blessing the teacher gives for a chat-completion request body."""
    users = [_text(m.get("content")) for m in body["messages"] if m.get("role") == "user"]
    if users and is_judge_request(users[-1]):
        return verdict(users[-1], bank)  # zhufu.model.judge's request: a rubric's score, not a blessing
    ask = parse_prompt(users[-1] if users else "", bank)
    return compose(ask, bank, random.Random(request_seed(body, index)))


def _invalid(message: str, param: str | None = None) -> Refused:
    return Refused(400, message, param=param)


def _check_body(body: object) -> dict:
    if not isinstance(body, dict):
        raise _invalid("the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _invalid("'messages' must be a non-empty list", "messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise _invalid(f"messages[{i}] must be an object with a 'role'", f"messages[{i}]")
    n = body.get("n", 1)
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 16:
        raise _invalid("'n' must be an integer from 1 to 16", "n")
    max_tokens = body.get("max_tokens")
    if max_tokens is not None and (
        not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1
    ):
        raise _invalid("'max_tokens' must be a positive integer", "max_tokens")
    if body.get("model") is not None and not isinstance(body["model"], str):
        raise _invalid("'model' must be a string", "model")
    return body


def completion(body: dict, bank: dict) -> dict:
    """A complete OpenAI-shaped chat.completion for a (checked) request body."""
    prompt_tokens = sum(len(_text(m.get("content"))) for m in body["messages"])
    max_tokens = body.get("max_tokens") if isinstance(body.get("max_tokens"), int) else None
    choices, completion_tokens = [], 0
    for i in range(body.get("n", 1)):
        text, finish = answer(body, bank, i), "stop"
        if max_tokens is not None and len(text) > max_tokens:
            text, finish = text[:max_tokens], "length"
        completion_tokens += len(text)
        choices.append(
            {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
        )
    return {
        "id": f"chatcmpl-zhufu-{request_seed(body):016x}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model") or DEFAULT_MODEL,
        "system_fingerprint": FINGERPRINT,
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def _error(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class TeacherServer(LocalServer):
    """The HTTP server; `request_count` counts chat-completion requests (answered or not)."""

    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        phrases: str | Path = DEFAULT_PHRASES,
        *,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
        max_body_bytes: int = MAX_BODY_BYTES,
        allowed_hosts: tuple[str, ...] = (),
        batch_delay_s: float = 1.0,
    ):
        self.bank = load_phrases(str(phrases))
        self.batches = BatchStore(lambda body: completion(_check_body(body), self.bank), batch_delay_s)
        self.request_count = 0
        self.completion_count = 0
        self.error_count = 0
        self._lock = threading.Lock()
        super().__init__(
            address,
            _Handler,
            allowed_hosts=allowed_hosts,
            max_body_bytes=max_body_bytes,
            body_timeout_s=request_timeout_s,
        )

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"

    def count(self, field: str) -> None:
        with self._lock:
            setattr(self, field, getattr(self, field) + 1)

    def stats(self) -> dict:
        with self._lock:
            return {
                "requests": self.request_count,
                "completions": self.completion_count,
                "errors": self.error_count,
                **self.batches.stats(),
            }


ERROR_TYPES = {404: "not_found_error", 500: "server_error"}


class _Handler(LocalHandler):
    server: TeacherServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as two writes; don't wait 40 ms between them
    server_version = "zhufu-offline-teacher"

    def error_body(self, e: Refused) -> dict:
        """OpenAI's error shape, which the SDKs read."""
        return _error(e.message, ERROR_TYPES.get(e.status, "invalid_request_error"), e.param, e.code)

    def refuse(self, e: Refused) -> None:
        if e.status != 404:
            self.server.count("error_count")
        super().refuse(e)

    def get(self, route: str) -> None:
        if route in MODELS_PATHS:
            model = {"id": DEFAULT_MODEL, "object": "model", "created": 0, "owned_by": "zhufu"}
            self.send_json(200, {"object": "list", "data": [model]})
        elif route in STATS_PATHS:
            self.send_json(200, self.server.stats())
        elif handle_get(self, self.server.batches, route):
            pass
        else:
            self.send_json(404, self.error_body(Refused(404, f"no such endpoint: GET {route}", "not_found")))

    def do_POST(self) -> None:
        path = self.route
        if path not in CHAT_PATHS:
            try:
                if handle_post(self, self.server.batches, path):
                    return
            except Refused as e:
                self.refuse(e)
                return
            self.refuse(Refused(404, f"no such endpoint: POST {path}", "not_found"))
            return
        self.server.count("request_count")
        try:
            body = _check_body(self.read_json())
            payload = completion(body, self.server.bank)
        except Refused as e:
            self.refuse(e)
            return
        except Exception:  # a request the composer can't handle is that request's 500, not the server's end
            log.exception("offline teacher: request failed")
            self.refuse(Refused(500, "the teacher failed on this request"))
            return
        self.server.count("completion_count")
        if body.get("stream"):
            self._stream(payload)
        else:
            self.send_json(200, payload)

    def _stream(self, payload: dict) -> None:
        """Server-sent events: one content chunk per choice, then a final chunk with usage, then [DONE]."""
        base = {k: payload[k] for k in ("id", "created", "model", "system_fingerprint")}
        events = []
        for ch in payload["choices"]:
            delta = {"role": "assistant", "content": ch["message"]["content"]}
            events.append(
                {
                    **base,
                    "object": "chat.completion.chunk",
                    "choices": [{"index": ch["index"], "delta": delta}],
                }
            )
            done = {"index": ch["index"], "delta": {}, "finish_reason": ch["finish_reason"]}
            events.append({**base, "object": "chat.completion.chunk", "choices": [done]})
        events.append({**base, "object": "chat.completion.chunk", "choices": [], "usage": payload["usage"]})
        data = "".join(f"data: {json.dumps(e, ensure_ascii=False)}\n\n" for e in events) + "data: [DONE]\n\n"
        self.send_body(200, data.encode("utf-8"), "text/event-stream; charset=utf-8")


def start_teacher(
    host: str = "127.0.0.1",
    port: int = 0,
    phrases: str | Path = DEFAULT_PHRASES,
    allowed_hosts: tuple[str, ...] = (),
    batch_delay_s: float = 1.0,
) -> TeacherServer:
    """Start the teacher in a background thread; call `.shutdown()` and `.server_close()` to stop it."""
    try:
        server = TeacherServer(
            (host, port), phrases, allowed_hosts=allowed_hosts, batch_delay_s=batch_delay_s
        )
    except OSError as e:
        raise ProviderError(
            f"offline teacher: cannot listen on {host}:{port} ({e.strerror}); use another --port"
        ) from None
    threading.Thread(target=server.serve_forever, name="zhufu-teacher", daemon=True).start()
    log.info("offline teacher (%s) at %s", FINGERPRINT, server.base_url)
    return server


@contextmanager
def running_teacher(
    host: str = "127.0.0.1",
    port: int = 0,
    phrases: str | Path = DEFAULT_PHRASES,
    batch_delay_s: float = 1.0,
) -> Iterator[str]:
    """Run the teacher for the duration of a `with` block; yields its base_url (http://127.0.0.1:PORT/v1)."""
    server = start_teacher(host, port, phrases, batch_delay_s=batch_delay_s)
    try:
        yield server.base_url
    finally:
        log.info("offline teacher served: %s", json.dumps(server.stats(), sort_keys=True))
        server.shutdown()
        server.server_close()


def teacher_stats(base_url: str, timeout: float = 5.0) -> dict:
    """`GET /zhufu/stats` of a running teacher: {"requests": n, "completions": n, "errors": n}."""
    root = base_url.rstrip("/").removesuffix("/v1")
    with urlopen(f"{root}/zhufu/stats", timeout=timeout) as resp:
        return json.loads(resp.read().decode("utf-8"))


# ---------------------------------------------------------------------------------------------------------
# CLI: zhufu serve-teacher


def _port(text: str) -> int:
    import argparse

    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"port must be 0 to 65535, not {text!r}")
    return int(text)


def add_serve_teacher_arguments(parser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument(
        "--port", type=_port, default=8000, help="port to listen on; 0 picks a free one (default: 8000)"
    )
    parser.add_argument(
        "--phrases", default=str(DEFAULT_PHRASES), help="phrase bank YAML (default: %(default)s)"
    )
    parser.add_argument(
        "--batch-delay",
        type=float,
        default=1.0,
        help="seconds after which a batch completes (the Batch API; default: %(default)s)",
    )
    parser.add_argument(
        "--allow-host", action="append", default=[], help="another Host name the API may be reached by"
    )


def run_serve_teacher(args) -> int:
    server = start_teacher(
        args.host, args.port, args.phrases, tuple(args.allow_host), batch_delay_s=args.batch_delay
    )
    print(
        f"Zhufu offline teacher: a phrase bank, NOT an LLM. It composes blessings from {args.phrases}\n"
        f"so the workflow runs without an API key. OpenAI-compatible endpoint: {server.base_url}\n"
        f"(ZhipuAI path: {server.base_url.removesuffix('/v1')}/api/paas/v4). Ctrl-C stops it.",
        flush=True,
    )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        server.server_close()
    print(f"served {server.request_count} chat-completion requests", flush=True)
    return 0
