"""The CJK font shipped in resources/fonts/: for matplotlib figures, as an inlined subset in standalone HTML
files, and served by the local web pages, so Chinese shows without a system CJK font.

matplotlib and fontTools are imported when they are used: matplotlib is slow to import, and its backend
must be chosen (`matplotlib.use("Agg")`) before pyplot is imported.
"""

from __future__ import annotations

from pathlib import Path

from zhufu.config import RESOURCES, package_file
from zhufu.errors import ConfigError
from zhufu.io import atomic_path

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


def pyplot():
    """matplotlib's pyplot on the Agg backend, drawing with the shipped CJK font."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    prop = cjk_font()
    plt.rcParams["font.family"] = [prop.get_name(), "DejaVu Sans"]
    plt.rcParams["axes.unicode_minus"] = False
    return plt


def save_png(fig, out: str | Path) -> None:
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
