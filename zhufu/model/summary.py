"""Base vs tuned, per metric: bootstrap intervals, verdicts and the table (Markdown and a standalone HTML
page), shared by the evaluation (zhufu.model.evaluate) and the LLM judge (zhufu.model.judge)."""

from __future__ import annotations

import html
from typing import Any

from zhufu.fonts import font_face_css

ALL = "all"
# every style, the held-out grid pairs only (Tianji's inputs left out: some name scenes and recipients that
# are in no training record, 元宵节 and 大家, so no model trained here can get them right)
HELD_OUT = "held-out"
# the requests that are not blessings (zhufu.model.evaluate's off-task inputs), in no other group
OFF_TASK = "off-task"
OFF_TASK_SOURCE = "off_task"  # their `source` in generations.jsonl
# metrics where less is better: a verdict is `better` when tuned − base lies below 0
LOWER_IS_BETTER = frozenset({"leakage"})
# distinct-n's bootstrap multiplies presence matrices a block of n-grams at a time: at most this many cells
GRAM_BLOCK_CELLS = 4_000_000


def distinct_n(texts: list[str], n: int) -> float:
    grams = [t[i : i + n] for t in texts for i in range(len(t) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def _value(metric: str, rows: list[dict]) -> float | None:
    if metric.startswith("distinct_"):
        return distinct_n([r["output"] for r in rows], int(metric[-1])) if rows else None
    flags = [r["scores"][metric] for r in rows if r["scores"][metric] is not None]
    return sum(flags) / len(flags) if flags else None


def _resampled(metric: str, rows: list[dict], idx):
    """`_value` of every resample (a row of `idx`, indices into `rows`), as one array, computed from counts:
    the same numbers as `_value` on each resample (the sums are of integers, exact in any order), without
    building the resampled lists. The shares (scores are bools or 1–5 integers) sum the drawn flags;
    distinct-n counts each row's n-grams once, and a resample's distinct ones from which rows it holds
    (resample × row presence times row × gram presence, a block of grams at a time to bound the memory)."""
    import numpy as np

    if not metric.startswith("distinct_"):
        flags = np.array([float(r["scores"][metric]) for r in rows])
        return flags[idx].sum(axis=1) / len(rows)
    n = int(metric[-1])
    ids: dict[str, int] = {}
    grams = [
        [ids.setdefault(t[i : i + n], len(ids)) for i in range(len(t) - n + 1)]
        for t in (r["output"] for r in rows)
    ]
    total = np.array([len(g) for g in grams])[idx].sum(axis=1)
    own = [np.unique(np.array(g, dtype=np.int64)) for g in grams]  # each row's distinct n-grams
    pair_rows, pair_grams = np.repeat(np.arange(len(rows)), [len(u) for u in own]), np.concatenate(own)
    drawn = np.zeros((len(idx), len(rows)), dtype=np.float32)  # resample × row: the resample holds the row
    np.put_along_axis(drawn, idx, 1.0, axis=1)
    distinct = np.zeros(len(idx), dtype=np.int64)
    block = max(1, GRAM_BLOCK_CELLS // max(len(rows), len(idx)))
    for lo in range(0, len(ids), block):
        inside = (pair_grams >= lo) & (pair_grams < lo + block)
        held = np.zeros((len(rows), min(block, len(ids) - lo)), dtype=np.float32)  # row × gram: has it
        held[pair_rows[inside], pair_grams[inside] - lo] = 1.0
        distinct += np.count_nonzero(drawn @ held, axis=1)  # float32 sums of at most len(rows) ones: exact
    return np.divide(distinct, total, out=np.zeros(len(idx)), where=total > 0)


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
        draws[name] = _resampled(metric, rows, idx)
        out[name]["ci"] = _interval(metric, value, draws[name], level)
    if len(draws) == 2:
        diff = draws["tuned"] - draws["base"]
        value = out["tuned"]["value"] - out["base"]["value"]
        lo, hi = _interval(metric, value, diff, level)
        up, down = ("better", "worse") if metric not in LOWER_IS_BETTER else ("worse", "better")
        verdict = up if lo > 0 else down if hi < 0 else "no clear difference"
        out["diff"] = {"value": value, "ci": [lo, hi]}
        out["verdict"] = verdict
    else:
        out["diff"], out["verdict"] = None, "not scored"
    return out


def summarise(
    rows: list[dict],
    styles: list[str],
    *,
    metrics: tuple[str, ...],
    resamples: int = 1000,
    seed: int = 0,
    off_task_metrics: tuple[str, ...] | None = None,
) -> dict:
    """metrics.json's `groups`: per style, `all`, `held-out` (the held-out grid pairs of every style) and
    `off-task` (the requests that are not blessings, source off_task, scored with `off_task_metrics`,
    default `metrics`; they are in no other group), per metric, both models with intervals and a verdict."""
    groups: dict[str, dict] = {}
    blessings = [r for r in rows if r.get("source") != OFF_TASK_SOURCE]
    for k, group in enumerate([*styles, ALL, HELD_OUT, OFF_TASK]):
        names = metrics
        if group == HELD_OUT:
            sel = [r for r in blessings if r.get("source") == "holdout"]
        elif group == OFF_TASK:
            sel = [r for r in rows if r.get("source") == OFF_TASK_SOURCE]
            names = off_task_metrics or metrics
        else:
            sel = [r for r in blessings if group == ALL or r["style"] == group]
        if not sel:
            continue
        base = [r for r in sel if r["model"] == "base"]
        tuned = [r for r in sel if r["model"] == "tuned"]
        groups[group] = {
            m: bootstrap(m, base, tuned, resamples=resamples, seed=seed + 97 * k + j)
            for j, m in enumerate(names)
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
