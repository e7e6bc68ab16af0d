"""The training loss curve, from XTuner's own scalars log (the loss_figure rule)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from zhufu.errors import ConfigError
from zhufu.fonts import pyplot, save_png

log = logging.getLogger(__name__)


def read_scalars(work_dir: str | Path) -> list[tuple[int, float]]:
    """(step, loss) from XTuner's own scalars log, work_dir/<timestamp>/vis_data/scalars.json (mmengine's
    LocalVisBackend, one JSON object per logging interval). A resumed run has one folder per start; a later
    start's value wins for a step it logged again."""
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
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    steps, losses = zip(*points, strict=True)
    ax.plot(steps, losses, color="#2b8cbe", marker="." if len(points) < 60 else None)
    ax.set_xlabel("迭代步数 (iter)")
    ax.set_ylabel("训练损失 (loss)")
    ax.set_title(f"训练损失：{losses[0]:.2f} → {losses[-1]:.2f}（{len(points)} 个记录点）")
    ax.grid(alpha=0.3)
    save_png(fig, out)
    plt.close(fig)
    log.info("loss figure: %s (%d points)", out, len(points))
    return points
