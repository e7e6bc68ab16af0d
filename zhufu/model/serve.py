"""`zhufu serve`: a small web demo of the tuned model (one page, no external assets, 127.0.0.1 by default)."""

from __future__ import annotations

import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from zhufu.model.chat import load_chat_model, reply

log = logging.getLogger(__name__)

MAX_INPUT_CHARS = 200

PAGE = """<!doctype html>
<html lang="zh">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Zhufu 祝福</title>
<style>
  body { font-family: "WenQuanYi Micro Hei", "Noto Sans CJK SC", sans-serif; max-width: 40rem; margin: 2rem auto;
         padding: 0 1rem; color: #222; }
  h1 { font-size: 1.6rem; } .hint { color: #666; font-size: .9rem; }
  form { display: flex; gap: .5rem; } input { flex: 1; font-size: 1rem; padding: .5rem; }
  button { font-size: 1rem; padding: .5rem 1rem; }
  #answer { margin-top: 1.5rem; font-size: 1.2rem; min-height: 2rem; white-space: pre-wrap; }
  #error { color: #b00020; }
</style>
</head>
<body>
<h1>祝福 Zhufu</h1>
<p class="hint">Model: <code id="model">__MODEL__</code>. Try 祝妹妹谈判顺利，小红书风格 or 祝领导春节快乐，严肃风格.</p>
<form id="ask">
  <input id="text" name="text" maxlength="__MAX__" placeholder="祝姐姐生日快乐，小红书风格" autofocus required>
  <button id="send" type="submit">送祝福</button>
</form>
<div id="answer" aria-live="polite"></div>
<div id="error" role="alert"></div>
<script>
document.getElementById("ask").addEventListener("submit", async (event) => {
  event.preventDefault();
  const button = document.getElementById("send");
  const answer = document.getElementById("answer");
  const error = document.getElementById("error");
  button.disabled = true; answer.textContent = "…"; error.textContent = "";
  try {
    const response = await fetch("/api/chat", {
      method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({text: document.getElementById("text").value}),
    });
    const body = await response.json();
    if (!response.ok) { throw new Error(body.error || response.statusText); }
    answer.textContent = body.output;
  } catch (e) {
    answer.textContent = ""; error.textContent = String(e.message || e);
  } finally {
    button.disabled = false;
  }
});
</script>
</body>
</html>
"""


def make_server(
    chat, host: str = "127.0.0.1", port: int = 0, *, label: str = "", **reply_kwargs
) -> ThreadingHTTPServer:
    """An HTTP server answering GET / (the page) and POST /api/chat ({"text"} -> {"output"})."""
    lock = threading.Lock()  # one generation at a time: the model is not shared across threads safely
    page = (
        PAGE.replace("__MODEL__", label or "model").replace("__MAX__", str(MAX_INPUT_CHARS)).encode("utf-8")
    )

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt, *args):
            log.info("%s %s", self.address_string(), fmt % args)

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, obj: dict) -> None:
            self._send(
                status, json.dumps(obj, ensure_ascii=False).encode("utf-8"), "application/json; charset=utf-8"
            )

        def do_GET(self):
            if self.path in ("/", "/index.html"):
                self._send(HTTPStatus.OK, page, "text/html; charset=utf-8")
            elif self.path == "/healthz":
                self._json(HTTPStatus.OK, {"ok": True})
            else:
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no such page: {self.path}"})

        def do_POST(self):
            if self.path != "/api/chat":
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: {self.path}"})
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                text = (
                    body["text"].strip()
                    if isinstance(body, dict) and isinstance(body.get("text"), str)
                    else ""
                )
            except (ValueError, UnicodeDecodeError):
                self._json(
                    HTTPStatus.BAD_REQUEST, {"error": 'the request body must be JSON like {"text": "…"}'}
                )
                return
            if not text:
                self._json(HTTPStatus.BAD_REQUEST, {"error": "请输入祝福对象和场景 (the text is empty)"})
                return
            if len(text) > MAX_INPUT_CHARS:
                self._json(
                    HTTPStatus.BAD_REQUEST, {"error": f"the text is longer than {MAX_INPUT_CHARS} characters"}
                )
                return
            with lock:
                output = reply(chat, text, **reply_kwargs)
            self._json(HTTPStatus.OK, {"input": text, "output": output})

    return ThreadingHTTPServer((host, port), Handler)


def add_serve_arguments(parser) -> None:
    parser.add_argument(
        "model", help="merged model directory (e.g. results/model/merged), or the base model with --adapter"
    )
    parser.add_argument("--adapter", help="a HF LoRA adapter directory to load on top of MODEL")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860; 0 picks a free one)")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")


def run_serve(args) -> int:
    chat = load_chat_model(args.model, adapter=args.adapter)
    server = make_server(
        chat,
        args.host,
        args.port,
        label=str(args.model),
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
    )
    host, port = server.server_address[:2]
    print(f"zhufu serve: http://{host}:{port}/ (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
