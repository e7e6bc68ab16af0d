"""Figures of the dataset: suitability heatmap, length histograms per style, counts per cell after cleaning.

Chinese labels are drawn with the font shipped in resources/fonts/, so no system CJK font is needed.
matplotlib and numpy are imported when a figure is drawn: matplotlib is slow to import, and its backend
must be chosen (`matplotlib.use("Agg")`) before pyplot is imported.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from zhufu.config import RESOURCES, load_config, package_file
from zhufu.errors import ConfigError
from zhufu.grid import is_suitable, load_suitability
from zhufu.io import atomic_path, read_json

log = logging.getLogger(__name__)

FONT_PATH = package_file(RESOURCES, "fonts", "WenQuanYiMicroHei.ttf")


def cjk_font():
    """Register the shipped CJK font with matplotlib and return its FontProperties."""
    from matplotlib import font_manager

    if not FONT_PATH.is_file():
        raise ConfigError(f"{FONT_PATH}: the shipped CJK font is missing (restore it from git)")
    font_manager.fontManager.addfont(str(FONT_PATH))
    return font_manager.FontProperties(fname=str(FONT_PATH))


def font_face_css(text: str, family: str = "ZhufuCJK") -> str:
    """An @font-face rule with the shipped CJK font cut down to the characters of `text` (fontTools' subsetter),
    inlined as a data URI: a standalone HTML file (the evaluation table, also shown inside Snakemake's report)
    then draws Chinese in a browser without CJK fonts, for a few kB instead of the font's 4.6 MB."""
    import base64
    import io

    from fontTools import subset

    if not FONT_PATH.is_file():
        raise ConfigError(f"{FONT_PATH}: the shipped CJK font is missing (restore it from git)")
    options = subset.Options()
    options.name_IDs = ["*"]  # keep the font's names and licence notice
    options.notdef_outline = True
    font = subset.load_font(str(FONT_PATH), options)
    subsetter = subset.Subsetter(options)
    subsetter.populate(text="".join(sorted(set(text))))
    subsetter.subset(font)
    buf = io.BytesIO()
    font.save(buf)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'@font-face{{font-family:"{family}";src:url(data:font/ttf;base64,{data}) format("truetype")}}'


def _setup():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    prop = cjk_font()
    plt.rcParams["font.family"] = [prop.get_name(), "DejaVu Sans"]
    plt.rcParams["axes.unicode_minus"] = False
    return plt


def _save(fig, out: str | Path) -> None:
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")


def suitability_figure(matrix: dict, recipients: list[str], scenes: list[str], out: str | Path) -> None:
    import numpy as np
    from matplotlib.colors import ListedColormap

    plt = _setup()
    data = np.array([[1 if is_suitable(matrix, r, s) else 0 for s in scenes] for r in recipients])
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * len(scenes), 1.2 + 0.38 * len(recipients)))
    ax.imshow(data, cmap=ListedColormap(["#d9d9d9", "#2b8cbe"]), vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(scenes)), scenes, rotation=45, ha="right")
    ax.set_yticks(range(len(recipients)), recipients)
    for i in range(len(recipients)):
        for j in range(len(scenes)):
            ax.text(
                j,
                i,
                "✓" if data[i, j] else "×",
                ha="center",
                va="center",
                color="white" if data[i, j] else "#555",
            )
    ax.set_title(f"祝福对象 × 场景：适合生成的组合 {int(data.sum())}/{data.size}")
    ax.set_xlabel("场景")
    ax.set_ylabel("对象")
    _save(fig, out)
    plt.close(fig)


def lengths_figure(kept: list[dict], styles: dict, out: str | Path) -> None:
    from matplotlib.ticker import MaxNLocator

    plt = _setup()
    names = [s for s in styles if any(k["style"] == s for k in kept)] or list(styles)
    names += sorted({k["style"] for k in kept} - set(names))
    fig, axes = plt.subplots(len(names), 1, figsize=(7, 1.0 + 1.9 * len(names)), squeeze=False)
    for ax, name in zip(axes[:, 0], names, strict=True):
        ns = [k["chars"] for k in kept if k["style"] == name]
        band = styles.get(name, {})
        hi = max([band.get("max_chars", 0), *ns, 1])
        ax.hist(ns, bins=range(0, hi + 3, max(1, (hi + 2) // 40)), color="#2b8cbe", edgecolor="white")
        for x in (band.get("min_chars"), band.get("max_chars")):
            if x is not None:
                ax.axvline(x, color="#e34a33", linestyle="--", linewidth=1)
        ax.set_title(
            f"{name}：{len(ns)} 条，长度带 {band.get('min_chars', '?')}–{band.get('max_chars', '?')} 字",
            fontsize=10,
        )
        ax.set_ylabel("条数")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes[-1, 0].set_xlabel("字数（清洗后）")
    fig.tight_layout()
    _save(fig, out)
    plt.close(fig)


def cells_figure(kept: list[dict], recipients: list[str], scenes: list[str], out: str | Path) -> None:
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    plt = _setup()
    counts = Counter((k["recipient"], k["scene"]) for k in kept)
    data = np.array([[counts.get((r, s), 0) for s in scenes] for r in recipients])
    fig, ax = plt.subplots(figsize=(1.6 + 0.6 * len(scenes), 1.2 + 0.38 * len(recipients)))
    im = ax.imshow(data, cmap="YlGnBu", aspect="auto", vmin=0)
    ax.set_xticks(range(len(scenes)), scenes, rotation=45, ha="right")
    ax.set_yticks(range(len(recipients)), recipients)
    top = data.max() if data.size else 0
    for i in range(len(recipients)):
        for j in range(len(scenes)):
            ax.text(
                j,
                i,
                str(data[i, j]),
                ha="center",
                va="center",
                color="white" if data[i, j] > top / 2 else "black",
            )
    outside = sum(n for (r, s), n in counts.items() if r not in recipients or s not in scenes)
    extra = f"（另有 {outside} 条不在网格内）" if outside else ""
    ax.set_title(f"清洗后每个组合的条数，共 {int(data.sum())} 条{extra}")
    fig.colorbar(im, ax=ax, shrink=0.8, ticks=MaxNLocator(integer=True))
    _save(fig, out)
    plt.close(fig)


def draw_figures(
    report: str | Path,
    suitability: str | Path | None,
    recipients: list[str],
    scenes: list[str],
    styles: dict,
    out_suitability: str | Path,
    out_lengths: str | Path,
    out_cells: str | Path,
) -> None:
    """All three figures from the clean report's `kept` list and the suitability matrix."""
    kept = read_json(report)["kept"]
    matrix = load_suitability(suitability) if suitability else {}
    suitability_figure(matrix, recipients, scenes, out_suitability)
    lengths_figure(kept, styles, out_lengths)
    cells_figure(kept, recipients, scenes, out_cells)
    log.info("figures: %s, %s, %s", out_suitability, out_lengths, out_cells)


def add_figures_arguments(parser) -> None:
    parser.add_argument(
        "--report", default="results/data/clean_report.json", help="clean report (its kept rows)"
    )
    parser.add_argument("-o", "--outdir", default="results/figures", help="folder for the PNGs")
    parser.add_argument(
        "--config", help="config with the grid, styles and suitability matrix (default config.yaml)"
    )


def run_figures(args) -> int:
    config = load_config(args.config)
    out = Path(args.outdir)
    names = [out / f"{n}.png" for n in ("suitability", "lengths", "cells")]
    grid = config["grid"]
    draw_figures(
        args.report, grid.get("suitability"), grid["recipients"], grid["scenes"], config["styles"], *names
    )
    for n in names:
        print(n)
    return 0


# ---------------------------------------------------------------- the training loss


def read_scalars(work_dir: str | Path) -> list[tuple[int, float]]:
    """(step, loss) from XTuner's own scalars log, work_dir/<timestamp>/vis_data/scalars.json (mmengine's
    LocalVisBackend, one JSON object per logging interval). A resumed run has one folder per start; a later
    start's value wins for a step it logged again."""
    import json

    files = sorted(Path(work_dir).glob("*/vis_data/scalars.json"))
    if not files:
        raise ConfigError(f"{work_dir}: no */vis_data/scalars.json (XTuner's scalars log); train first")
    points: dict[int, float] = {}
    for f in files:
        for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                raise ConfigError(f"{f}, line {n}: not a JSON object") from None
            if isinstance(row, dict) and "loss" in row and "step" in row:
                points[int(row["step"])] = float(row["loss"])
    if not points:
        raise ConfigError(f"{work_dir}: the scalars log has no loss values")
    return sorted(points.items())


def loss_figure(work_dir: str | Path, out: str | Path) -> list[tuple[int, float]]:
    points = read_scalars(work_dir)
    plt = _setup()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    steps, losses = zip(*points, strict=True)
    ax.plot(steps, losses, color="#2b8cbe", marker="." if len(points) < 60 else None)
    ax.set_xlabel("迭代步数 (iter)")
    ax.set_ylabel("训练损失 (loss)")
    ax.set_title(f"训练损失：{losses[0]:.2f} → {losses[-1]:.2f}（{len(points)} 个记录点）")
    ax.grid(alpha=0.3)
    _save(fig, out)
    plt.close(fig)
    log.info("loss figure: %s (%d points)", out, len(points))
    return points
