"""Figures of the dataset: suitability heatmap, length histograms per style, counts per cell after cleaning.

Chinese labels are drawn with the font shipped in resources/fonts/ (zhufu.fonts), so no system CJK font is
needed. numpy is imported when a figure is drawn.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from zhufu.config import load_config
from zhufu.fonts import pyplot, save_png
from zhufu.grid import is_suitable, load_suitability
from zhufu.io import read_json

log = logging.getLogger(__name__)


def suitability_figure(matrix: dict, recipients: list[str], scenes: list[str], out: str | Path) -> None:
    import numpy as np
    from matplotlib.colors import ListedColormap

    plt = pyplot()
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
    save_png(fig, out)
    plt.close(fig)


def lengths_figure(kept: list[dict], styles: dict, out: str | Path) -> None:
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()
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
    save_png(fig, out)
    plt.close(fig)


def cells_figure(kept: list[dict], recipients: list[str], scenes: list[str], out: str | Path) -> None:
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()
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
    save_png(fig, out)
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
