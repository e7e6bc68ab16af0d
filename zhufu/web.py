"""The local web layer of Zhufu's three servers: the web demo (`zhufu serve`), the review page (`zhufu review`)
and the offline teacher's OpenAI-compatible API (`zhufu serve-teacher`). Each keeps only its routes.

What every request goes through here, so that the three cannot drift apart:

- **Host** (every method): only the names the server is reached by (127.0.0.1, localhost, [::1], the bound
  address and `allowed_hosts`, each with the port), compared case-insensitively; another → 421 (DNS
  rebinding: a page from evil.example that resolves to 127.0.0.1 still sends `Host: evil.example`).
- **Origin** (POST): absent (a program, not a browser) or this server's own; another → 403 (a cross-site POST).
- **The body** (POST): `application/json` only (a form or text/plain, which needs no CORS preflight → 415);
  a Content-Length is required (none, or chunked → 411), a number (→ 400), at most `max_body_bytes`
  (→ 413); a body that stops short or arrives slower than `body_timeout_s` → 408. The socket's time-out
  also drops a client that sends half a request line and then nothing.
- **Replies**: `X-Content-Type-Options: nosniff` on every reply, a Content-Security-Policy on pages (no
  framing, nothing from other origins), JSON as UTF-8 with its length, NDJSON streamed line by line. A
  refused request's small body is read before the connection closes, so the client reads the answer
  instead of a reset.

`Refused(status, message, code)` is how a route refuses a request; `error_body` shapes the error JSON
(`{"error": message}`, or OpenAI's `{"error": {"message", "type", "param", "code"}}` for the teacher).
"""

from __future__ import annotations

import contextlib
import json
import logging
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost", "[::1]")
WILDCARD = ("0.0.0.0", "::", "")
PAGE_CSP = "default-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; frame-ancestors 'none'"


class Refused(Exception):
    """A request refused with an HTTP status and a message for the client (and an API error code)."""

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status = int(status)
        self.message = message
        self.code = code
        self.param = param


class LocalServer(ThreadingHTTPServer):
    """A threaded HTTP server that answers only on its own Host names, with the body limits of its handler."""

    daemon_threads = True
    request_queue_size = 128  # the default 5 resets connections under a burst of requests

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        *,
        allowed_hosts: tuple[str, ...] = (),
        max_body_bytes: int,
        body_timeout_s: float,
    ):
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s
        super().__init__(address, handler)
        host, port = self.server_address[:2]
        names = {*LOOPBACK, *allowed_hosts}
        if address[0] not in WILDCARD:
            names.add(f"[{address[0]}]" if ":" in address[0] else address[0])
        self.hosts = {f"{n}:{port}".lower() for n in names}
        self.origins = {f"http://{h}" for h in self.hosts}


class LocalHandler(BaseHTTPRequestHandler):
    """The checks and replies every Zhufu server shares; a subclass routes `do_GET`/`do_POST`."""

    server: LocalServer

    def setup(self) -> None:
        # the socket's time-out: the request line, the headers, the body, an idle keep-alive connection
        self.timeout = self.server.body_timeout_s
        self._body_read = False
        super().setup()

    def log_message(self, format: str, *args) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    @property
    def route(self) -> str:
        """The request's path without its query string or a trailing slash."""
        return self.path.split("?", 1)[0].rstrip("/") or "/"

    def do_GET(self) -> None:
        try:
            self.check_host()
        except Refused as e:
            self.refuse(e)
            return
        self.get(self.route)

    def get(self, route: str) -> None:
        """Answer a GET whose Host was checked; a subclass serves its pages here."""
        self.send_json(HTTPStatus.NOT_FOUND, self.error_body(Refused(HTTPStatus.NOT_FOUND, "no such page")))

    # ------------------------------------------------------------------------------------------ replies

    def error_body(self, e: Refused) -> dict:
        return {"error": e.message}

    def send_body(
        self, status: int, body: bytes, content_type: str, headers: dict | None = None, *, close: bool = False
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def send_json(self, status: int, obj: dict, *, close: bool = False) -> None:
        data = json.dumps(obj, ensure_ascii=False).encode("utf-8")
        self.send_body(status, data, "application/json; charset=utf-8", close=close)

    def send_page(self, page: bytes) -> None:
        self.send_body(HTTPStatus.OK, page, "text/html; charset=utf-8", {"Content-Security-Policy": PAGE_CSP})

    def refuse(self, e: Refused) -> None:
        """Answer a refused request and close the connection (its body may be unread)."""
        self._discard_body(e.status)
        self.send_json(e.status, self.error_body(e), close=True)

    def start_stream(self, content_type: str = "application/x-ndjson; charset=utf-8") -> None:
        """The headers of a reply streamed until the connection closes."""
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", content_type)
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

    def stream_json(self, obj: dict) -> None:
        """One line of an NDJSON stream, sent at once."""
        self.wfile.write((json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8"))
        self.wfile.flush()

    # ------------------------------------------------------------------------------------------ checks

    def check_host(self) -> None:
        if (self.headers.get("Host") or "").lower() not in self.server.hosts:
            raise Refused(
                HTTPStatus.MISDIRECTED_REQUEST, "unexpected Host header (DNS rebinding?)", "bad_host"
            )

    def check_origin(self) -> None:
        origin = self.headers.get("Origin")
        if origin is not None and origin.lower() not in self.server.origins:
            raise Refused(HTTPStatus.FORBIDDEN, "cross-origin requests are refused", "cross_origin")

    def read_body(self, content_type: str = "application/json", limit: int | None = None) -> bytes:
        """The checked body of a POST (type, length, size, time), after the Host and Origin checks; `limit`
        overrides the server's body limit (the teacher's batch file upload)."""
        self.check_host()
        self.check_origin()
        ctype = (self.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        if ctype != content_type:
            raise Refused(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                f"the request must be {content_type}",
                "unsupported_media_type",
            )
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            raise Refused(
                HTTPStatus.LENGTH_REQUIRED,
                "chunked bodies are not accepted; send Content-Length",
                "length_required",
            )
        raw_length = self.headers.get("Content-Length")
        if raw_length is None:
            raise Refused(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required", "length_required")
        if not raw_length.strip().isdigit():
            raise Refused(HTTPStatus.BAD_REQUEST, "Content-Length is not a number (0 or more)", "bad_length")
        length, limit = int(raw_length), limit or self.server.max_body_bytes
        if length > limit:
            raise Refused(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"the body is {length} bytes, over the limit: at most {limit}",
                "too_large",
            )
        self._body_read = True
        chunks, got = [], 0
        while got < length:
            try:
                chunk = self.rfile.read1(length - got)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        if got < length:
            raise Refused(
                HTTPStatus.REQUEST_TIMEOUT,
                f"the body ended after {got} of {length} bytes (Content-Length) or arrived too slowly",
                "timeout",
            )
        return b"".join(chunks)

    def read_multipart(self, limit: int | None = None) -> dict[str, tuple[str | None, bytes]]:
        """A multipart/form-data POST body: field name -> (file name or None, content)."""
        import email.parser
        import email.policy

        raw = self.read_body("multipart/form-data", limit)
        head = f"Content-Type: {self.headers.get('Content-Type')}\r\n\r\n".encode("latin-1")
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + raw)
        if not message.is_multipart():
            raise Refused(HTTPStatus.BAD_REQUEST, "the multipart body has no parts", "bad_multipart")
        fields = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if name:
                fields[name] = (part.get_filename(), part.get_payload(decode=True) or b"")
        return fields

    def read_json(self, invalid: str = "the request body is not valid JSON") -> object:
        """The body of a POST parsed as JSON; Refused(400, `invalid` and why) when it is not JSON."""
        raw = self.read_body()
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise Refused(HTTPStatus.BAD_REQUEST, f"{invalid}: {e}", "bad_json") from None
        except RecursionError:
            raise Refused(
                HTTPStatus.BAD_REQUEST, "the request body is nested too deeply", "bad_json"
            ) from None

    def _discard_body(self, status: int) -> None:
        """Read a small refused body, so that closing the connection does not reset it before the client
        has read the answer; a large, timed-out or already read body is left alone."""
        if self._body_read or status in (HTTPStatus.REQUEST_TIMEOUT, HTTPStatus.REQUEST_ENTITY_TOO_LARGE):
            return
        raw_length = (self.headers.get("Content-Length") or "").strip()
        if raw_length.isdigit() and 0 < int(raw_length) <= self.server.max_body_bytes:
            with contextlib.suppress(OSError):
                self.rfile.read(int(raw_length))


def serve_until_interrupted(server: ThreadingHTTPServer, banner: str) -> int:
    """Print where the page is, serve until Ctrl-C, close the socket; the exit code of a clean stop."""
    print(f"{banner} (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
