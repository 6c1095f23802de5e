"""Report figures as base64 PNGs, drawn on matplotlib's Agg canvas.

pyplot and the global backend are never touched, and matplotlib is imported only when a
figure is drawn (the markdown reports do not need it).
"""

from __future__ import annotations

import base64
import io
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

Points = list[tuple[int, float]]  # (tasks learned, accuracy %)


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _png_base64(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def heatmap_png(matrix: list[list[float | None]], title: str) -> str:
    """The lower-triangular accuracy matrix A[t][i] (%), annotated when small enough."""
    import numpy as np

    n_tasks = len(matrix)
    grid = np.full((n_tasks, n_tasks), np.nan)
    for t, row in enumerate(matrix):
        for i, value in enumerate(row):
            grid[t, i] = np.nan if value is None else value
    side = min(2.5 + 0.45 * n_tasks, 10.0)
    figure = _new_figure(side + 1.2, side)
    axes = figure.add_subplot()
    image = axes.imshow(np.ma.masked_invalid(grid), cmap="viridis", vmin=0, vmax=100)
    figure.colorbar(image, ax=axes, label="accuracy (%)", shrink=0.85)
    if n_tasks <= 15:
        _annotate_cells(axes, grid)
    ticks = range(n_tasks)
    axes.set_xticks(ticks)
    axes.set_yticks(ticks)
    axes.set_xlabel("evaluated task")
    axes.set_ylabel("after training task")
    axes.set_title(title)
    return _png_base64(figure)


def _annotate_cells(axes: Any, grid: Any) -> None:
    import numpy as np

    for t, i in zip(*np.nonzero(np.isfinite(grid)), strict=True):
        value = float(grid[t, i])
        colour = "black" if value > 60 else "white"
        axes.text(i, t, f"{value:.0f}", ha="center", va="center", fontsize=8, color=colour)


def curves_png(
    curves: dict[str, Points], title: str, ylabel: str = "average accuracy on seen tasks (%)"
) -> str:
    """One accuracy curve per label over the tasks learned."""
    from matplotlib.ticker import MaxNLocator

    figure = _new_figure(6.4, 4.0)
    axes = figure.add_subplot()
    for label, points in curves.items():
        if points:
            xs, ys = zip(*points, strict=True)
            axes.plot(xs, ys, marker="o", label=label)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("tasks learned")
    axes.set_ylabel(ylabel)
    axes.set_ylim(0, 100)
    axes.grid(alpha=0.3)
    axes.set_title(title)
    if curves:
        axes.legend(fontsize=8)
    return _png_base64(figure)


def scatter_png(points: list[tuple[str, float, float]], xlabel: str, title: str) -> str:
    """Labelled (cost, class-IL accuracy) points; a log x axis when costs span 50×."""
    figure = _new_figure(5.6, 4.0)
    axes = figure.add_subplot()
    for label, x, y in points:
        axes.scatter([x], [y], s=50)
        axes.annotate(label, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    axes.margins(0.2)
    xs = [x for _, x, _ in points]
    if xs and min(xs) > 0 and max(xs) / min(xs) > 50:
        axes.set_xscale("log")
    axes.set_xlabel(xlabel)
    axes.set_ylabel("class-IL final average accuracy (%)")
    axes.grid(alpha=0.3)
    axes.set_title(title)
    return _png_base64(figure)
