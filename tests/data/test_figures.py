"""The figures draw Chinese with the shipped font: real glyphs, not tofu boxes."""

import json
import warnings

import numpy as np
import pytest
from helpers import ROOT, run_cmd

from zhufu.config import load_config
from zhufu.data.figures import draw_figures
from zhufu.fonts import FONT_PATH

CONFIG = load_config()


def render(text: str, font_path) -> np.ndarray:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.font_manager import FontProperties

    fig = Figure(figsize=(1.2, 0.6), dpi=80)
    FigureCanvasAgg(fig)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DejaVu warns about the missing glyphs; that is the point
        fig.text(0.05, 0.2, text, fontproperties=FontProperties(fname=str(font_path), size=22))
        fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., 0].copy()


def dejavu():
    from matplotlib import font_manager

    return font_manager.findfont("DejaVu Sans", fallback_to_default=False)


def test_the_font_is_shipped_small_and_licensed():
    assert FONT_PATH.is_file() and FONT_PATH.stat().st_size < 20 * 2**20
    assert "Apache" in (FONT_PATH.parent / "README.md").read_text()


def test_the_font_has_every_glyph_the_figures_need():
    from fontTools.ttLib import TTFont

    cmap = TTFont(str(FONT_PATH)).getBestCmap()
    texts = [
        "祝福",
        "祝福对象 × 场景：适合生成的组合",
        "条数字数（清洗后）长度带",
        "清洗后每个组合的条数，共另有不在网格内",
    ]
    texts += CONFIG["grid"]["recipients"] + CONFIG["grid"]["scenes"] + list(CONFIG["styles"])
    missing = {ch for t in texts for ch in t if not ch.isspace() and ord(ch) not in cmap}
    assert not missing


def test_zhufu_renders_as_two_different_glyphs_not_tofu():
    ours_zhu, ours_fu = render("祝", FONT_PATH), render("福", FONT_PATH)
    tofu_zhu, tofu_fu = render("祝", dejavu()), render("福", dejavu())
    # DejaVu has no Han glyphs: both characters come out as the same box
    assert np.array_equal(tofu_zhu, tofu_fu)
    # the shipped font draws two different characters, and neither is DejaVu's box
    assert not np.array_equal(ours_zhu, ours_fu)
    assert not np.array_equal(ours_zhu, tofu_zhu)
    assert (ours_zhu < 128).sum() > 20 and (ours_fu < 128).sum() > 20  # ink on the canvas


@pytest.fixture
def report(tmp_path):
    kept = [
        {"id": f"r{i}", "recipient": r, "scene": s, "style": st, "chars": 10 + (i * 7) % 30}
        for i, (r, s, st) in enumerate(
            (r, s, st)
            for r in CONFIG["grid"]["recipients"]
            for s in CONFIG["grid"]["scenes"]
            for st in CONFIG["styles"]
        )
    ]
    path = tmp_path / "report.json"
    path.write_text(json.dumps({"kept": kept}, ensure_ascii=False))
    return path


def test_figures_are_pngs_drawn_without_missing_glyph_warnings(tmp_path, report):
    csv = tmp_path / "s.csv"
    scenes = CONFIG["grid"]["scenes"]
    csv.write_text(
        "recipient,"
        + ",".join(scenes)
        + "\n"
        + "爷爷,"
        + ",".join("0" if s == "谈判顺利" else "1" for s in scenes)
        + "\n",
        encoding="utf-8",
    )
    outs = [tmp_path / f"{n}.png" for n in ("suitability", "lengths", "cells")]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        draw_figures(report, csv, CONFIG["grid"]["recipients"], scenes, CONFIG["styles"], *outs)
    glyph_warnings = [str(w.message) for w in caught if "missing from" in str(w.message)]
    assert glyph_warnings == []
    for out in outs:
        data = out.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert not list(tmp_path.glob(".*.tmp"))


def test_figures_cli_writes_the_three_pngs(tmp_path, report):
    import sys

    r = run_cmd(
        [sys.executable, "-m", "zhufu", "figures", "--report", str(report), "-o", str(tmp_path / "f")],
        cwd=ROOT,
    )
    if not (ROOT / "resources" / "suitability.csv").is_file():
        assert r.returncode == 1 and "suitability" in r.stderr
        return
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "f").iterdir()) == [
        "cells.png",
        "lengths.png",
        "suitability.png",
    ]
