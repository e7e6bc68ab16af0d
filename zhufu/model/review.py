"""`zhufu review`: judge the cleaned records by hand in a local web page; decisions feed back into `clean`.

The page (127.0.0.1) lists every record of merged.json with the cleaner's verdict from clean_report.json:
kept, repaired (before/after) or dropped (rule and detail). Filters: style, scene, recipient, rule,
verdict. Keys: a accept, r reject, e edit, j/k next/previous. Each decision is written at once to the
decisions file (`zhufu.data.decisions`, which `clean` reads; default review/decisions.jsonl).
"""

from __future__ import annotations

import html
import threading
from http import HTTPStatus
from pathlib import Path

from zhufu.data.decisions import DECISIONS, load_decisions, record_text, review_rows, save_decision
from zhufu.errors import DataError
from zhufu.fonts import FONT_PATH
from zhufu.io import read_json
from zhufu.web import LocalHandler, LocalServer, Refused, serve_until_interrupted

MAX_BODY_BYTES = 64 * 1024
BODY_TIMEOUT_S = 10.0


# ------------------------------------------------------------------------------------- the page

PAGE = """<!doctype html>
<html lang="zh"><head><meta charset="utf-8"><title>Zhufu review</title>
<style>
 @font-face { font-family: "ZhufuCJK"; src: url("/font.ttf") format("truetype"); }
 body { font-family: "ZhufuCJK", sans-serif; margin: 1rem; } .filters select { margin-right: .5rem; }
 table { border-collapse: collapse; width: 100%; } td, th { border-bottom: 1px solid #ddd; padding: .3rem;
 vertical-align: top; text-align: left; } tr.current { outline: 2px solid #2b8cbe; }
 .dropped { color: #b00020; } .repaired { color: #9a6700; } .kept { color: #1a7f37; }
 del { color: #888; } #progress { font-weight: bold; }
</style></head><body>
<h1>Zhufu review: __SOURCE__</h1>
<p>Keys: <b>a</b> accept, <b>r</b> reject, <b>e</b> edit, <b>j</b>/<b>k</b> next/previous.
Decisions: <code>__DECISIONS__</code>. <span id="progress"></span></p>
<div class="filters">
 <select id="f-style"></select><select id="f-scene"></select><select id="f-recipient"></select>
 <select id="f-rule"></select><select id="f-verdict"></select>
</div>
<table><thead><tr><th>id</th><th>input</th><th>verdict</th><th>text</th><th>decision</th></tr></thead>
<tbody id="rows"></tbody></table>
<script>
let rows = [], shown = [], current = 0;
const keys = ["style", "scene", "recipient", "rule", "verdict"];
function values(key) {
  const all = rows.flatMap((r) => key === "rule" ? r.rules : [r[key]]).filter((v) => v);
  return [...new Set(all)].sort();
}
function cell(text) { const td = document.createElement("td"); td.textContent = text; return td; }
function render() {
  const f = Object.fromEntries(keys.map((k) => [k, document.getElementById("f-" + k).value]));
  shown = rows.filter((r) => keys.every((k) => !f[k] || (k === "rule" ? r.rules.includes(f[k]) : r[k] === f[k])));
  current = Math.min(current, Math.max(0, shown.length - 1));
  const body = document.getElementById("rows"); body.textContent = "";
  shown.forEach((r, i) => {
    const tr = document.createElement("tr"); tr.dataset.id = r.id; if (i === current) tr.className = "current";
    tr.appendChild(cell(r.id.slice(0, 8))); tr.appendChild(cell(r.input));
    const v = cell(r.verdict + (r.rules.length ? " (" + r.rules.join(", ") + ")" : "") + (r.detail ? ": " + r.detail : ""));
    v.className = r.verdict; tr.appendChild(v);
    const t = document.createElement("td");
    if (r.verdict === "repaired") { const d = document.createElement("del"); d.textContent = r.before;
      t.appendChild(d); t.appendChild(document.createElement("br")); }
    t.appendChild(document.createTextNode(r.edited || r.after)); tr.appendChild(t);
    const dec = cell(r.decision || ""); dec.className = "decision"; tr.appendChild(dec);
    tr.addEventListener("click", () => { current = i; render(); });
    body.appendChild(tr);
  });
  const judged = rows.filter((r) => r.decision).length;
  document.getElementById("progress").textContent = `${judged} / ${rows.length} judged, ${shown.length} shown`;
}
async function decide(decision) {
  const r = shown[current]; if (!r) return;
  let text = null;
  if (decision === "edit") { text = prompt("编辑 / edit", r.edited || r.after); if (text === null || !text.trim()) return; }
  const response = await fetch("/api/decision", {method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify({id: r.id, decision: decision, text: text})});
  const body = await response.json();
  if (!response.ok) { alert(body.error); return; }
  r.decision = decision; if (text !== null) r.edited = text;
  current = Math.min(current + 1, shown.length - 1); render();
}
document.addEventListener("keydown", (e) => {
  if (e.target.tagName === "SELECT" || e.ctrlKey || e.metaKey || e.altKey) return;
  const action = {a: "accept", r: "reject", e: "edit"}[e.key];
  if (action) { e.preventDefault(); decide(action); }
  else if (e.key === "j") { current = Math.min(current + 1, shown.length - 1); render(); }
  else if (e.key === "k") { current = Math.max(current - 1, 0); render(); }
});
fetch("/api/records").then((r) => r.json()).then((data) => {
  rows = data.records;
  for (const k of keys) {
    const s = document.getElementById("f-" + k);
    for (const v of ["", ...values(k)]) { const o = document.createElement("option"); o.value = v;
      o.textContent = v || "all " + k; s.appendChild(o); }
    s.addEventListener("change", () => { current = 0; render(); });
  }
  render(); document.body.dataset.ready = "1";
});
</script></body></html>
"""


class ReviewServer(LocalServer):
    """The review page's server: the merged records, the report, and the decisions file it writes."""

    def __init__(self, address, merged: str | Path, report: str | Path, decisions_path: str | Path):
        self.merged, self.report, self.decisions_path = merged, report, decisions_path
        self.records = {r["id"]: r for r in read_json(merged)}
        self.lock = threading.Lock()
        self.page = (
            PAGE.replace("__SOURCE__", html.escape(str(merged)))
            .replace("__DECISIONS__", html.escape(str(decisions_path)))
            .encode("utf-8")
        )
        super().__init__(address, ReviewHandler, max_body_bytes=MAX_BODY_BYTES, body_timeout_s=BODY_TIMEOUT_S)


class ReviewHandler(LocalHandler):
    """GET / (the page), GET /font.ttf, GET /api/records and POST /api/decision."""

    server: ReviewServer

    def get(self, route: str) -> None:
        srv = self.server
        if route in ("/", "/index.html"):
            self.send_page(srv.page)
        elif route == "/font.ttf":
            self.send_body(HTTPStatus.OK, Path(FONT_PATH).read_bytes(), "font/ttf")
        elif route == "/api/records":
            rows = review_rows(srv.merged, srv.report, load_decisions(srv.decisions_path))
            self.send_json(HTTPStatus.OK, {"records": rows})
        else:
            super().get(route)

    def do_POST(self):
        if self.path != "/api/decision":
            self.refuse(Refused(HTTPStatus.NOT_FOUND, "no such endpoint: POST /api/decision"))
            return
        try:
            entry = self._decision(self.read_json("the body must be JSON"))
        except Refused as e:
            self.refuse(e)
            return
        with self.server.lock:
            save_decision(self.server.decisions_path, entry)
        self.send_json(HTTPStatus.OK, entry)

    def _decision(self, body: object) -> dict:
        """The decisions file's entry for a checked POST body {id, decision, text}."""
        body = body if isinstance(body, dict) else {}
        record = self.server.records.get(body.get("id"))
        decision, text = body.get("decision"), body.get("text")
        if record is None or decision not in DECISIONS:
            raise Refused(HTTPStatus.BAD_REQUEST, "unknown id or decision")
        if decision == "edit" and not (isinstance(text, str) and text.strip()):
            raise Refused(HTTPStatus.BAD_REQUEST, "an edit needs the new text")
        entry = {"id": record["id"], "decision": decision, "judged": record_text(record)}
        if decision == "edit":
            entry["text"] = text.strip()
        return entry


def make_review_server(
    merged: str | Path, report: str | Path, decisions_path: str | Path, host: str = "127.0.0.1", port: int = 0
) -> ReviewServer:
    return ReviewServer((host, port), merged, report, decisions_path)


def add_review_arguments(parser) -> None:
    parser.add_argument("--merged", default="results/data/merged.json", help="the merged records")
    parser.add_argument("--report", default="results/data/clean_report.json", help="the cleaner's report")
    parser.add_argument("--decisions", default="review/decisions.jsonl", help="where decisions are kept")
    parser.add_argument("--port", type=int, default=7861, help="port on 127.0.0.1 (0 picks a free one)")


def run_review(args) -> int:
    for p in (args.merged, args.report):
        if not Path(p).is_file():
            raise DataError(f"{p}: not found (run `make run` or `snakemake results/data/clean_report.json`)")
    server = make_review_server(args.merged, args.report, args.decisions, "127.0.0.1", args.port)
    return serve_until_interrupted(server, f"zhufu review: http://127.0.0.1:{server.server_address[1]}/")
