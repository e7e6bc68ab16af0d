"""The offline teacher's Batch API: OpenAI's files + batches protocol, answered from the same phrase bank as
its chat-completion endpoint (zhufu.teacher.server), so a batch run's shards equal a direct run's.

Endpoints (also under `/api/paas/v4` for the zhipuai SDK, and without `/v1`):
- `POST /v1/files` (multipart: `file`, `purpose=batch`) -> a file object
- `GET /v1/files/{id}/content` -> the file's bytes (an input, output or error JSONL)
- `POST /v1/batches` {input_file_id, endpoint, completion_window} -> a batch, `in_progress`
- `GET /v1/batches/{id}` -> the batch; it completes `batch_delay_s` seconds after its creation
- `POST /v1/batches/{id}/cancel` -> the batch, `cancelled` (no output) unless it had completed
- `POST /zhufu/control` {expire_share, error_every}: batches created from then on expire with that share
  of their lines unanswered (in the error file, code `batch_expired`), and every `error_every`-th line is
  an error line (a 500 in the error file); {} resets both.

It counts what it did for `/zhufu/stats`: files, batches, batch_lines, batch_answers and batch_repeats
(a custom_id answered a second time, over all batches: a request paid twice).
"""

from __future__ import annotations

import json
import math
import threading
import time
import uuid
from collections.abc import Callable

from zhufu.web import Refused

PREFIXES = ("/v1", "", "/api/paas/v4")
CHAT_ENDPOINTS = {"/v1/chat/completions", "/chat/completions", "/v4/chat/completions"}
MAX_UPLOAD_BYTES = 256 << 20  # above batch_options.max_bytes' default (100 MB)


def _strip(route: str) -> str | None:
    """The route without its API prefix (`/files`, `/batches/x`), or None when it is not a batch route."""
    for prefix in PREFIXES:
        if route.startswith(prefix + "/files") or route.startswith(prefix + "/batches"):
            return route[len(prefix) :]
    return None


class BatchStore:
    """Files and batches in memory; `complete(body)` answers one chat-completion body (or raises Refused)."""

    def __init__(self, complete: Callable[[dict], dict], delay_s: float = 1.0):
        self.complete = complete
        self.delay_s = delay_s
        self.files: dict[str, dict] = {}
        self.content: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.control = {"expire_share": 0.0, "error_every": 0}
        self.answered: set[str] = set()
        self.counts = {"files": 0, "batches": 0, "batch_lines": 0, "batch_answers": 0, "batch_repeats": 0}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------------------ files

    def add_file(self, data: bytes, filename: str, purpose: str) -> dict:
        fid = f"file-{uuid.uuid4().hex[:24]}"
        obj = {
            "id": fid,
            "object": "file",
            "bytes": len(data),
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
        }
        with self._lock:
            self.files[fid] = obj
            self.content[fid] = data
            if purpose == "batch":
                self.counts["files"] += 1
        return obj

    # ------------------------------------------------------------------------------------------ batches

    def create(self, body: object) -> dict:
        if not isinstance(body, dict) or not isinstance(body.get("input_file_id"), str):
            raise Refused(400, "'input_file_id' is required", param="input_file_id")
        fid = body["input_file_id"]
        if fid not in self.files:
            raise Refused(404, f"no such file: {fid}", "not_found", "input_file_id")
        if body.get("endpoint") not in CHAT_ENDPOINTS:
            raise Refused(400, f"unsupported endpoint {body.get('endpoint')!r}", param="endpoint")
        lines = []
        for n, raw in enumerate(self.content[fid].decode("utf-8").splitlines(), 1):
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
            except json.JSONDecodeError:
                raise Refused(400, f"input file line {n} is not JSON", param="input_file_id") from None
            if not isinstance(line, dict) or not isinstance(line.get("custom_id"), str):
                raise Refused(400, f"input file line {n} has no custom_id", param="input_file_id")
            lines.append(line)
        bid = f"batch_{uuid.uuid4().hex[:24]}"
        now = int(time.time())
        batch = {
            "id": bid,
            "object": "batch",
            "endpoint": body["endpoint"],
            "errors": None,
            "input_file_id": fid,
            "completion_window": body.get("completion_window") or "24h",
            "status": "in_progress",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": now,
            "in_progress_at": now,
            "expires_at": now + 86400,
            "completed_at": None,
            "expired_at": None,
            "cancelled_at": None,
            "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
            "metadata": body.get("metadata"),
        }
        with self._lock:
            self.batches[bid] = {
                "obj": batch,
                "lines": lines,
                "ready": time.monotonic() + self.delay_s,
                "control": dict(self.control),
            }
            self.counts["batches"] += 1
            self.counts["batch_lines"] += len(lines)
        return batch

    def _entry(self, bid: str) -> dict:
        entry = self.batches.get(bid)
        if entry is None:
            raise Refused(404, f"no such batch: {bid}", "not_found")
        return entry

    def retrieve(self, bid: str) -> dict:
        with self._lock:
            entry = self._entry(bid)
            if entry["obj"]["status"] == "in_progress" and time.monotonic() >= entry["ready"]:
                self._finish(entry)
            return entry["obj"]

    def cancel(self, bid: str) -> dict:
        with self._lock:
            entry = self._entry(bid)
            obj = entry["obj"]
            if obj["status"] == "in_progress":
                obj["status"] = "cancelled"
                obj["cancelled_at"] = int(time.time())
            return obj

    def _finish(self, entry: dict) -> None:
        """Answer the batch's lines (under the lock): the output and error files, the final status."""
        obj, lines, control = entry["obj"], entry["lines"], entry["control"]
        answered_n = len(lines) - math.floor(len(lines) * control["expire_share"])
        out, err = [], []
        for i, line in enumerate(lines):
            rid = f"batch_req_{uuid.uuid4().hex[:16]}"
            cid = line["custom_id"]
            if i >= answered_n:
                err.append(
                    {
                        "id": rid,
                        "custom_id": cid,
                        "response": None,
                        "error": {
                            "code": "batch_expired",
                            "message": "the batch expired before this request ran",
                        },
                    }
                )
                continue
            every = control["error_every"]
            if every and (i + 1) % every == 0:
                body = {
                    "error": {
                        "message": "injected error line",
                        "type": "server_error",
                        "code": "server_error",
                    }
                }
                err.append(
                    {
                        "id": rid,
                        "custom_id": cid,
                        "response": {"status_code": 500, "body": body},
                        "error": None,
                    }
                )
                continue
            try:
                payload = self.complete(line.get("body"))
            except Refused as e:
                body = {"error": {"message": e.message, "type": "invalid_request_error", "code": e.code}}
                err.append(
                    {
                        "id": rid,
                        "custom_id": cid,
                        "response": {"status_code": e.status, "body": body},
                        "error": None,
                    }
                )
                continue
            out.append(
                {
                    "id": rid,
                    "custom_id": cid,
                    "response": {"status_code": 200, "request_id": rid, "body": payload},
                    "error": None,
                }
            )
            self.counts["batch_answers"] += 1
            if cid in self.answered:
                self.counts["batch_repeats"] += 1
            self.answered.add(cid)
        for name, rows in (("output_file_id", out), ("error_file_id", err)):
            if rows:
                data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
                fid = f"file-{uuid.uuid4().hex[:24]}"
                self.files[fid] = {"id": fid, "object": "file", "bytes": len(data), "purpose": "batch_output"}
                self.content[fid] = data
                obj[name] = fid
        now = int(time.time())
        obj["request_counts"] = {"total": len(lines), "completed": len(out), "failed": len(err)}
        if answered_n < len(lines):
            obj["status"], obj["expired_at"] = "expired", now
        else:
            obj["status"], obj["completed_at"] = "completed", now

    def set_control(self, body: object) -> dict:
        if not isinstance(body, dict):
            raise Refused(400, "the control body must be a JSON object")
        share = body.get("expire_share", 0.0)
        every = body.get("error_every", 0)
        if not isinstance(share, int | float) or not 0 <= share <= 1:
            raise Refused(400, "'expire_share' must be a number from 0 to 1", param="expire_share")
        if not isinstance(every, int) or isinstance(every, bool) or every < 0:
            raise Refused(400, "'error_every' must be an integer, 0 or more", param="error_every")
        with self._lock:
            self.control = {"expire_share": float(share), "error_every": every}
            return dict(self.control)

    def stats(self) -> dict:
        with self._lock:
            return dict(self.counts)


def handle_get(handler, store: BatchStore, route: str) -> bool:
    """Answer `GET .../files/{id}/content` or `GET .../batches/{id}`; False when the route is not one."""
    sub = _strip(route)
    if sub is None:
        return False
    parts = sub.strip("/").split("/")
    try:
        if len(parts) == 3 and parts[0] == "files" and parts[2] == "content":
            if parts[1] not in store.content:
                raise Refused(404, f"no such file: {parts[1]}", "not_found")
            handler.send_body(200, store.content[parts[1]], "application/octet-stream")
        elif len(parts) == 2 and parts[0] == "batches":
            handler.send_json(200, store.retrieve(parts[1]))
        else:
            raise Refused(404, f"no such endpoint: GET {route}", "not_found")
    except Refused as e:
        handler.send_json(e.status, handler.error_body(e))
    return True


def handle_post(handler, store: BatchStore, route: str) -> bool:
    """Answer the batch API's POSTs and `/zhufu/control`; False when the route is not one of them."""
    if route in ("/zhufu/control", "/v1/zhufu/control"):
        handler.send_json(200, store.set_control(handler.read_json()))
        return True
    sub = _strip(route)
    if sub is None:
        return False
    parts = sub.strip("/").split("/")
    if parts == ["files"]:
        fields = handler.read_multipart(MAX_UPLOAD_BYTES)
        if "file" not in fields:
            raise Refused(400, "the upload has no 'file' part", param="file")
        purpose = (fields.get("purpose") or (None, b""))[1].decode("utf-8", "replace")
        if purpose != "batch":
            raise Refused(400, f"purpose must be 'batch', not {purpose!r}", param="purpose")
        filename, data = fields["file"]
        handler.send_json(200, store.add_file(data, filename or "upload.jsonl", purpose))
    elif parts == ["batches"]:
        handler.send_json(200, store.create(handler.read_json()))
    elif len(parts) == 3 and parts[0] == "batches" and parts[2] == "cancel":
        handler.check_host()
        handler.check_origin()
        length = (handler.headers.get("Content-Length") or "0").strip()
        if length.isdigit() and 0 < int(length) <= 1 << 16:  # the SDKs send none, or an empty object
            handler.rfile.read(int(length))
        handler._body_read = True
        handler.send_json(200, store.cancel(parts[1]))
    else:
        raise Refused(404, f"no such endpoint: POST {route}", "not_found")
    return True
