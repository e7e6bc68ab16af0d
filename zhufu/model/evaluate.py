"""The evaluation suite: the base and the tuned model answer held-out requests; style metrics with intervals.

Inputs (`evaluation_inputs`): every style of the recipient × scene pairs that `grid.holdout` kept out of
training (zhufu.grid.holdout_pairs), written as a user would (the training input templates), plus Tianji's
evaluation inputs (`evaluate.inputs`). Each input is answered `evaluate.samples` times at the seed's
temperature (0.7) with a fixed seed per (input, sample), or once greedily (`evaluate.decoding: greedy`).

Metrics, per style and model, with the cleaner's own functions (zhufu.data.rules, zhufu.data.verdicts), so "length" and "emoji"
mean what they mean in cleaning:
- `length_band`: share of answers whose length (count_chars) is inside the style's band;
- `emoji_band`: share inside the style's emoji band (count_emoji; styles without a band are not scored);
- `recipient`: the recipient is named or titled (resources/evaluation.yaml), nobody else is, and the answer
  uses the pronoun the honorific rule wants (您 for elders, 你 for peers: rule_honorific leaves it unchanged);
- `scene`: the answer names or alludes to its scene (a keyword of resources/evaluation.yaml) and to no
  other scene;
- `record_rules`: the record rules (refusal, meta text, quotes, stray punctuation, lists, broken text,
  Chinese ratio, repetition) would keep the answer unchanged;
- `distinct_1`, `distinct_2`: unique character uni/bigrams over all answers of the group.

The off-task group (`evaluate.off_task`, resources/off_task.yaml): requests that are not blessings (travel,
explanation, arithmetic, an e-mail, a thank-you, small talk, a question about a festival). Does the tuned
model still answer them, or answer everything with a blessing?
- `leakage`: share of answers that read as a blessing (blessing_marks: a wish word of
  resources/evaluation.yaml's `blessing`, a recipient's title or a scene's word that the request did not
  use, an emoji in valid text, a style trigger); lower is better, so its verdict is `better` when the interval of
  tuned − base lies below 0;
- `on_topic`: the answer shares a content word (content_words: a Han bigram or a number of the request,
  its question words left out) with the request.
They are scored in the `off-task` group only; the blessing metrics are not scored there, and off-task
answers are in no other group.

Uncertainty: a percentile bootstrap (answers resampled, `evaluate.bootstrap` times, seeded) gives a 95%
interval per value, and one for the difference tuned − base; the verdict is `better` or `worse` when that
interval excludes 0, else `no clear difference`.

Files: `generations.jsonl` (one row per answer, with its per-answer scores), `metrics.json`, and the table
in `table.md` and `table.html`.
"""

from __future__ import annotations

import logging
import os
import re
from functools import cache
from pathlib import Path

from zhufu.config import RESOURCES, load_config, package_file
from zhufu.data.importing import parse_input
from zhufu.data.records import read_rows
from zhufu.data.rules import Drop, RuleContext, rule_broken_text, rule_honorific
from zhufu.data.verdicts import record_verdict
from zhufu.errors import ConfigError
from zhufu.grid import Cell, cell_rng, held_out, load_suitability, training_input
from zhufu.io import read_json, write_json, write_jsonl, write_text
from zhufu.model.chat import load_chat_model, replies
from zhufu.model.summary import OFF_TASK_SOURCE, summarise, table_html, table_markdown
from zhufu.text import HAN_RE, count_chars, count_emoji
from zhufu.tianji import TIANJI_SYSTEM

log = logging.getLogger(__name__)

# Requests per generate call (left-padded): 276 answers of the tiny model took 56 s one at a time.
EVAL_BATCH = 16

EVALUATION_RESOURCE = package_file(RESOURCES, "evaluation.yaml")
METRICS = ("length_band", "emoji_band", "recipient", "scene", "record_rules", "distinct_1", "distinct_2")
RATE_METRICS = METRICS[:5]
OFF_TASK_METRICS = ("leakage", "on_topic")
# The record rules that judge the form of one answer; length, emoji and honorific are metrics of their own,
# suitability and dedup are about the data set, not an answer.
FORM_RULES = (
    "refusal",
    "meta_answer",
    "wrapping_quotes",
    "leading_punctuation",
    "list_items",
    "broken_text",
    "chinese_ratio",
    "char_repetition",
)


@cache
def _resource(path: str) -> dict:
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read the evaluation keywords: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("scenes"), dict):
        raise ConfigError(f"{path}: expected a mapping with `scenes:` (scene -> keywords) and `recipients:`")
    return data


def keywords(path: str | os.PathLike = EVALUATION_RESOURCE) -> dict:
    return _resource(str(path))


def off_task_requests(path: str | os.PathLike) -> list[dict]:
    """The off-task list (resources/off_task.yaml's `requests`: {input, kind})."""
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read the off-task requests: {' '.join(str(e).split())}") from None
    rows = data.get("requests") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not rows:
        raise ConfigError(f"{path}: expected `requests:`, a non-empty list of {{input, kind}}")
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("input"), str) or not row["input"].strip():
            raise ConfigError(f"{path}: requests[{i}]: expected {{input: <a request>, kind: <its kind>}}")
    return rows


# ------------------------------------------------------------------------------------------------ inputs


def evaluation_inputs(config: dict, matrix: dict | None = None) -> list[dict]:
    """Held-out pairs × styles, then Tianji's inputs: {input, recipient, scene, style, source}."""

    items = []
    pairs = held_out(config, matrix)
    for r in config["grid"]["recipients"]:
        for s in config["grid"]["scenes"]:
            if (r, s) not in pairs:
                continue
            for style in config["styles"]:
                cell = Cell(style, -1, r, s)  # round -1: a template draw of its own, not a training cell's
                text = training_input(config, cell, cell_rng(config["seed"], cell))
                items.append({"input": text, "recipient": r, "scene": s, "style": style, "source": "holdout"})
    # Tianji's inputs name scenes and recipients outside a small grid (元宵节): parse with every name we know.
    words = keywords()
    known = {
        **config,
        "grid": {
            **config["grid"],
            "recipients": [*config["grid"]["recipients"], *words.get("recipients", {})],
            "scenes": [*config["grid"]["scenes"], *words["scenes"]],
        },
    }
    for text in config["evaluate"]["inputs"]:
        items.append({"input": text, **parse_input(text, known), "source": "tianji"})
    off_task = config["evaluate"]["off_task"]
    for row in off_task_requests(off_task) if off_task else []:
        item = {"input": row["input"], "recipient": None, "scene": None, "style": None}
        items.append({**item, "kind": row.get("kind"), "source": OFF_TASK_SOURCE})
    return items


# ------------------------------------------------------------------------------------------------ scores


def _words(listed: dict, grid: list[str]) -> dict[str, list[str]]:
    """name -> its words (the name first), for every name of the resource and of the grid."""
    return {name: [name, *(listed.get(name) or [])] for name in [*listed, *grid]}


def _names_only(text: str, name: str, words: dict[str, list[str]]) -> bool:
    """`text` holds one of `name`'s words, and, once those are taken out, none of another name's words
    (so 老师 inside 赵老师, or 团圆 inside a 中秋节 wish, does not count as naming someone else)."""
    own = sorted(words.get(name, [name]), key=len, reverse=True)
    if not any(w in text for w in own):
        return False
    rest = text
    for w in own:
        rest = rest.replace(w, "\x00")
    return not any(w in rest for other, ws in words.items() if other != name for w in ws)


# What a request asks with, not what it asks about: question words and request scaffolding. A content word
# is a Han bigram of the request with none of these characters, or a number.
_FUNCTION_CHARS = set(
    "的了吗呢吧啊呀么是有在和与或我你您他她它请给帮把被让一个些这那哪什怎如何为几多少要想能会可以说写下上去来做吃到对比较好"
)
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def content_words(request: str) -> set[str]:
    """The request's content words: Han bigrams without a function character, and numbers."""
    found = set(_NUMBER.findall(request))
    for i in range(len(request) - 1):
        pair = request[i : i + 2]
        if all(HAN_RE.fullmatch(ch) and ch not in _FUNCTION_CHARS for ch in pair):
            found.add(pair)
    return found


def blessing_marks(text: str, request: str, config: dict, words: dict) -> list[str]:
    """What makes an answer read as a blessing of the training data: a wish word, a recipient's title or a
    scene's word (of a recipient or scene the request does not name itself: 春节有哪些习俗？ may be answered
    with 春联 and 拜年), an emoji (in valid text: the cleaner's broken_text rule), a style's trigger. Empty:
    no mark."""
    marks = [w for w in words.get("blessing", []) if w in text and w not in request]
    for listed, grid in ((words.get("recipients", {}), "recipients"), (words["scenes"], "scenes")):
        for ws in _words(listed, config["grid"][grid]).values():
            if not any(
                w in request for w in ws
            ):  # a scene the request asks about may be answered in its words
                marks += [w for w in ws if w in text]
    if count_emoji(text) and not isinstance(rule_broken_text(text, {}, {}, RuleContext({})), Drop):
        marks.append("emoji")  # in text, not in the random characters of an untrained model (U+FFFD and all)
    triggers = [st["trigger"] for st in config["styles"].values() if st.get("trigger")]
    marks += [t for t in triggers if t in text and t not in request]
    return sorted(set(marks))


def score_off_task(text: str, request: str, config: dict, words: dict) -> dict[str, bool | None]:
    """leakage (the answer reads as a blessing) and on_topic (it shares a content word with the request)."""
    return {
        **dict.fromkeys(RATE_METRICS),
        "record_rules": None,
        "leakage": bool(blessing_marks(text, request, config, words)),
        "on_topic": any(w in text for w in content_words(request)),
    }


def score_answer(text: str, item: dict, config: dict, words: dict | None = None) -> dict[str, bool | None]:
    """The per-answer metrics of one answer (None: not applicable to this input)."""

    words = words or keywords()
    if item.get("source") == OFF_TASK_SOURCE:
        return score_off_task(text, item["input"], config, words)
    style = config["styles"].get(item.get("style") or "")
    recipient, scene = item.get("recipient"), item.get("scene")
    scores: dict[str, bool | None] = dict.fromkeys(RATE_METRICS)
    if style is not None:
        n = count_chars(text)
        scores["length_band"] = style.get("min_chars", 0) <= n <= style["max_chars"]
        band = style.get("emoji")
        if band:
            scores["emoji_band"] = band.get("min", 0) <= count_emoji(text) <= band.get("max", 10**6)
    if recipient:
        titles = _words(words.get("recipients", {}), config["grid"]["recipients"])
        ctx = RuleContext(config["styles"])
        pronoun_ok = rule_honorific(text, {"recipient": recipient}, config["clean"]["honorific"], ctx) == text
        scores["recipient"] = _names_only(text, recipient, titles) and pronoun_ok
    if scene:
        scores["scene"] = _names_only(text, scene, _words(words["scenes"], config["grid"]["scenes"]))
    rules = {
        name: ({**cfg, "enabled": name in FORM_RULES} if isinstance(cfg, dict) else cfg)
        for name, cfg in config["clean"].items()
    }
    verdict = record_verdict(text, {"style": item.get("style")}, rules, RuleContext(config["styles"]))
    scores["record_rules"] = verdict.dropped is None and not verdict.changes and bool(text.strip())
    return scores


# ------------------------------------------------------------------------------------------------ run


def generate_answers(path, items: list[dict], config: dict, name: str, adapter=None) -> list[dict]:
    """Every input answered by one model: `samples` sampled answers each (or one greedy answer), seeded per
    (input, sample), EVAL_BATCH requests to a generate call (zhufu.model.chat.replies)."""

    ev = config["evaluate"]
    greedy = ev["decoding"] == "greedy"
    samples = 1 if greedy else ev["samples"]
    asked = [(i, k, item) for i, item in enumerate(items) for k in range(samples)]
    chat = load_chat_model(path, adapter)
    answers = replies(
        chat,
        [item["input"] for _, _, item in asked],
        seeds=[ev["seed"] + 1000 * i + k for i, k, _ in asked],
        system=config.get("system_prompt") or TIANJI_SYSTEM,
        max_new_tokens=ev["max_new_tokens"],
        temperature=0.0 if greedy else ev["temperature"],
        batch_size=EVAL_BATCH,
    )
    del chat
    rows = []
    for (_, k, item), answer in zip(asked, answers, strict=True):
        rows.append({"model": name, **item, "sample": k, "output": answer})
        log.info("%s | %s -> %s", name, item["input"], answer)
    return rows


def score_rows(rows: list[dict], config: dict) -> list[dict]:
    words = keywords()
    return [{**r, "scores": score_answer(r["output"], r, config, words)} for r in rows]


def write_results(rows: list[dict], config: dict, out_dir_files: dict, settings: dict) -> dict:
    ev = config["evaluate"]
    groups = summarise(
        rows,
        list(config["styles"]),
        resamples=ev["bootstrap"],
        seed=ev["seed"],
        metrics=METRICS,
        off_task_metrics=OFF_TASK_METRICS,
    )
    metrics = {
        "settings": settings,
        "answers": {m: sum(r["model"] == m for r in rows) for m in ("base", "tuned")},
    }
    metrics["groups"] = groups
    title = "Zhufu evaluation: base vs tuned"
    write_jsonl(out_dir_files["generations"], rows)
    write_json(out_dir_files["metrics"], metrics)
    write_text(out_dir_files["table_md"], table_markdown(groups, title))
    write_text(out_dir_files["table_html"], table_html(groups, title))
    return metrics


def evaluate(
    base_model: str | os.PathLike,
    tuned_model: str | os.PathLike,
    config: dict,
    outputs: dict,
    *,
    adapter: str | os.PathLike | None = None,
    suitability: str | os.PathLike | None = None,
) -> dict:
    """Answer, score, summarise. `outputs` names generations, metrics, table_md and table_html."""

    matrix = load_suitability(suitability) if suitability else None
    items = evaluation_inputs(config, matrix)
    rows = generate_answers(base_model, items, config, "base")
    rows += generate_answers(tuned_model, items, config, "tuned", adapter)
    ev = config["evaluate"]
    settings = {
        "base_model": str(base_model),
        "tuned_model": str(tuned_model),
        "adapter": str(adapter) if adapter else None,
        "inputs": len(items),
        "held_out_pairs": sorted({(i["recipient"], i["scene"]) for i in items if i["source"] == "holdout"}),
        "off_task_inputs": sum(i["source"] == OFF_TASK_SOURCE for i in items),
        **{k: ev[k] for k in ("decoding", "samples", "temperature", "seed", "max_new_tokens", "bootstrap")},
    }
    return write_results(score_rows(rows, config), config, outputs, settings)


def add_evaluate_arguments(parser) -> None:
    parser.add_argument("--config", help="config file (default: the project's config.yaml)")
    parser.add_argument("--base", default="results/base_model", help="base model directory")
    parser.add_argument("--tuned", default="results/model/merged", help="tuned (merged) model directory")
    parser.add_argument("--adapter", help="evaluate base + this adapter as the tuned model instead")
    parser.add_argument("-o", "--outdir", default="results/eval", help="folder for the four result files")
    parser.add_argument("--greedy", action="store_true", help="one greedy answer per input (no sampling)")
    parser.add_argument(
        "--rescore", action="store_true", help="score OUTDIR/generations.jsonl again, without the models"
    )


def output_files(outdir: str | os.PathLike) -> dict:
    d = Path(outdir)
    return {
        "generations": d / "generations.jsonl",
        "metrics": d / "metrics.json",
        "table_md": d / "table.md",
        "table_html": d / "table.html",
    }


def run_evaluate(args) -> int:
    config = load_config(args.config)
    if args.greedy:
        config["evaluate"]["decoding"] = "greedy"
    files = output_files(args.outdir)
    if args.rescore:
        rows = read_rows(files["generations"])
        settings = read_json(files["metrics"]).get("settings", {}) if files["metrics"].is_file() else {}
        write_results(score_rows(rows, config), config, files, settings)
    else:
        evaluate(
            args.base,
            args.base if args.adapter else args.tuned,
            config,
            files,
            adapter=args.adapter,
            suitability=config["grid"].get("suitability"),
        )
    print(Path(files["table_md"]).read_text(encoding="utf-8"))
    return 0
