"""The teacher's endpoint for a run: the config's, Zhufu's offline teacher, or a local model server it starts.

`provider.kind: local` serves `provider.model_path` with `provider.launch`, a command template
(default `zhufu serve-model {model} --port {port}`; README gives vLLM, SGLang and lmdeploy lines) whose
placeholders are `{model}` (model_path), `{port}` (a free port of 127.0.0.1), `{host}` (127.0.0.1), `{name}`
(provider.model, the name requests carry) and `{token}` (the bearer token of this launch, below). `serving()` starts it in its own process group, waits until
`GET /v1/models` answers (at most `provider.launch_timeout_s`; if the server exits or the time runs out, the
error quotes its last log lines), yields the base URL, and stops the whole group afterwards: on success, on an
error, on SIGTERM/SIGINT/SIGHUP (turned into an exception so the `with` block unwinds), at interpreter exit,
and, when this process is killed outright, by the kernel (the child is started with PR_SET_PDEATHSIG).

The server's output goes to a log file beside the run's logs (`ZHUFU_LOCAL_LOG_DIR`, else the temporary
directory). A random bearer token is made for each launch: it is `{token}` and the environment's
ZHUFU_SERVE_TOKEN (`zhufu serve-model`) and VLLM_API_KEY (vLLM), and the client sends it; a server that
ignores it still answers. It never reaches a log, the config or the cache. The answers are cached under the model
files' identity (`model_digest`), not the port, so a rerun with a restarted server hits the cache.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import hashlib
import json
import logging
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from urllib.error import URLError
from urllib.request import Request, urlopen

from zhufu.errors import ProviderError
from zhufu.teacher.server import running_teacher

log = logging.getLogger(__name__)

DEFAULT_LAUNCH = "zhufu serve-model {model} --port {port}"
LOG_DIR_ENV = "ZHUFU_LOCAL_LOG_DIR"
LOG_LINES_QUOTED = 15
STOP_GRACE_S = 10.0
# Files up to this size are hashed whole; a larger weight file by its size, its head and its tail.
WHOLE_HASH_BYTES = 256 << 20
EDGE_BYTES = 16 << 20


def _file_digest(path: Path, size: int) -> str:
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        if size <= WHOLE_HASH_BYTES:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        else:
            h.update(fh.read(EDGE_BYTES))
            fh.seek(size - EDGE_BYTES)
            h.update(fh.read(EDGE_BYTES))
    return h.hexdigest()


@lru_cache(maxsize=8)
def _digest(root: str, signature: tuple) -> str:
    h = hashlib.sha256()
    for rel, size, _ in signature:
        h.update(f"{rel}\0{_file_digest(Path(root) / rel, size)}\n".encode())
    return h.hexdigest()


def model_digest(model_path: str | os.PathLike) -> str:
    """The identity of a model directory's files: their relative paths and contents (a weight file over
    256 MiB by its size and its first and last 16 MiB), the same wherever the directory is or is served."""
    root = Path(model_path)
    if not root.is_dir():
        raise ProviderError(f"provider.model_path {model_path} is not a directory: name the model's weights")
    files = sorted(p for p in root.rglob("*") if p.is_file() and ".cache" not in p.relative_to(root).parts)
    if not files:
        raise ProviderError(f"provider.model_path {model_path} holds no files")
    signature = tuple((str(p.relative_to(root)), (st := p.stat()).st_size, st.st_mtime_ns) for p in files)
    return _digest(str(root.resolve()), signature)


def launch_command(provider: dict, port: int, token: str = "") -> list[str]:
    """provider.launch with its placeholders filled in, split like a shell would (no shell runs it)."""
    template = provider.get("launch") or DEFAULT_LAUNCH
    values = {
        "model": shlex.quote(str(provider["model_path"])),
        "port": str(port),
        "host": "127.0.0.1",
        "name": shlex.quote(provider["model"]),
        "token": token,
    }
    try:
        line = template.format(**values)
    except (KeyError, IndexError, ValueError) as e:
        raise ProviderError(
            f"provider.launch {template!r}: unknown placeholder {e}; use {{model}}, {{port}}, {{host}}, {{name}}, {{token}}"
        ) from None
    args = shlex.split(line)
    if args and args[0] == "zhufu":  # this installation's zhufu, whatever PATH holds
        args = [sys.executable, "-m", "zhufu", *args[1:]]
    return args


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the child: its own session (so the whole group can be stopped), and SIGTERM when the parent dies."""
    os.setsid()
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _tail(path: Path, lines: int = LOG_LINES_QUOTED) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    kept = text.rstrip().splitlines()[-lines:]
    return "\n".join(f"    {line}" for line in kept) or "    (the log is empty)"


def _ready(base_url: str, token: str) -> bool:
    req = Request(f"{base_url}/models", headers={"Authorization": f"Bearer {token}"})
    try:
        with urlopen(req, timeout=5) as resp:
            return resp.status == 200 and "data" in json.loads(resp.read().decode("utf-8"))
    except (URLError, OSError, ValueError):
        return False


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server's whole process group: SIGTERM, then SIGKILL after STOP_GRACE_S."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(STOP_GRACE_S)


class Stopped(BaseException):
    """SIGTERM, SIGHUP (or SIGINT) while a local teacher runs: unwinds the `with` block that stops it."""


@contextlib.contextmanager
def _signals_unwind() -> Iterator[None]:
    def raise_stopped(signum, frame):
        raise Stopped(f"stopped by signal {signal.Signals(signum).name}")

    old = {}
    with contextlib.suppress(ValueError):  # not the main thread: leave the handlers alone
        for sig in (signal.SIGTERM, signal.SIGHUP):
            old[sig] = signal.signal(sig, raise_stopped)
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def running_local_teacher(provider: dict) -> Iterator[tuple[str, str]]:
    """Start provider.launch on a free port, wait for /v1/models; yields (base_url, token); stops it after."""
    if not provider.get("model_path"):
        raise ProviderError("provider.model_path is required for kind 'local': the model directory to serve")
    model_digest(provider["model_path"])  # a missing or empty directory fails before anything starts
    port, token = free_port(), secrets.token_hex(16)
    args = launch_command(provider, port, token)
    log_dir = Path(os.environ.get(LOG_DIR_ENV) or tempfile.gettempdir())
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"zhufu-local-teacher-{port}.log"
    env = {**os.environ, "ZHUFU_SERVE_TOKEN": token, "VLLM_API_KEY": token}
    with open(log_path, "wb") as log_fh:
        try:
            proc = subprocess.Popen(
                args,
                stdout=log_fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 (setsid and the parent-death signal, nothing more)
            )
        except OSError as e:
            raise ProviderError(f"provider.launch: cannot start {args[0]!r}: {e.strerror}") from None
    atexit.register(_stop, proc)
    base_url = f"http://127.0.0.1:{port}/v1"
    shown = shlex.join(args).replace(token, "<token>")  # the token stays out of the logs
    log.info("local teacher: started %s (pid %d, log %s)", shown, proc.pid, log_path)
    try:
        with _signals_unwind():
            deadline = time.monotonic() + provider.get("launch_timeout_s", 600)
            while not _ready(base_url, token):
                if proc.poll() is not None:
                    raise ProviderError(
                        f"provider.launch: the local teacher exited with code {proc.returncode} before "
                        f"answering {base_url}/models; the last lines of {log_path}:\n{_tail(log_path)}"
                    )
                if time.monotonic() > deadline:
                    raise ProviderError(
                        f"provider.launch: the local teacher did not answer {base_url}/models within "
                        f"provider.launch_timeout_s ({provider.get('launch_timeout_s', 600)} s); "
                        f"the last lines of {log_path}:\n{_tail(log_path)}"
                    )
                time.sleep(0.5)
            log.info("local teacher: ready at %s", base_url)
            yield base_url, token
    finally:
        _stop(proc)
        atexit.unregister(_stop)
        log.info("local teacher: stopped (pid %d)", proc.pid)


@contextlib.contextmanager
def serving(provider: dict, api_key: str, base_url: str | None = None) -> Iterator[tuple[str | None, str]]:
    """The (base_url, api_key) to call: `base_url` when given, else the offline teacher started here, a
    local model server started here (kind local), or the config's endpoint."""
    if base_url:
        yield base_url, api_key
    elif provider["kind"] == "offline" and not provider.get("base_url"):
        with running_teacher() as url:
            yield url, api_key
    elif provider["kind"] == "local":
        with running_local_teacher(provider) as (url, token):
            yield url, token
    else:
        yield provider.get("base_url"), api_key
