"""The web demo, driven in a real headless Chromium: type a request, click, read the answer."""

import json
import shutil
import threading
import urllib.error
import urllib.request

import pytest
from conftest import ROOT

from zhufu.model.chat import load_chat_model, reply
from zhufu.model.serve import make_server
from zhufu.train.base_model import build_tiny_model

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    train = tmp / "train.json"
    sample = json.loads((ROOT / "tests/fixtures/dirty.json").read_text(encoding="utf-8"))
    rows = [
        {"conversation": [{k: r["conversation"][0][k] for k in ("system", "input", "output")}]}
        for r in sample
    ]
    train.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    model_dir = build_tiny_model(train, tmp / "model", vocab_size=400, seed=1)
    chat = load_chat_model(model_dir)
    srv = make_server(chat, "127.0.0.1", 0, label="tiny", max_new_tokens=12)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield chat, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def post(url, body: bytes):
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_api_answers_like_chat(server):
    chat, url = server
    status, body = post(f"{url}/api/chat", json.dumps({"text": "祝姐姐生日快乐，小红书风格"}).encode())
    assert status == 200
    assert body["output"] == reply(chat, "祝姐姐生日快乐，小红书风格", max_new_tokens=12)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "must be JSON"),
        (b'{"text": "   "}', "empty"),
        (json.dumps({"text": "祝" * 201}).encode(), "longer than 200"),
    ],
)
def test_api_rejects_bad_requests_with_a_message(server, body, message):
    _, url = server
    status, reply_body = post(f"{url}/api/chat", body)
    assert status == 400
    assert message in reply_body["error"]


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)")
def test_page_in_headless_chromium(server, tmp_path):
    from playwright.sync_api import sync_playwright

    chat, url = server
    expected = reply(chat, "祝妹妹谈判顺利，小红书风格", max_new_tokens=12)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        page = browser.new_page()
        page.goto(url)
        assert "祝福" in page.title() + page.inner_text("h1")
        page.fill("#text", "祝妹妹谈判顺利，小红书风格")
        page.click("#send")
        page.wait_for_function("document.getElementById('answer').textContent !== '…'", timeout=60_000)
        assert page.inner_text("#answer").strip() == expected.strip()
        assert page.inner_text("#error") == ""
        page.screenshot(path=str(tmp_path / "demo.png"))
        browser.close()
    assert (tmp_path / "demo.png").stat().st_size > 1000
