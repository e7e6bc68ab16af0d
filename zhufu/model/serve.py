"""`zhufu serve`: a small web demo of the tuned model (one page, no external assets, 127.0.0.1 by default).

- The answer streams as it is generated (POST /api/stream, newline-delimited JSON); POST /api/chat answers
  in one piece.
- Recipient, scene and style can be picked from the config's lists or typed freely; "再来一条" samples again.
- The page draws Chinese with the CJK font the project ships (resources/fonts), served at /font.ttf and used
  through @font-face, so it does not depend on the system's fonts.

Misuse it refuses (the checks of zhufu.web, with a body of at most MAX_BODY_BYTES that arrives within
BODY_TIMEOUT_S): another Host → 421, a cross-origin POST → 403, not `application/json` → 415, no
Content-Length → 411, too large → 413, too slow or short → 408; and more than MAX_WAITING requests queued
for the model → 503. Everything it inserts into the page is escaped.
"""

from __future__ import annotations

import html
import json
import logging
import threading
from http import HTTPStatus
from pathlib import Path

from zhufu.config import load_config
from zhufu.fonts import FONT_PATH
from zhufu.model.chat import load_chat_model, reply, reply_stream
from zhufu.web import LocalHandler, LocalServer, Refused, serve_until_interrupted

log = logging.getLogger(__name__)

MAX_INPUT_CHARS = 200
MAX_BODY_BYTES = 4096
BODY_TIMEOUT_S = 5.0
MAX_WAITING = 32
AGAIN_TEMPERATURE = 0.7

PAGE = """<!doctype html>
<html lang="zh">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Zhufu 祝福</title>
<style>
  @font-face { font-family: "ZhufuCJK"; src: url("/font.ttf") format("truetype"); font-display: block; }
  body { font-family: "ZhufuCJK", sans-serif; max-width: 44rem; margin: 2rem auto;
         padding: 0 1rem; color: #222; }
  h1 { font-size: 1.6rem; } .hint { color: #666; font-size: .9rem; }
  form { display: flex; flex-wrap: wrap; gap: .5rem; } input, button { font: inherit; padding: .5rem; }
  #text { flex: 1 1 100%; } .pick { flex: 1 1 8rem; }
  #answer { margin-top: 1.5rem; font-size: 1.2rem; min-height: 2rem; white-space: pre-wrap; }
  #error { color: #b00020; }
</style>
</head>
<body>
<h1>祝福 Zhufu</h1>
<p class="hint">模型 Model: <code id="model">__MODEL__</code>。选对象、场景、风格，或直接输入。</p>
<form id="ask">
  <input class="pick" id="recipient" list="recipients" placeholder="对象 姐姐">
  <input class="pick" id="scene" list="scenes" placeholder="场景 生日">
  <input class="pick" id="style" list="styles" placeholder="风格 小红书">
  <input id="text" name="text" maxlength="__MAX__" placeholder="祝姐姐生日快乐，小红书风格" autofocus required>
  <button id="send" type="submit">送祝福</button>
  <button id="again" type="button" disabled>再来一条</button>
</form>
<datalist id="recipients"></datalist><datalist id="scenes"></datalist><datalist id="styles"></datalist>
<div id="answer" aria-live="polite"></div>
<div id="error" role="alert"></div>
<script id="lists" type="application/json">__LISTS__</script>
<script>
const lists = JSON.parse(document.getElementById("lists").textContent);
for (const [id, values] of [["recipients", lists.recipients], ["scenes", lists.scenes],
                            ["styles", Object.keys(lists.styles)]]) {
  const dl = document.getElementById(id);
  for (const v of values) { const o = document.createElement("option"); o.value = v; dl.appendChild(o); }
}
function compose() {
  const r = document.getElementById("recipient").value.trim();
  const s = document.getElementById("scene").value.trim();
  const st = document.getElementById("style").value.trim();
  if (!r && !s) { return; }
  let text = "祝" + r + s;
  const trigger = st in lists.styles ? lists.styles[st] : (st ? st + "风格" : null);
  if (trigger) { text += lists.separator + trigger; }
  document.getElementById("text").value = text;
}
for (const id of ["recipient", "scene", "style"]) {
  document.getElementById(id).addEventListener("input", compose);
}
let last = null, tries = 0;
async function ask(text, again) {
  const buttons = [document.getElementById("send"), document.getElementById("again")];
  const answer = document.getElementById("answer");
  const error = document.getElementById("error");
  buttons.forEach((b) => { b.disabled = true; });
  answer.textContent = "…"; error.textContent = ""; answer.dataset.done = "";
  tries = again ? tries + 1 : 0;
  try {
    const response = await fetch("/api/stream", {
      method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({text: text, again: again, seed: tries}),
    });
    if (!response.ok) {
      const body = await response.json();
      throw new Error(body.error || response.statusText);
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "", shown = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) { break; }
      buffer += decoder.decode(value, {stream: true});
      let nl;
      while ((nl = buffer.indexOf("\\n")) >= 0) {
        const event = JSON.parse(buffer.slice(0, nl)); buffer = buffer.slice(nl + 1);
        if (event.delta !== undefined) { shown += event.delta; answer.textContent = shown; }
        if (event.error) { throw new Error(event.error); }
        if (event.done) { answer.textContent = event.output; }
      }
    }
    last = text;
  } catch (e) {
    answer.textContent = ""; error.textContent = String(e.message || e);
  } finally {
    answer.dataset.done = "1";
    document.getElementById("send").disabled = false;
    document.getElementById("again").disabled = last === null;
  }
}
document.getElementById("ask").addEventListener("submit", (event) => {
  event.preventDefault();
  ask(document.getElementById("text").value, false);
});
document.getElementById("again").addEventListener("click", () => { if (last !== null) { ask(last, true); } });
</script>
</body>
</html>
"""


def page_html(label: str, lists: dict) -> bytes:
    """The page, with the model label escaped for HTML and the lists as JSON that cannot close the script."""
    data = json.dumps(lists, ensure_ascii=False).replace("<", "\\u003c").replace(">", "\\u003e")
    data = data.replace("&", "\\u0026")
    return (
        PAGE.replace("__MODEL__", html.escape(label or "model"))
        .replace("__MAX__", str(MAX_INPUT_CHARS))
        .replace("__LISTS__", data)
        .encode("utf-8")
    )


def demo_lists(config: dict | None) -> dict:
    """The recipient, scene and style lists the page offers (style -> its trigger, null for none)."""
    if not config:
        return {"recipients": [], "scenes": [], "styles": {}, "separator": "，"}
    return {
        "recipients": list(config["grid"]["recipients"]),
        "scenes": list(config["grid"]["scenes"]),
        "styles": {name: st.get("trigger") for name, st in config["styles"].items()},
        "separator": config.get("trigger_separator", "，"),
    }


class DemoServer(LocalServer):
    """The demo's server: the model, one generation at a time, at most MAX_WAITING requests waiting."""

    def __init__(
        self, address, chat, *, page: bytes, allowed_hosts=(), body_timeout_s=BODY_TIMEOUT_S, **reply_kwargs
    ):
        self.chat = chat
        self.page = page
        self.font = Path(FONT_PATH).read_bytes() if Path(FONT_PATH).is_file() else None
        self.reply_kwargs = reply_kwargs
        self.lock = (
            threading.Lock()
        )  # one generation at a time: the model is not shared across threads safely
        self.waiting = threading.BoundedSemaphore(MAX_WAITING)
        super().__init__(
            address,
            DemoHandler,
            allowed_hosts=allowed_hosts,
            max_body_bytes=MAX_BODY_BYTES,
            body_timeout_s=body_timeout_s,
        )


class DemoHandler(LocalHandler):
    """GET / (the page), GET /font.ttf, GET /healthz, POST /api/chat and POST /api/stream."""

    server: DemoServer

    def get(self, route: str) -> None:
        if route in ("/", "/index.html"):
            self.send_page(self.server.page)
        elif route == "/font.ttf" and self.server.font is not None:
            self.send_body(HTTPStatus.OK, self.server.font, "font/ttf", {"Cache-Control": "max-age=86400"})
        elif route == "/healthz":
            self.send_json(HTTPStatus.OK, {"ok": True})
        else:
            super().get(route)

    def _request(self) -> dict:
        """The checked JSON body of a POST: {"text", "again", "seed"}."""
        body = self.read_json('the request body must be JSON like {"text": "…"}')
        text = body.get("text") if isinstance(body, dict) else None
        text = text.strip() if isinstance(text, str) else ""
        if not text:
            raise Refused(HTTPStatus.BAD_REQUEST, "请输入祝福对象和场景 (the text is empty)")
        if len(text) > MAX_INPUT_CHARS:
            raise Refused(HTTPStatus.BAD_REQUEST, f"the text is longer than {MAX_INPUT_CHARS} characters")
        seed = body.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**31:
            raise Refused(HTTPStatus.BAD_REQUEST, "seed must be a whole number ≥ 0")
        return {"text": text, "again": body.get("again") is True, "seed": seed}

    def _kwargs(self, req: dict) -> dict:
        kwargs = dict(self.server.reply_kwargs)
        if req["again"]:  # "another one": sample, whatever the default decoding
            kwargs["temperature"] = kwargs.get("temperature") or AGAIN_TEMPERATURE
            kwargs["seed"] = req["seed"]
        return kwargs

    def do_POST(self):
        if self.path not in ("/api/chat", "/api/stream"):
            self.refuse(Refused(HTTPStatus.NOT_FOUND, "no such endpoint"))
            return
        try:
            req = self._request()
        except Refused as e:
            self.refuse(e)
            return
        if not self.server.waiting.acquire(blocking=False):
            self.send_json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "too many requests waiting; try again"})
            return
        try:
            if self.path == "/api/chat":
                with self.server.lock:
                    output = reply(self.server.chat, req["text"], **self._kwargs(req))
                self.send_json(HTTPStatus.OK, {"input": req["text"], "output": output})
            else:
                self._stream(req)
        finally:
            self.server.waiting.release()

    def _stream(self, req: dict) -> None:
        self.start_stream()
        pieces = []
        with self.server.lock:
            for piece in reply_stream(self.server.chat, req["text"], **self._kwargs(req)):
                if piece:
                    pieces.append(piece)
                    self.stream_json({"delta": piece})
        self.stream_json({"done": True, "input": req["text"], "output": "".join(pieces).strip()})


def make_server(
    chat,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    label: str = "",
    config: dict | None = None,
    allowed_hosts: tuple[str, ...] = (),
    body_timeout_s: float = BODY_TIMEOUT_S,
    **reply_kwargs,
) -> DemoServer:
    """The demo's server for a loaded chat model, bound to host:port (0 picks a free port)."""
    page = page_html(label, demo_lists(config))
    return DemoServer(
        (host, port),
        chat,
        page=page,
        allowed_hosts=allowed_hosts,
        body_timeout_s=body_timeout_s,
        **reply_kwargs,
    )


def add_serve_arguments(parser) -> None:
    parser.add_argument(
        "model", help="merged model directory (e.g. results/model/merged), or the base model with --adapter"
    )
    parser.add_argument("--adapter", help="a HF LoRA adapter directory to load on top of MODEL")
    parser.add_argument("--config", help="config whose recipients, scenes and styles the page offers")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860; 0 picks a free one)")
    parser.add_argument(
        "--allow-host", action="append", default=[], help="another Host name the page may be reached by"
    )
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")


def run_serve(args) -> int:

    config = load_config(args.config)
    chat = load_chat_model(args.model, adapter=args.adapter)
    server = make_server(
        chat,
        args.host,
        args.port,
        label=str(args.model),
        config=config,
        allowed_hosts=tuple(args.allow_host),
        system=config["system_prompt"],
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
    )
    host, port = server.server_address[:2]
    return serve_until_interrupted(server, f"zhufu serve: http://{host}:{port}/")
