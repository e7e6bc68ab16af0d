"""`provider.kind: local`: generation starts a model server itself (`zhufu serve-model` on a tiny Qwen2 by
default, or any provider.launch command), waits for it, answers through the cache and stops it; a server
that dies or never answers is a clear error quoting its log; a killed generate leaves no server behind. The
whole workflow with a local teacher is tests/workflow/test_local_teacher_run.py."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, run_cmd, tiny_teacher

from zhufu.errors import ProviderError
from zhufu.generate.cache import AnswerCache
from zhufu.generate.local import model_digest, running_local_teacher
from zhufu.generate.providers import provider_identity

PY = sys.executable


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_teacher(tmp_path_factory.mktemp("local_teacher"))


def provider(model_dir, **kw) -> dict:
    return {"kind": "local", "model": "tiny", "model_path": str(model_dir), "launch_timeout_s": 120, **kw}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead too
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(") ", 1)[1][0] != "Z"


def test_a_server_that_exits_is_an_error_quoting_its_log(model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ZHUFU_LOCAL_LOG_DIR", str(tmp_path))
    launch = f"{PY} -c \"import sys; print('CUDA out of memory: no GPU here'); sys.exit(3)\" {{port}}"
    with pytest.raises(ProviderError) as e, running_local_teacher(provider(model_dir, launch=launch)):
        pass
    assert "the local teacher exited with code 3 before answering" in str(e.value)
    assert "CUDA out of memory: no GPU here" in str(e.value)


def test_a_server_that_never_answers_times_out_and_is_stopped(model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ZHUFU_LOCAL_LOG_DIR", str(tmp_path))
    pid_file = tmp_path / "pid"
    code = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); print('loading shards', flush=True); time.sleep(300)"
    launch = f'{PY} -c "{code}" {{port}}'
    started = time.monotonic()
    with (
        pytest.raises(ProviderError) as e,
        running_local_teacher(provider(model_dir, launch=launch, launch_timeout_s=2)),
    ):
        pass
    assert time.monotonic() - started < 60
    assert "did not answer" in str(e.value) and "provider.launch_timeout_s (2 s)" in str(e.value)
    assert "loading shards" in str(e.value)
    assert not alive(int(pid_file.read_text()))


def test_an_unknown_placeholder_and_a_missing_model_are_named(model_dir, tmp_path):
    with (
        pytest.raises(ProviderError, match=r"unknown placeholder 'gpu'"),
        running_local_teacher(provider(model_dir, launch="serve {gpu}")),
    ):
        pass
    with (
        pytest.raises(ProviderError, match=r"provider.model_path .*nowhere is not a directory"),
        running_local_teacher(provider(tmp_path / "nowhere")),
    ):
        pass


def test_zhufu_serve_model_is_started_answers_and_is_stopped(model_dir, tmp_path, monkeypatch):
    import openai

    monkeypatch.setenv("ZHUFU_LOCAL_LOG_DIR", str(tmp_path))
    with running_local_teacher(provider(model_dir)) as (url, token):
        assert url.startswith("http://127.0.0.1:")
        client = openai.OpenAI(base_url=url, api_key=token, max_retries=0)
        out = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "祝姐姐生日快乐"}], max_tokens=4
        )
        assert out.usage.completion_tokens > 0
        with pytest.raises(openai.AuthenticationError):  # the server started with the run's token
            openai.OpenAI(base_url=url, api_key="guess", max_retries=0).models.list()
    log = next(tmp_path.glob("zhufu-local-teacher-*.log")).read_text()
    assert "zhufu serve-model:" in log
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    import socket

    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=5):
        pass  # nothing listens on its port any more: the server is gone


def test_the_cache_key_is_the_model_files_not_the_path_or_port(model_dir, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in Path(model_dir).iterdir():
        if f.is_file():
            (copy / f.name).write_bytes(f.read_bytes())
    same = provider_identity(provider(model_dir))
    assert same == provider_identity(provider(copy))  # another path, the same files
    assert same["weights"] == model_digest(model_dir)
    weights = next(copy.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert provider_identity(provider(copy)) != same  # one byte of the weights: a new key


def _generate_config(tmp_path, model_dir, **provider_kw) -> Path:
    config = {
        "rounds": 1,
        "grid": {"recipients": ["姐姐", "同事"], "scenes": ["生日", "春节"]},
        "provider": {**provider(model_dir, **provider_kw), "max_tokens": 12, "temperature": 0},
    }
    path = tmp_path / "local.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return path


def test_generate_answers_through_the_cache_and_a_rerun_asks_nothing(model_dir, tmp_path):
    config = _generate_config(tmp_path, model_dir)
    cmd = [PY, "-m", "zhufu", "generate", "--configfile", str(config), "--cache", str(tmp_path / "c.sqlite")]
    cmd += ["--no-progress", "-o"]
    env = {"ZHUFU_LOCAL_LOG_DIR": str(tmp_path)}
    first = run_cmd([*cmd, str(tmp_path / "raw1")], cwd=ROOT, timeout=600, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    requested = [int(n) for n in re.findall(r"(\d+) requested", first.stderr)]
    assert requested and sum(requested) > 0
    again = run_cmd([*cmd, str(tmp_path / "raw2")], cwd=ROOT, timeout=600, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [int(n) for n in re.findall(r"(\d+) requested", again.stderr)] == [0] * len(requested)
    for shard in (tmp_path / "raw1").rglob("round_0.json"):
        records = json.loads(shard.read_text(encoding="utf-8"))
        assert records and all(r["meta"]["provider"] == "local" for r in records)
        assert shard.read_bytes() == (tmp_path / "raw2" / shard.relative_to(tmp_path / "raw1")).read_bytes()
    with AnswerCache(tmp_path / "c.sqlite") as cache:
        assert len(cache) == sum(requested)
    assert "local teacher: stopped" in first.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_killed_generate_leaves_no_server(model_dir, tmp_path, sig):
    import subprocess

    # a server that answers /v1/models and then never answers a completion: generate waits on it
    slow = tmp_path / "slow.py"
    slow.write_text(
        "import http.server, json, sys, time\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        body = json.dumps({'data': [{'id': 'tiny'}]}).encode()\n"
        "        self.send_response(200); self.send_header('Content-Length', str(len(body))); self.end_headers()\n"
        "        self.wfile.write(body)\n"
        "    def do_POST(self):\n"
        "        time.sleep(600)\n"
        "import os\n"
        f"open({str(tmp_path / 'server.pid')!r}, 'w').write(str(os.getpid()))\n"
        "print('slow server up', flush=True)\n"
        "http.server.ThreadingHTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()\n",
        encoding="utf-8",
    )
    config = _generate_config(tmp_path, model_dir, launch=f"{PY} {slow} {{port}}")
    env = {**os.environ, "ZHUFU_LOCAL_LOG_DIR": str(tmp_path)}
    proc = subprocess.Popen(
        [
            PY,
            "-m",
            "zhufu",
            "generate",
            "--configfile",
            str(config),
            "--cache",
            str(tmp_path / "c.sqlite"),
            "--no-progress",
            "-o",
            str(tmp_path / "raw"),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not any("slow server up" in p.read_text() for p in tmp_path.glob("zhufu-local-teacher-*.log")):
        assert time.monotonic() < deadline and proc.poll() is None, "the server never started"
        time.sleep(0.2)
    time.sleep(1.0)
    server = [int((tmp_path / "server.pid").read_text())]
    assert alive(server[0])
    proc.send_signal(sig)
    proc.wait(60)
    deadline = time.monotonic() + 30
    while alive(server[0]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(server[0]), f"the local teacher (pid {server[0]}) outlived generate's {sig.name}"
    if sig == signal.SIGTERM:
        assert proc.returncode != 0
        assert "local teacher: stopped" in proc.stderr.read()
