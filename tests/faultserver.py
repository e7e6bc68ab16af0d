"""A real HTTP/1.1 server on 127.0.0.1 that answers like an LLM endpoint and misbehaves on purpose.

It speaks OpenAI's ``POST /v1/chat/completions`` and ZhipuAI's ``POST /api/paas/v4/chat/completions``
and injects, at configured rates: 429 with Retry-After, 500, 503, slow responses (longer than the client's
timeout), dropped connections, empty content and malformed JSON. It counts requests and successful
answers per unique prompt, so a test can assert that no answer was ever paid for twice. An answer is counted
as successful when it is written to a connection the client still holds open (a client that gave up on a
slow answer, or was killed, has closed it: that request is counted as "abandoned").

In-process (tests)::

    with FaultServer(rates=uniform_faults(0.05), latency=0.2) as server:
        server.url          # http://127.0.0.1:PORT/v1   (server.zhipu_url for ZhipuAI)
        server.stats()      # {"requests":…, "successes":…, "repeated_successes":…, "faults": {…}}

Out of process (bench, kill tests): ``python tests/faultserver.py --latency 0.2 --fault-rate 0.05`` prints
its URL on the first line; ``GET /stats`` returns the stats and ``POST /control`` with JSON
``{"hold": true}`` / ``{"rates": {...}}`` / ``{"latency": 0.1}`` changes its behaviour.

A held server accepts requests and never answers them (until released): a kill -9 during a hold lands
while calls are in flight, with every answer the client has received already delivered.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import random
import threading
import time
from collections import Counter

FAULT_KINDS = ("429", "500", "503", "slow", "drop", "empty", "malformed")
PHRASES = (
    "愿您岁岁平安，万事顺意！",
    "祝福您身体健康，笑口常开。",
    "新的一年，愿好运常伴左右🌟",
    "愿您前程似锦，步步高升呀！",
    "恭喜恭喜，幸福美满，吉祥如意。",
)


def uniform_faults(total: float, kinds: tuple[str, ...] = FAULT_KINDS) -> dict[str, float]:
    """`total` fault probability per request, split evenly over `kinds`."""
    return {k: total / len(kinds) for k in kinds}


class FaultServer:
    def __init__(
        self,
        *,
        rates: dict[str, float] | None = None,
        latency: float = 0.0,
        retry_after: float = 0.05,
        slow_s: float = 3.0,
        api_key: str | None = None,
        seed: int = 0,
        port: int = 0,
    ):
        self.rates = dict(rates or {})
        self.latency = latency
        self.retry_after = retry_after
        self.slow_s = slow_s
        self.api_key = api_key
        self.port = port
        self.rng = random.Random(seed)
        self.hold = False
        self.script: list[str | None] = []  # faults for the next requests, in order, before `rates` apply
        self.poison: dict[str, str] = {}  # substring of a prompt -> the fault it always gets
        self.request_times: list[float] = []  # time.monotonic() as each request is handled
        self.requests = 0
        self.successes = 0
        self.paths: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.requests_per_prompt: Counter[str] = Counter()
        self.successes_per_prompt: Counter[str] = Counter()
        self.last_body: dict | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._ready = threading.Event()

    # ------------------------------------------------------------------ public

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base}/v1"

    @property
    def zhipu_url(self) -> str:
        return f"{self.base}/api/paas/v4"

    def stats(self) -> dict:
        return {
            "requests": self.requests,
            "successes": self.successes,
            "unique_prompts": len(self.requests_per_prompt),
            "unique_successes": len(self.successes_per_prompt),
            "repeated_successes": sum(c - 1 for c in self.successes_per_prompt.values() if c > 1),
            "max_successes_per_prompt": max(self.successes_per_prompt.values(), default=0),
            "faults": dict(self.faults),
            "paths": dict(self.paths),
        }

    def start(self) -> FaultServer:
        self._thread = threading.Thread(target=self._serve_forever, daemon=True, name="faultserver")
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop and self._server:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(5)
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread:
            self._thread.join(5)

    async def _shutdown(self) -> None:
        self._server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ serving

    def _serve_forever(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(self.serve())
        self._ready.set()
        self._loop.run_forever()

    async def serve(self) -> None:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", self.port, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", 0) or 0))
                keep = await self._handle(method, path.split("?")[0], headers, body, writer, reader)
                if not keep:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            return  # CancelledError: shutting down (3.11's stream callback would log it as an error)
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _respond(self, writer, status: int, body: bytes, extra: dict | None = None) -> None:
        reason = {200: "OK", 401: "Unauthorized", 404: "Not Found", 429: "Too Many Requests"}.get(
            status, "Error"
        )
        head = [
            f"HTTP/1.1 {status} {reason}",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
        ]
        head += [f"{k}: {v}" for k, v in (extra or {}).items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        await writer.drain()

    async def _handle(self, method: str, path: str, headers: dict, body: bytes, writer, reader) -> bool:
        if method == "GET" and path == "/stats":
            await self._respond(writer, 200, json.dumps(self.stats()).encode())
            return True
        if method == "POST" and path == "/control":
            ctl = json.loads(body or b"{}")
            for k in ("hold", "rates", "latency", "retry_after", "slow_s"):
                if k in ctl:
                    setattr(self, k, ctl[k])
            await self._respond(writer, 200, b"{}")
            return True
        if method != "POST" or path not in ("/v1/chat/completions", "/api/paas/v4/chat/completions"):
            await self._respond(writer, 404, json.dumps({"error": {"message": f"no route {path}"}}).encode())
            return True
        self.paths[path] += 1
        self.requests += 1
        if self.api_key is not None and headers.get("authorization") != f"Bearer {self.api_key}":
            self.faults["401"] += 1
            await self._respond(writer, 401, b'{"error": {"message": "invalid api key", "code": "401"}}')
            return True
        request = json.loads(body)
        self.last_body = request
        prompt_key = hashlib.sha256(
            json.dumps(request["messages"], ensure_ascii=False, sort_keys=True).encode()
        ).hexdigest()
        self.requests_per_prompt[prompt_key] += 1
        while self.hold and not self._gone(reader, writer):
            await asyncio.sleep(0.05)
        if self.latency:
            await asyncio.sleep(self.latency)
        self.request_times.append(time.monotonic())
        text = json.dumps(request["messages"], ensure_ascii=False)
        poisoned = next((f for sub, f in self.poison.items() if sub in text), None)
        fault = poisoned or (self.script.pop(0) if self.script else self._draw_fault())
        if fault:
            self.faults[fault] += 1
        if fault == "slow":
            await asyncio.sleep(self.slow_s)  # a client that timed out has closed the connection by now
        if self._gone(reader, writer):
            self.faults["abandoned"] += 1  # the client went away (killed, timed out): nothing is delivered
            return False
        if fault == "drop":
            writer.transport.abort()
            return False
        if fault == "429":
            await self._respond(
                writer, 429, b'{"error": {"message": "rate limited"}}', {"Retry-After": self.retry_after}
            )
            return True
        if fault == "400":  # a content filter: the same prompt is rejected every time
            await self._respond(
                writer, 400, b'{"error": {"message": "Content Exists Risk", "type": "invalid_request_error"}}'
            )
            return True
        if fault in ("500", "503"):
            await self._respond(writer, int(fault), b'{"error": {"message": "server error"}}')
            return True
        if fault == "malformed":
            await self._respond(writer, 200, b'{"id": "chatcmpl-broken", "choices": [{"index": 0, "mess')
            return True
        content = "" if fault == "empty" else self._answer(prompt_key)
        prompt_tokens = sum(len(m.get("content") or "") for m in request["messages"])
        payload = {
            "id": f"chatcmpl-{self.requests}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.get("model", "fault-model"),
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": len(content),
                "total_tokens": prompt_tokens + len(content),
            },
        }
        await self._respond(writer, 200, json.dumps(payload, ensure_ascii=False).encode())
        if fault in (None, "slow"):  # a slow answer the client still waited for is delivered, and paid
            self.successes += 1
            self.successes_per_prompt[prompt_key] += 1
        return True

    @staticmethod
    def _gone(reader, writer) -> bool:
        return reader.at_eof() or reader.exception() is not None or writer.transport.is_closing()

    def _draw_fault(self) -> str | None:
        x = self.rng.random()
        for kind, rate in self.rates.items():
            if x < rate:
                return kind
            x -= rate
        return None

    @staticmethod
    def _answer(prompt_key: str) -> str:
        return PHRASES[int(prompt_key[:8], 16) % len(PHRASES)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.0)
    ap.add_argument(
        "--fault-rate", type=float, default=0.0, help="total fault probability, split over all kinds"
    )
    ap.add_argument("--retry-after", type=float, default=0.05)
    ap.add_argument("--slow-s", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    server = FaultServer(
        rates=uniform_faults(args.fault_rate) if args.fault_rate else {},
        latency=args.latency,
        retry_after=args.retry_after,
        slow_s=args.slow_s,
        seed=args.seed,
        port=args.port,
    )

    async def run() -> None:
        await server.serve()
        print(server.url, flush=True)
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


if __name__ == "__main__":
    main()
