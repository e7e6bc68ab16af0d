"""Throughput of `zhufu serve-model` (answers/s) at 1, 8 and 32 concurrent openai-SDK clients, side by side with
`zhufu chat`'s own loop (zhufu.model.chat.reply, one request at a time) on the same model, in the same run.

    .venv/bin/python bench/serve_model.py                                  # a tiny model built from tests/fixtures
    .venv/bin/python bench/serve_model.py --model results/model/merged     # the tuned model of `make run`
    .venv/bin/python bench/serve_model.py --clients 1 8 32 --requests 64 --max-tokens 32

Every request is greedy (temperature 0) with `max_tokens` new tokens, over the evaluation's Tianji inputs in
turn. The server runs in this process (its HTTP threads and its one generate worker); each client is a thread
with its own `openai.OpenAI`. A row: clients, answers, seconds, answers/s, the ratio to one-at-a-time chat, and
the mean rows per generate call (how much the batcher gathered).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def tiny_model(tmp: Path) -> Path:
    from zhufu.train.base_model import build_tiny_model

    sample = json.loads((ROOT / "tests/fixtures/dirty.json").read_text(encoding="utf-8"))
    rows = [
        {"conversation": [{k: r["conversation"][0][k] for k in ("system", "input", "output")}]}
        for r in sample
    ]
    train = tmp / "train.json"
    train.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    return build_tiny_model(train, tmp / "model", seed=1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model directory (default: a tiny one built from tests/fixtures)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=64, help="requests per client count")
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import openai
    import torch

    from zhufu.model.api import ModelAPIServer
    from zhufu.model.chat import load_chat_model, reply
    from zhufu.tianji import TIANJI_EVALUATION_INPUTS, TIANJI_SYSTEM

    tmp = Path(tempfile.mkdtemp(prefix="zhufu-bench-serve-"))
    model_dir = Path(args.model) if args.model else tiny_model(tmp)
    chat = load_chat_model(model_dir)
    asks = list(TIANJI_EVALUATION_INPUTS)
    print(
        f"model {model_dir} on {chat.device}, torch threads {torch.get_num_threads()}, "
        f"{args.requests} greedy requests of max_tokens {args.max_tokens} per row",
        flush=True,
    )

    start = time.perf_counter()
    for i in range(args.requests):
        reply(chat, asks[i % len(asks)], system=TIANJI_SYSTEM, max_new_tokens=args.max_tokens)
    chat_s = time.perf_counter() - start
    chat_rate = args.requests / chat_s

    server = ModelAPIServer(("127.0.0.1", 0), chat, name="bench")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    rows = [("zhufu chat (one at a time)", args.requests, chat_s, chat_rate, 1.0, 1.0)]
    try:
        for clients in args.clients:
            local = threading.local()

            def ask(i: int, local: threading.local = local) -> str:
                if not hasattr(local, "client"):
                    local.client = openai.OpenAI(
                        base_url=server.base_url, api_key="x", max_retries=0, timeout=600
                    )
                messages = [
                    {"role": "system", "content": TIANJI_SYSTEM},
                    {"role": "user", "content": asks[i % len(asks)]},
                ]
                out = local.client.chat.completions.create(
                    model="bench", messages=messages, temperature=0, max_tokens=args.max_tokens
                )
                return out.choices[0].message.content

            batches, generated = server.batcher.batches, server.batcher.rows
            start = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                answers = list(pool.map(ask, range(args.requests)))
            seconds = time.perf_counter() - start
            calls = server.batcher.batches - batches
            per_call = (server.batcher.rows - generated) / max(calls, 1)
            rate = len(answers) / seconds
            rows.append(
                (f"serve-model, {clients} clients", len(answers), seconds, rate, rate / chat_rate, per_call)
            )
    finally:
        server.shutdown()
        server.server_close()

    print(f"\n{'':32} {'answers':>7} {'seconds':>8} {'answers/s':>10} {'vs chat':>8} {'rows/generate':>14}")
    for name, n, seconds, rate, ratio, per_call in rows:
        print(f"{name:32} {n:7d} {seconds:8.2f} {rate:10.2f} {ratio:7.2f}x {per_call:14.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
