"""The accuracy-vs-cost Pareto plot of a sweep, as a base64 PNG (matplotlib's Agg canvas;
pyplot and the global backend are never touched)."""

from __future__ import annotations

import base64
import io
from typing import Any

from edgecl.sweep.metrics import METRICS


def pareto_png(rows: list[dict[str, Any]], cost: str, accuracy: str, front: list[str]) -> str:
    """Every completed trial as a point (one colour per method); the trials on the front
    ringed and joined by a step line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.4), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    done = [r for r in rows if r["status"] == "completed" and r["metrics"][cost] is not None
            and r["metrics"][accuracy] is not None]
    for label in dict.fromkeys(r["label"] for r in done):
        mine = [r for r in done if r["label"] == label]
        axes.scatter([r["metrics"][cost] for r in mine], [r["metrics"][accuracy] for r in mine],
                     s=36, alpha=0.8, label=label)
    on_front = sorted((r for r in done if r["key"] in front), key=lambda r: r["metrics"][cost])
    if on_front:
        axes.plot([r["metrics"][cost] for r in on_front],
                  [r["metrics"][accuracy] for r in on_front],
                  color="black", linewidth=1, drawstyle="steps-post", marker="o",
                  markersize=11, markerfacecolor="none", label="Pareto front")
    xs = [r["metrics"][cost] for r in done]
    if xs and min(xs) > 0 and max(xs) / min(xs) > 50:
        axes.set_xscale("log")
    axes.set_xlabel(METRICS[cost].label)
    axes.set_ylabel(METRICS[accuracy].label)
    axes.grid(alpha=0.3)
    axes.set_title(f"{len(done)} completed trials")
    if done:
        axes.legend(fontsize=8)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
