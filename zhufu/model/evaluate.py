"""Answer the evaluation inputs with the base model and the tuned model, and compare them.

`generations.jsonl` has one row per (model, input): {"model": "base"|"tuned", "input", "output"}.
`metrics.json` gives, per model: the mean answer length in characters, the share of 小红书 answers
with an emoji, distinct-1/distinct-2 (share of unique character uni/bigrams), and how many answers of the
tuned model differ from the base model's. Decoding is greedy, so the same models give the same files.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from zhufu.config import load_config
from zhufu.io import write_json, write_jsonl
from zhufu.model.chat import load_chat_model, reply
from zhufu.text import count_chars, has_emoji
from zhufu.tianji import TIANJI_SYSTEM

log = logging.getLogger(__name__)

XHS = "小红书"


def distinct_n(texts: list[str], n: int) -> float:
    grams = [t[i : i + n] for t in texts for i in range(len(t) - n + 1)]
    return round(len(set(grams)) / len(grams), 4) if grams else 0.0


def model_metrics(rows: list[dict[str, str]]) -> dict[str, Any]:
    outputs = [r["output"] for r in rows]
    xhs = [r["output"] for r in rows if XHS in r["input"]]
    return {
        "answers": len(outputs),
        "mean_chars": round(sum(map(count_chars, outputs)) / len(outputs), 2) if outputs else 0.0,
        "empty_answers": sum(1 for o in outputs if not o.strip()),
        "xhs_answers": len(xhs),
        "xhs_emoji_rate": round(sum(map(has_emoji, xhs)) / len(xhs), 4) if xhs else None,
        "distinct_1": distinct_n(outputs, 1),
        "distinct_2": distinct_n(outputs, 2),
    }


def compare(generations: list[dict[str, str]]) -> dict[str, Any]:
    by_model: dict[str, list[dict[str, str]]] = {}
    for row in generations:
        by_model.setdefault(row["model"], []).append(row)
    metrics: dict[str, Any] = {name: model_metrics(rows) for name, rows in by_model.items()}
    if "base" in by_model and "tuned" in by_model:
        base = {r["input"]: r["output"] for r in by_model["base"]}
        metrics["tuned_differs_from_base"] = sum(
            1 for r in by_model["tuned"] if base.get(r["input"]) != r["output"]
        )
    return metrics


def evaluate(
    base_model: str | os.PathLike,
    tuned_model: str | os.PathLike,
    inputs: list[str],
    generations_path: str | os.PathLike,
    metrics_path: str | os.PathLike,
    *,
    system: str = TIANJI_SYSTEM,
    max_new_tokens: int = 64,
    adapter: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Write generations and metrics; the tuned model is `tuned_model`, or `base_model` + `adapter`."""
    rows: list[dict[str, str]] = []
    for name, path, extra in (("base", base_model, None), ("tuned", tuned_model, adapter)):
        chat = load_chat_model(path, extra)
        for text in inputs:
            answer = reply(chat, text, system=system, max_new_tokens=max_new_tokens)
            rows.append({"model": name, "input": text, "output": answer})
            log.info("%s | %s -> %s", name, text, answer)
        del chat
    metrics = compare(rows)
    metrics["settings"] = {
        "base_model": str(base_model),
        "tuned_model": str(tuned_model),
        "adapter": str(adapter) if adapter else None,
        "max_new_tokens": max_new_tokens,
        "decoding": "greedy",
    }
    write_jsonl(generations_path, rows)
    write_json(metrics_path, metrics)
    return metrics


def add_evaluate_arguments(parser) -> None:
    parser.add_argument("--config", help="config file (default: the project's config.yaml)")
    parser.add_argument("--base", default="results/base_model", help="base model directory")
    parser.add_argument("--tuned", default="results/model/merged", help="tuned (merged) model directory")
    parser.add_argument("--adapter", help="evaluate base + this adapter as the tuned model instead")
    parser.add_argument("--generations", default="results/eval/generations.jsonl")
    parser.add_argument("--metrics", default="results/eval/metrics.json")


def run_evaluate(args) -> int:
    config = load_config(args.config)
    metrics = evaluate(
        args.base,
        args.base if args.adapter else args.tuned,
        config["evaluate"]["inputs"],
        args.generations,
        args.metrics,
        system=config["system_prompt"],
        max_new_tokens=config["evaluate"]["max_new_tokens"],
        adapter=args.adapter,
    )
    print(json.dumps({k: v for k, v in metrics.items() if k != "settings"}, ensure_ascii=False, indent=2))
    return 0
