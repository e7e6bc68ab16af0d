"""The evaluation suite: the base and the tuned model answer held-out requests; style metrics with intervals.

Inputs (`evaluation_inputs`): every style of the recipient × scene pairs that `grid.holdout` kept out of
training (zhufu.grid.holdout_pairs), written as a user would (the training input templates), plus Tianji's
evaluation inputs (`evaluate.inputs`). Each input is answered `evaluate.samples` times at the seed's
temperature (0.7) with a fixed seed per (input, sample), or once greedily (`evaluate.decoding: greedy`).

Metrics, per style and model, with the cleaner's own functions (zhufu.cleaning), so "length" and "emoji"
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

Uncertainty: a percentile bootstrap (answers resampled, `evaluate.bootstrap` times, seeded) gives a 95%
interval per value, and one for the difference tuned − base; the verdict is `better` or `worse` when that
interval excludes 0, else `no clear difference`.

Files: `generations.jsonl` (one row per answer, with its per-answer scores), `metrics.json`, and the table
in `table.md` and `table.html`.
"""

from __future__ import annotations

import html
import logging
import os
from functools import cache
from pathlib import Path
from typing import Any

from zhufu.config import RESOURCES, load_config, package_file
from zhufu.data.importing import parse_input
from zhufu.data.records import read_rows
from zhufu.data.rules import RuleContext, rule_honorific
from zhufu.data.verdicts import apply_record_rules
from zhufu.errors import ConfigError
from zhufu.fonts import font_face_css
from zhufu.grid import Cell, cell_rng, held_out, load_suitability, training_input
from zhufu.io import read_json, write_json, write_jsonl, write_text
from zhufu.model.chat import load_chat_model, reply
from zhufu.text import count_chars, count_emoji
from zhufu.tianji import TIANJI_SYSTEM

log = logging.getLogger(__name__)

EVALUATION_RESOURCE = package_file(RESOURCES, "evaluation.yaml")
METRICS = ("length_band", "emoji_band", "recipient", "scene", "record_rules", "distinct_1", "distinct_2")
RATE_METRICS = METRICS[:5]
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
ALL = "all"
# every style, the held-out grid pairs only (Tianji's inputs left out: some name scenes and recipients that
# are in no training record, 元宵节 and 大家, so no model trained here can get them right)
HELD_OUT = "held-out"


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


def score_answer(text: str, item: dict, config: dict, words: dict | None = None) -> dict[str, bool | None]:
    """The per-answer metrics of one answer (None: not applicable to this input)."""

    words = words or keywords()
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
    verdict = apply_record_rules(text, {"style": item.get("style")}, rules, RuleContext(config["styles"]))
    scores["record_rules"] = verdict.dropped is None and not verdict.changes and bool(text.strip())
    return scores


def distinct_n(texts: list[str], n: int) -> float:
    grams = [t[i : i + n] for t in texts for i in range(len(t) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def _value(metric: str, rows: list[dict]) -> float | None:
    if metric.startswith("distinct_"):
        return distinct_n([r["output"] for r in rows], int(metric[-1])) if rows else None
    flags = [r["scores"][metric] for r in rows if r["scores"][metric] is not None]
    return sum(flags) / len(flags) if flags else None


def _applicable(metric: str, rows: list[dict]) -> list[dict]:
    if metric.startswith("distinct_"):
        return rows
    return [r for r in rows if r["scores"][metric] is not None]


def _interval(metric: str, value: float, draws, level: float) -> list[float]:
    """Percentile interval for shares (a resample's mean is unbiased). distinct-n of a resample is biased low
    (a resample repeats answers), so its interval is shifted by the bootstrap's bias estimate, mean − value."""
    import numpy as np

    lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    bias = float(np.mean(draws)) - value if metric.startswith("distinct_") else 0.0
    return [float(lo - bias), float(hi - bias)]


def bootstrap(
    metric: str, base: list[dict], tuned: list[dict], *, resamples: int, seed: int, level: float = 0.95
) -> dict[str, Any]:
    """Values, percentile intervals and the tuned − base difference with its interval, from one bootstrap."""
    import numpy as np

    base, tuned = _applicable(metric, base), _applicable(metric, tuned)
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {}
    draws: dict[str, np.ndarray] = {}
    for name, rows in (("base", base), ("tuned", tuned)):
        value = _value(metric, rows)
        out[name] = {"value": value, "n": len(rows), "ci": None}
        if value is None:
            continue
        idx = rng.integers(0, len(rows), size=(resamples, len(rows)))
        draws[name] = np.array([_value(metric, [rows[i] for i in row]) for row in idx], dtype=float)
        out[name]["ci"] = _interval(metric, value, draws[name], level)
    if len(draws) == 2:
        diff = draws["tuned"] - draws["base"]
        value = out["tuned"]["value"] - out["base"]["value"]
        lo, hi = _interval(metric, value, diff, level)
        verdict = "better" if lo > 0 else "worse" if hi < 0 else "no clear difference"
        out["diff"] = {"value": value, "ci": [lo, hi]}
        out["verdict"] = verdict
    else:
        out["diff"], out["verdict"] = None, "not scored"
    return out


def summarise(
    rows: list[dict], styles: list[str], *, resamples: int = 1000, seed: int = 0, metrics=METRICS
) -> dict:
    """metrics.json's `groups`: per style, `all`, and `held-out` (the held-out grid pairs of every style), per
    metric, both models with intervals and a verdict."""
    groups: dict[str, dict] = {}
    for k, group in enumerate([*styles, ALL, HELD_OUT]):
        if group == HELD_OUT:
            sel = [r for r in rows if r.get("source") == "holdout"]
        else:
            sel = [r for r in rows if group == ALL or r["style"] == group]
        if not sel:
            continue
        base = [r for r in sel if r["model"] == "base"]
        tuned = [r for r in sel if r["model"] == "tuned"]
        groups[group] = {
            m: bootstrap(m, base, tuned, resamples=resamples, seed=seed + 97 * k + j)
            for j, m in enumerate(metrics)
        }
    return groups


# ------------------------------------------------------------------------------------------------ table


def _fmt(cell: dict | None, signed: bool = False) -> str:
    if not cell or cell.get("value") is None:
        return "–"
    v = cell["value"]
    text = f"{v:+.2f}" if signed else f"{v:.2f}"
    if cell.get("ci"):
        lo, hi = cell["ci"]
        text += f" [{lo:+.2f}, {hi:+.2f}]" if signed else f" [{lo:.2f}, {hi:.2f}]"
    return text


TABLE_COLUMNS = (
    "style",
    "metric",
    "n",
    "base [95% CI]",
    "tuned [95% CI]",
    "tuned − base [95% CI]",
    "verdict",
)


def table_rows(groups: dict) -> list[list[str]]:
    rows = []
    for group, metrics in groups.items():
        for metric, m in metrics.items():
            n = f"{m['base']['n']}/{m['tuned']['n']}"
            rows.append(
                [group, metric, n, _fmt(m["base"]), _fmt(m["tuned"]), _fmt(m["diff"], True), m["verdict"]]
            )
    return rows


def table_markdown(groups: dict, title: str) -> str:
    lines = [f"# {title}", "", "| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    for row in table_rows(groups):
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
    return "\n".join(lines) + "\n"


def table_html(groups: dict, title: str) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(c)}</th>" for c in TABLE_COLUMNS)
    body = []
    for row in table_rows(groups):
        verdict = row[-1]
        cls = {"better": "better", "worse": "worse"}.get(verdict, "same")
        body.append(f'<tr class="{cls}">' + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>")
    rows = "".join(body)
    # the shipped CJK font, cut to the table's characters: no tofu where the browser has no CJK font
    font = font_face_css(title + "".join(TABLE_COLUMNS) + rows)
    return (
        '<!doctype html>\n<html lang="zh"><head><meta charset="utf-8">'
        f"<title>{esc(title)}</title><style>{font}"
        'body{font-family:"ZhufuCJK",sans-serif}table{border-collapse:collapse}td,th{border:1px solid #ccc;'
        "padding:.2rem .5rem;text-align:left}tr.better td:last-child{color:#1a7f37;font-weight:bold}"
        "tr.worse td:last-child{color:#b00020;font-weight:bold}</style></head><body>"
        f"<h1>{esc(title)}</h1><table><thead><tr>{head}</tr></thead><tbody>"
        + rows
        + "</tbody></table></body></html>\n"
    )


# ------------------------------------------------------------------------------------------------ run


def generate_answers(path, items: list[dict], config: dict, name: str, adapter=None) -> list[dict]:
    """Every input answered by one model: `samples` sampled answers each (or one greedy answer)."""

    ev = config["evaluate"]
    greedy = ev["decoding"] == "greedy"
    samples = 1 if greedy else ev["samples"]
    chat = load_chat_model(path, adapter)
    rows = []
    for i, item in enumerate(items):
        for k in range(samples):
            answer = reply(
                chat,
                item["input"],
                system=config.get("system_prompt") or TIANJI_SYSTEM,
                max_new_tokens=ev["max_new_tokens"],
                temperature=0.0 if greedy else ev["temperature"],
                seed=ev["seed"] + 1000 * i + k,
            )
            rows.append({"model": name, **item, "sample": k, "output": answer})
            log.info("%s | %s -> %s", name, item["input"], answer)
    del chat
    return rows


def score_rows(rows: list[dict], config: dict) -> list[dict]:
    words = keywords()
    return [{**r, "scores": score_answer(r["output"], r, config, words)} for r in rows]


def write_results(rows: list[dict], config: dict, out_dir_files: dict, settings: dict) -> dict:
    ev = config["evaluate"]
    groups = summarise(rows, list(config["styles"]), resamples=ev["bootstrap"], seed=ev["seed"])
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
