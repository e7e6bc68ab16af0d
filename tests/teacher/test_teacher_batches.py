"""The offline teacher's Batch API, driven by the real `openai` and `zhipuai` clients on 127.0.0.1: files,
batches, the output and error files, expiry, error lines, cancel, and the counters of /zhufu/stats."""

from __future__ import annotations

import json
import time
import urllib.request

import openai
import pytest
import zhipuai

from zhufu.config import load_config
from zhufu.grid import build_prompt, config_matrix, iter_cells
from zhufu.teacher.server import start_teacher, teacher_stats

DELAY = 0.3


@pytest.fixture
def server():
    srv = start_teacher(batch_delay_s=DELAY)
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key="offline", max_retries=0, timeout=10)


def bodies(n: int) -> list[dict]:
    """n chat-completion bodies of the default grid's real prompts (what `zhufu generate` sends)."""
    config = load_config()
    cells = list(iter_cells(config, "正常", 0, config_matrix(config)))[:n]
    return [
        {
            "model": "m",
            "messages": build_prompt(config, c).messages,
            "temperature": 1.0,
            "max_tokens": 256,
            "seed": 0,
        }
        for c in cells
    ]


def jsonl(items: list[dict]) -> bytes:
    lines = [
        {"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions", "body": b}
        for i, b in enumerate(items)
    ]
    return "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode("utf-8")


def finished(retrieve, batch_id):
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        batch = retrieve(batch_id)
        if batch.status not in ("validating", "in_progress", "finalizing"):
            return batch
        time.sleep(0.05)
    raise AssertionError(f"batch {batch_id} did not finish")


def lines_of(text: str) -> dict[str, dict]:
    return {row["custom_id"]: row for row in map(json.loads, text.splitlines())}


def control(server, **settings):
    root = server.base_url.removesuffix("/v1")
    req = urllib.request.Request(
        f"{root}/zhufu/control",
        data=json.dumps(settings).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


def test_openai_batch_answers_equal_the_direct_endpoints(server, client):
    items = bodies(6)
    f = client.files.create(file=("in.jsonl", jsonl(items)), purpose="batch")
    batch = client.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert batch.status == "in_progress" and batch.request_counts.total == 6
    done = finished(client.batches.retrieve, batch.id)
    assert done.status == "completed" and done.error_file_id is None
    assert (done.request_counts.completed, done.request_counts.failed) == (6, 0)
    out = lines_of(client.files.content(done.output_file_id).text)
    assert sorted(out) == [f"c{i}" for i in range(6)]
    assert teacher_stats(server.base_url)["requests"] == 0  # the batch made no chat-completion request
    for i, body in enumerate(items):
        direct = client.chat.completions.create(**body)
        assert out[f"c{i}"]["response"]["status_code"] == 200
        assert (
            out[f"c{i}"]["response"]["body"]["choices"][0]["message"]["content"]
            == direct.choices[0].message.content
        )
    stats = teacher_stats(server.base_url)
    assert {k: stats[k] for k in ("files", "batches", "batch_lines", "batch_answers", "batch_repeats")} == {
        "files": 1,
        "batches": 1,
        "batch_lines": 6,
        "batch_answers": 6,
        "batch_repeats": 0,
    }
    assert stats["requests"] == 6


def test_a_batch_stays_in_progress_until_its_delay_has_passed(server, client):
    f = client.files.create(file=("in.jsonl", jsonl(bodies(1))), purpose="batch")
    batch = client.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert client.batches.retrieve(batch.id).status == "in_progress"
    time.sleep(DELAY + 0.05)
    assert client.batches.retrieve(batch.id).status == "completed"


def test_zhipuai_client_runs_the_same_protocol_under_api_paas_v4(server):
    z = zhipuai.ZhipuAI(
        api_key="k.s", base_url=server.base_url.removesuffix("/v1") + "/api/paas/v4", max_retries=0
    )
    f = z.files.create(file=("in.jsonl", jsonl(bodies(3))), purpose="batch")
    batch = z.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    done = finished(z.batches.retrieve, batch.id)
    assert done.status == "completed"
    out = lines_of(z.files.content(done.output_file_id).content.decode("utf-8"))
    assert len(out) == 3 and all(r["response"]["status_code"] == 200 for r in out.values())


def test_an_expired_batch_answers_its_first_half_and_lists_the_rest_as_batch_expired(server, client):
    assert control(server, expire_share=0.5) == {"expire_share": 0.5, "error_every": 0}
    f = client.files.create(file=("in.jsonl", jsonl(bodies(6))), purpose="batch")
    batch = client.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = finished(client.batches.retrieve, batch.id)
    assert done.status == "expired"
    assert (done.request_counts.completed, done.request_counts.failed) == (3, 3)
    out = lines_of(client.files.content(done.output_file_id).text)
    errors = lines_of(client.files.content(done.error_file_id).text)
    assert sorted(out) == ["c0", "c1", "c2"] and sorted(errors) == ["c3", "c4", "c5"]
    assert {e["error"]["code"] for e in errors.values()} == {"batch_expired"}


def test_error_every_puts_those_lines_in_the_error_file_as_500s(server, client):
    control(server, error_every=2)
    f = client.files.create(file=("in.jsonl", jsonl(bodies(4))), purpose="batch")
    batch = client.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = finished(client.batches.retrieve, batch.id)
    assert done.status == "completed"
    errors = lines_of(client.files.content(done.error_file_id).text)
    assert sorted(errors) == ["c1", "c3"]
    assert {e["response"]["status_code"] for e in errors.values()} == {500}
    assert sorted(lines_of(client.files.content(done.output_file_id).text)) == ["c0", "c2"]


def test_cancel_before_completion_leaves_no_output(server, client):
    f = client.files.create(file=("in.jsonl", jsonl(bodies(2))), purpose="batch")
    batch = client.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert client.batches.cancel(batch.id).status == "cancelled"
    time.sleep(DELAY + 0.05)
    after = client.batches.retrieve(batch.id)
    assert after.status == "cancelled" and after.output_file_id is None
    assert teacher_stats(server.base_url)["batch_answers"] == 0


def test_a_custom_id_answered_twice_counts_as_a_repeat(server, client):
    for _ in range(2):
        f = client.files.create(file=("in.jsonl", jsonl(bodies(2))), purpose="batch")
        batch = client.batches.create(
            input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        finished(client.batches.retrieve, batch.id)
    stats = teacher_stats(server.base_url)
    assert (stats["batches"], stats["batch_answers"], stats["batch_repeats"]) == (2, 4, 2)


def test_unknown_batches_files_and_bad_uploads_are_refused_in_openais_shape(server, client):
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_nope")
    with pytest.raises(openai.NotFoundError):
        client.files.content("file-nope")
    with pytest.raises(openai.BadRequestError, match="purpose"):
        client.files.create(file=("in.jsonl", jsonl(bodies(1))), purpose="fine-tune")
    with pytest.raises(openai.NotFoundError):
        client.batches.create(
            input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h"
        )
    f = client.files.create(file=("in.jsonl", b"not json\n"), purpose="batch")
    with pytest.raises(openai.BadRequestError, match="line 1"):
        client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")


@pytest.mark.parametrize(
    "path", ["/v1/batches/batch_x/cancel", "/zhufu/control", "/v1/files", "/api/paas/v4/batches"]
)
def test_the_batch_routes_refuse_a_foreign_host(server, path):
    from helpers import http_exchange

    raw = f"POST {path} HTTP/1.1\r\nHost: evil.example\r\nContent-Length: 0\r\n\r\n".encode()
    status, _, _ = http_exchange(server.server_address, raw)
    assert status == 421
