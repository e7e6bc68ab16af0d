"""`zhufu serve-model MODEL_DIR`: any Hugging Face model directory behind an OpenAI-compatible API.

Endpoints: `GET /v1/models` (the one model, named `--name`, by default the directory's name) and
`POST /v1/chat/completions` (also `/chat/completions`) with `messages`, `stream` (server-sent events like
OpenAI's, ending in `data: [DONE]`; with `stream_options.include_usage` a last chunk carries `usage`),
`temperature` (0 is greedy), `top_p`, `max_tokens`, `seed`, `n` (1 to 8), `stop` (a string or up to 4) and
`usage` in every answer. The prompt is the model's own chat template (ChatML when it has none).

**Batching.** Requests wait in one queue; a single worker thread takes every request waiting (up to
`--max-batch` rows, one row per choice), groups those that decode alike (greedy, or the same temperature and
top_p without a seed) and runs each group as one left-padded `model.generate` call. A request with a `seed`
and temperature > 0 is sampled alone after `torch.manual_seed(seed)`, so the same request with the same seed
gets the same answers. A stream is sent once its batch has been generated: each token's text is one chunk,
but the chunks come together, not as they are generated (a request waits for its batch either way).

**Hardening** is zhufu.web's (Host, Origin, JSON body of at most MAX_BODY_BYTES within REQUEST_TIMEOUT_S);
the server binds 127.0.0.1 by default. `--token` (or the ZHUFU_SERVE_TOKEN environment variable) requires
`Authorization: Bearer <token>` on every request (401 otherwise), and is required for any address but
loopback. More than MAX_WAITING requests queued → 503 with Retry-After, which the openai SDK retries.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path

from zhufu.errors import ModelError
from zhufu.model.chat import ChatModel, build_prompt, load_chat_model
from zhufu.web import LOOPBACK, LocalHandler, LocalServer, Refused, serve_until_interrupted

log = logging.getLogger(__name__)

TOKEN_ENV = "ZHUFU_SERVE_TOKEN"
CHAT_PATHS = {"/v1/chat/completions", "/chat/completions"}
MODELS_PATHS = {"/v1/models", "/models"}
MAX_BODY_BYTES = 1 << 20
REQUEST_TIMEOUT_S = 15.0
MAX_WAITING = 256
MAX_N = 8
MAX_STOPS = 4
DEFAULT_MAX_TOKENS = 128
MAX_BATCH = 64
GATHER_S = 0.005  # how long the worker waits for more requests after the first, so a burst shares a batch


@dataclass
class Job:
    """One checked request: its prompt ids, how to decode, and where the worker puts the result."""

    prompt_ids: list[int]
    n: int
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stops: list[str]
    done: threading.Event = field(default_factory=threading.Event)
    choices: list[dict] | None = (
        None  # [{"text", "tokens": [str, ...], "finish_reason", "completion_tokens"}]
    )
    error: str | None = None

    @property
    def group(self) -> tuple:
        """Jobs with the same group decode alike and may share one generate call."""
        if self.temperature <= 0:
            return ("greedy", self.max_tokens)
        if self.seed is not None:
            return ("seeded", id(self))
        return ("sample", self.temperature, self.top_p, self.max_tokens)


def _invalid(message: str, param: str | None = None) -> Refused:
    return Refused(HTTPStatus.BAD_REQUEST, message, "invalid_request", param)


def _number(body: dict, key: str, default: float, low: float, high: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, int | float) or isinstance(value, bool) or not low <= value <= high:
        raise _invalid(f"'{key}' must be a number from {low} to {high}", key)
    return float(value)


def _integer(body: dict, key: str, default: int | None, low: int, high: int) -> int | None:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise _invalid(f"'{key}' must be an integer from {low} to {high}", key)
    return value


def check_request(body: object) -> dict:
    """The request's fields, checked: messages, n, max_tokens, temperature, top_p, seed, stop, stream."""
    if not isinstance(body, dict):
        raise _invalid("the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _invalid("'messages' must be a non-empty list", "messages")
    for i, m in enumerate(messages):
        if (
            not isinstance(m, dict)
            or m.get("role") not in ("system", "user", "assistant")
            or not isinstance(m.get("content"), str)
        ):
            raise _invalid(
                f"messages[{i}] must be an object with a role (system, user or assistant) and a string content",
                f"messages[{i}]",
            )
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop if stop is not None else []
    if (
        not isinstance(stops, list)
        or len(stops) > MAX_STOPS
        or not all(isinstance(s, str) and s for s in stops)
    ):
        raise _invalid(f"'stop' must be a non-empty string or a list of at most {MAX_STOPS}", "stop")
    if body.get("model") is not None and not isinstance(body["model"], str):
        raise _invalid("'model' must be a string", "model")
    return {
        "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
        "n": _integer(body, "n", 1, 1, MAX_N),
        "max_tokens": _integer(body, "max_tokens", DEFAULT_MAX_TOKENS, 1, 4096),
        "temperature": _number(body, "temperature", 1.0, 0.0, 2.0),
        "top_p": _number(body, "top_p", 1.0, 0.0, 1.0) or 1.0,
        "seed": _integer(body, "seed", None, -(2**63), 2**63 - 1),
        "stops": stops,
        "stream": body.get("stream") is True,
        "include_usage": isinstance(body.get("stream_options"), dict)
        and body["stream_options"].get("include_usage") is True,
    }


def _cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    cuts = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


class Batcher:
    """The queue and the one worker thread that owns the model (transformers models are not thread-safe)."""

    def __init__(self, chat: ChatModel, max_batch: int = MAX_BATCH, gather_s: float = GATHER_S):
        self.chat = chat
        self.max_batch = max_batch
        self.gather_s = gather_s
        self.queue: queue.Queue[Job | None] = queue.Queue()
        self.batches = 0  # generate calls, for the stats
        self.rows = 0
        self.thread = threading.Thread(target=self._work, name="zhufu-serve-model", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> None:
        self.queue.put(job)

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=30)

    def _take(self) -> list[Job] | None:
        first = self.queue.get()
        if first is None:
            return None
        jobs, rows = [first], first.n
        deadline = time.monotonic() + self.gather_s
        while rows < self.max_batch:
            try:
                job = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is None:
                self.queue.put(None)
                break
            jobs.append(job)
            rows += job.n
        return jobs

    def _work(self) -> None:
        while (jobs := self._take()) is not None:
            groups: dict[tuple, list[Job]] = {}
            for job in jobs:
                groups.setdefault(job.group, []).append(job)
            for group in groups.values():
                try:
                    self._generate(group)
                except Exception as e:  # one batch's failure is its requests' 500, not the server's end
                    log.exception("serve-model: generation failed")
                    for job in group:
                        job.error = f"generation failed: {type(e).__name__}: {e}"
                for job in group:
                    job.done.set()

    def _generate(self, jobs: list[Job]) -> None:
        import torch  # heavy: the server has loaded it with the model already

        tok, first = self.chat.tokenizer, jobs[0]
        rows = [job.prompt_ids for job in jobs for _ in range(job.n)]
        width = max(len(r) for r in rows)
        pad = tok.pad_token_id if tok.pad_token_id is not None else self.chat.stop_ids[0]
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=self.chat.device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=self.chat.device)
        if first.temperature > 0:
            if first.seed is not None:
                torch.manual_seed(first.seed)
            sampling = {"do_sample": True, "temperature": first.temperature, "top_p": first.top_p}
        else:
            sampling = {"do_sample": False}
        with torch.no_grad():
            out = self.chat.model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=first.max_tokens,
                eos_token_id=self.chat.stop_ids,
                pad_token_id=pad,
                **sampling,
            )
        self.batches += 1
        self.rows += len(rows)
        stop_ids = set(self.chat.stop_ids)
        new = out[:, width:].tolist()
        row = 0
        for job in jobs:
            job.choices = []
            for _ in range(job.n):
                generated = new[row]
                row += 1
                ended = next((i for i, t in enumerate(generated) if t in stop_ids), None)
                kept = generated if ended is None else generated[:ended]
                pieces = [tok.decode(kept[: i + 1], skip_special_tokens=True) for i in range(len(kept))]
                text = pieces[-1] if pieces else ""
                text, stopped = _cut_at_stop(text, job.stops)
                if stopped:
                    kept = [t for t, p in zip(kept, pieces, strict=True) if len(p) <= len(text)]
                deltas, before = [], ""
                for p in pieces[: len(kept)]:
                    if p.endswith("\ufffd") or not p.startswith(before):
                        continue  # a character split across tokens: its text comes with the next token
                    deltas.append(p[len(before) :])
                    before = p
                if len(before) < len(text):
                    deltas.append(text[len(before) :])
                finish = "stop" if ended is not None or stopped else "length"
                job.choices.append(
                    {
                        "text": text,
                        "deltas": [d for d in deltas if d],
                        "finish_reason": finish,
                        "completion_tokens": len(kept),
                    }
                )


class ModelAPIServer(LocalServer):
    """The API's server: the model behind a Batcher, the model's name, an optional bearer token."""

    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        chat: ChatModel,
        *,
        name: str,
        token: str | None = None,
        allowed_hosts: tuple[str, ...] = (),
        max_batch: int = MAX_BATCH,
        max_body_bytes: int = MAX_BODY_BYTES,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
    ):
        if not token and address[0] not in ("127.0.0.1", "localhost", "::1"):
            raise ModelError(
                f"serve-model: listening on {address[0]} needs a token: pass --token or set {TOKEN_ENV} "
                "(clients then send it as their API key)"
            )
        self.chat = chat
        self.name = name
        self.token = token or None
        self.waiting = threading.BoundedSemaphore(MAX_WAITING)
        self.batcher = Batcher(chat, max_batch=max_batch)
        super().__init__(
            address,
            ModelAPIHandler,
            allowed_hosts=allowed_hosts,
            max_body_bytes=max_body_bytes,
            body_timeout_s=request_timeout_s,
        )

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"

    def server_close(self) -> None:
        super().server_close()
        self.batcher.close()


ERROR_TYPES = {401: "authentication_error", 404: "not_found_error", 500: "server_error", 503: "server_error"}


class ModelAPIHandler(LocalHandler):
    server: ModelAPIServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "zhufu-serve-model"

    def error_body(self, e: Refused) -> dict:
        """OpenAI's error shape, which the SDKs read."""
        type_ = ERROR_TYPES.get(e.status, "invalid_request_error")
        return {"error": {"message": e.message, "type": type_, "param": e.param, "code": e.code}}

    def check_token(self) -> None:
        if self.server.token is None:
            return
        given = (self.headers.get("Authorization") or "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), self.server.token.encode()):
            raise Refused(HTTPStatus.UNAUTHORIZED, "a valid bearer token is required", "invalid_api_key")

    def get(self, route: str) -> None:
        try:
            self.check_token()
        except Refused as e:
            self.refuse(e)
            return
        if route in MODELS_PATHS:
            model = {"id": self.server.name, "object": "model", "created": 0, "owned_by": "zhufu"}
            self.send_json(HTTPStatus.OK, {"object": "list", "data": [model]})
        else:
            self.send_json(404, self.error_body(Refused(404, f"no such endpoint: GET {route}", "not_found")))

    def do_POST(self) -> None:
        if self.route not in CHAT_PATHS:
            self.refuse(Refused(404, f"no such endpoint: POST {self.route}", "not_found"))
            return
        try:
            self.check_host()
            self.check_token()
            req = check_request(self.read_json())
        except Refused as e:
            self.refuse(e)
            return
        if not self.server.waiting.acquire(blocking=False):
            self.send_body(
                HTTPStatus.SERVICE_UNAVAILABLE,
                json.dumps(self.error_body(Refused(503, "too many requests waiting", "overloaded"))).encode(),
                "application/json",
                {"Retry-After": "1"},
            )
            return
        try:
            self._answer(req)
        finally:
            self.server.waiting.release()

    def _answer(self, req: dict) -> None:
        chat = self.server.chat
        prompt = build_prompt(chat.tokenizer, req["messages"])
        prompt_ids = chat.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        job = Job(
            prompt_ids,
            req["n"],
            req["max_tokens"],
            req["temperature"],
            req["top_p"],
            req["seed"],
            req["stops"],
        )
        self.server.batcher.submit(job)
        job.done.wait()
        if job.error or job.choices is None:
            self.refuse(Refused(500, job.error or "generation failed", "server_error"))
            return
        completion_tokens = sum(c["completion_tokens"] for c in job.choices)
        usage = {
            "prompt_tokens": len(prompt_ids),
            "completion_tokens": completion_tokens,
            "total_tokens": len(prompt_ids) + completion_tokens,
        }
        base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": self.server.name}
        if not req["stream"]:
            choices = [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": c["text"]},
                    "logprobs": None,
                    "finish_reason": c["finish_reason"],
                }
                for i, c in enumerate(job.choices)
            ]
            self.send_json(
                HTTPStatus.OK, {**base, "object": "chat.completion", "choices": choices, "usage": usage}
            )
            return
        self.start_stream("text/event-stream; charset=utf-8")
        chunk = {**base, "object": "chat.completion.chunk"}
        for i, c in enumerate(job.choices):
            self._event({**chunk, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""}}]})
            for delta in c["deltas"]:
                self._event({**chunk, "choices": [{"index": i, "delta": {"content": delta}}]})
            self._event(
                {**chunk, "choices": [{"index": i, "delta": {}, "finish_reason": c["finish_reason"]}]}
            )
        if req["include_usage"]:
            self._event({**chunk, "choices": [], "usage": usage})
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()

    def _event(self, obj: dict) -> None:
        self.wfile.write(f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode())


def start_model_server(
    model_dir: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    name: str | None = None,
    token: str | None = None,
    allowed_hosts: tuple[str, ...] = (),
    max_batch: int = MAX_BATCH,
    request_timeout_s: float = REQUEST_TIMEOUT_S,
) -> ModelAPIServer:
    """Load the model and serve it in a background thread; `.shutdown()` and `.server_close()` stop it."""
    chat = load_chat_model(model_dir)
    try:
        server = ModelAPIServer(
            (host, port),
            chat,
            name=name or Path(model_dir).resolve().name,
            token=token,
            allowed_hosts=allowed_hosts,
            max_batch=max_batch,
            request_timeout_s=request_timeout_s,
        )
    except OSError as e:
        raise ModelError(
            f"serve-model: cannot listen on {host}:{port} ({e.strerror}); use another --port"
        ) from None
    threading.Thread(target=server.serve_forever, name="zhufu-serve-model-http", daemon=True).start()
    return server


# ---------------------------------------------------------------------------------------------------------
# CLI: zhufu serve-model


def add_serve_model_arguments(parser) -> None:
    parser.add_argument("model", help="a Hugging Face model directory (e.g. results/model/merged)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8001, help="port (default: 8001; 0 picks a free one)")
    parser.add_argument("--name", help="the model's name in /v1/models (default: the directory's name)")
    parser.add_argument(
        "--token",
        default=None,
        help=f"require this bearer token (default: ${TOKEN_ENV}); required for a non-loopback --host",
    )
    parser.add_argument(
        "--allow-host", action="append", default=[], help="another Host name the API may be reached by"
    )
    parser.add_argument(
        "--max-batch", type=int, default=MAX_BATCH, help="most rows (choices) in one generate call"
    )


def run_serve_model(args) -> int:
    token = args.token or os.environ.get(TOKEN_ENV) or None
    if args.max_batch < 1:
        raise ModelError("serve-model: --max-batch must be at least 1")
    chat = load_chat_model(args.model)
    name = args.name or Path(args.model).resolve().name
    try:
        server = ModelAPIServer(
            (args.host, args.port),
            chat,
            name=name,
            token=token,
            allowed_hosts=tuple(args.allow_host),
            max_batch=args.max_batch,
        )
    except OSError as e:
        raise ModelError(
            f"serve-model: cannot listen on {args.host}:{args.port} ({e.strerror}); use another --port"
        ) from None
    loopback = args.host in LOOPBACK or args.host == "::1"
    auth = "a bearer token is required" if token else "no token" + ("" if loopback else " (!)")
    return serve_until_interrupted(
        server, f"zhufu serve-model: {name} at {server.base_url} (OpenAI-compatible; {auth})"
    )
