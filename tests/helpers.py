"""Helpers shared by the test modules: project paths, a copy of the project, running a command.

Import them with `from helpers import ...` (pytest puts tests/ on sys.path). conftest.py holds only
fixtures; it is never imported as a module.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def workflow_cores() -> str:
    """`--cores` for a test's whole-workflow run: the machine's CPUs shared among the pytest-xdist workers.
    Two workers each training with 2 torch threads on 2 cores spin in OpenMP: the default's 3000 iterations
    took 1278 s (1243 CPU-s) under `make test` against 232 s (434 CPU-s) alone."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return str(max(1, (os.cpu_count() or 1) // workers))


# Tianji's system prompt, written out here so that tests do not take it from the code they test.
# Debian's Chromium for the browser tests, with the flags this machine's closed network needs (no background
# connections, no component updates); the tests skip when it is not installed.
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

TIANJI_SYSTEM = "你现在是一个送祝福大师，帮我针对不同人和事情、节日送对应的祝福"


def tracked_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True
    )
    return [f for f in out.stdout.splitlines() if (ROOT / f).is_file()]


def copy_project(dest: Path) -> Path:
    """A copy of the project's files (what a fresh clone has, plus uncommitted work), without results."""
    for rel in tracked_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    return dest


def copy_run(project: Path, dest: Path) -> Path:
    """A copy of a finished project: results, logs, Snakemake's records and the answer cache, every mtime kept
    (shutil.copy2), so that Snakemake plans in the copy what it would plan in the original."""
    return shutil.copytree(project, dest, copy_function=shutil.copy2, symlinks=True)


def run_cmd(args, cwd, timeout=600, env=None, **kw):
    full_env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **(env or {})}
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env, **kw)


def cuda_available(env: dict[str, str] | None = None) -> bool:
    """Whether torch sees a usable CUDA device in a child process with `env` added to the environment
    (e.g. the CUDA_VISIBLE_DEVICES a test gives its command), asked of torch, not of zhufu's own check."""
    code = "import torch; print(torch.cuda.is_available())"
    result = run_cmd([sys.executable, "-c", code], cwd=ROOT, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip() == "True"


def greedy_answer(model_dir: Path, text: str, *, system: str, max_new_tokens: int) -> str:
    """What a model answers to one request, written here with plain transformers as the tests' oracle.

    The chat template with a system and a user turn, greedy decoding that stops at <|im_end|>,
    <|endoftext|> or the eos token, the new tokens decoded without special tokens and stripped.
    """
    import torch  # heavy: imported only by the tests that generate
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True)  # InternLM2 brings its own code
    model = (
        AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32, trust_remote_code=True)
        .to(device)
        .eval()
    )
    prompt = tok.apply_chat_template(
        [{"role": "system", "content": system}, {"role": "user", "content": text}],
        tokenize=False,
        add_generation_prompt=True,
    )
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False).to(device)
    # <|im_end|> ends a turn in both families; <|endoftext|> is Qwen's, </s> InternLM2's eos
    named = [tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    stops = sorted({t for t in named if t != tok.unk_token_id} | {tok.eos_token_id})
    with torch.no_grad():
        out = model.generate(
            **ids, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stops, pad_token_id=stops[-1]
        )
    return tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def http_exchange(address, raw: bytes, read_timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes to a server on `address` and read until it closes or a whole reply (by its
    Content-Length) has come: (status, lower-cased headers, body), or (0, {}, b"") when nothing came."""
    import socket

    with socket.create_connection(tuple(address[:2]), timeout=read_timeout) as sock:
        sock.sendall(raw)
        data = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            lengths = [
                int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")
            ]
            if sep and lengths and len(body) >= lengths[0]:
                break
    if not data:
        return 0, {}, b""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def tiny_teacher(where: Path) -> Path:
    """A tiny Qwen2 built from the dirty fixture's first turns (seed 1), to serve as a local teacher."""
    import json

    from zhufu.train.base_model import build_tiny_model

    sample = json.loads((ROOT / "tests/fixtures/dirty.json").read_text(encoding="utf-8"))
    rows = [
        {"conversation": [{k: r["conversation"][0][k] for k in ("system", "input", "output")}]}
        for r in sample
    ]
    where.mkdir(parents=True, exist_ok=True)
    train = where / "train.json"
    train.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    return build_tiny_model(train, where / "model", seed=1)
