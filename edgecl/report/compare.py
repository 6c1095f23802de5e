"""Several runs side by side: the comparison table (ratios to the first run) and its page."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from edgecl.report import formatting as fmt
from edgecl.report.document import Block, Note, Plot, Section, Table, render_html, render_markdown
from edgecl.report.plots import curves_png, scatter_png
from edgecl.report.values import (
    ENERGY_NOTE,
    TRAIN_PARTS_SUM,
    accuracy_points,
    headline,
    seen_classes,
)
from edgecl.schema import RunResults

TITLE = "edgecl run comparison"
# (row key, column header, formatter)
COMPARE_COLUMNS: tuple[tuple[str, str, Callable[[Any], str]], ...] = (
    ("name", "Run", str),
    ("method", "Method", fmt.text),
    ("class_il_final", "Class-IL final acc (%)", fmt.percent),
    ("class_il_avg_incremental", "Class-IL avg incremental acc (%)", fmt.percent),
    ("class_il_forgetting", "Forgetting, Chaudhry (pts)", fmt.percent_or_na),
    ("class_il_forgetting_with_final", "Forgetting, incl. last row (pts)", fmt.percent_or_na),
    ("task_il_final", "Task-IL final acc (%)", fmt.percent),
    ("train_gflops", "Train GFLOPs", fmt.human),
    ("selection_gflops", "Selection GFLOPs", fmt.human),
    ("prefix_gflops", "Prefix GFLOPs", fmt.human),
    ("train_footprint_mib", "Training footprint (MiB, largest step)", fmt.human),
    ("train_time_s", "Train time (s)", fmt.human),
    ("energy_host_j", "Est. energy, host (J)", fmt.human),
    ("flops_ratio", "FLOPs ×", fmt.times),
    ("memory_ratio", "Memory ×", fmt.times),
    ("time_ratio", "Time ×", fmt.times),
    ("energy_ratio", "Energy ×", fmt.times),
    ("acc_delta", "Class-IL acc Δ (pts)", fmt.signed),
)
# accuracy columns shown with their 95 % half-width (edgecl.metrics.intervals)
INTERVAL_KEYS = {
    "class_il_final": "class_il_final_ci95",
    "class_il_avg_incremental": "class_il_avg_incremental_ci95",
    "task_il_final": "task_il_final_ci95",
}
INTERVAL_NOTE = (
    "Accuracies show ± the half-width of their 95 % interval from the number of test images "
    "(binomial, normal approximation; the average incremental accuracy's is an upper bound). "
    "Forgetting, Chaudhry: max over the rows before the last; incl. last row: the "
    "l2p-pytorch / Mammoth / SparCL definition, never negative.")
RATIOS = (  # (ratio key, the headline value it compares)
    ("flops_ratio", "train_gflops"),
    ("memory_ratio", "train_footprint_mib"),
    ("time_ratio", "train_time_s"),
    ("energy_ratio", "energy_host_j"),
)


def compare_table(results: Sequence[RunResults]) -> list[dict[str, Any]]:
    """One row per run, with ratios to the first run.

    Keys: ``name, method, class_il_final, class_il_avg_incremental, class_il_forgetting,
    task_il_final`` (percent / points), ``train_gflops`` (every training part),
    ``selection_gflops, prefix_gflops`` (its selection and frozen-prefix parts),
    ``train_mflops_per_sample`` (per stream sample), ``train_footprint_mib`` (largest step),
    ``train_time_s, energy_host_j`` (estimated, whole run), and relative to the first run
    ``flops_ratio``, ``memory_ratio``, ``time_ratio``, ``energy_ratio`` (×) and ``acc_delta``
    (class-IL final accuracy, points). Missing values are None.
    """
    rows = [headline(result) for result in results]
    for row in rows:
        for key, value in RATIOS:
            row[key] = fmt.ratio(row[value], rows[0][value])
        row["acc_delta"] = fmt.difference(row["class_il_final"], rows[0]["class_il_final"])
    return rows


def _cell(row: dict[str, Any], key: str, show: Callable[[Any], str]) -> str:
    if key in INTERVAL_KEYS:
        return fmt.with_interval(row[key], row[INTERVAL_KEYS[key]])
    return show(row[key])


def _section(results: Sequence[RunResults]) -> Section:
    rows = compare_table(results)
    table = Table(
        headers=[header for _, header, _ in COMPARE_COLUMNS],
        rows=[[_cell(row, key, show) for key, _, show in COMPARE_COLUMNS] for row in rows],
    )
    blocks: list[Block] = [table]
    if results:
        blocks.append(Note(
            f"Ratios and Δ are relative to the first run ({results[0].label}). "
            f"Train GFLOPs and FLOPs × count every part of training ({TRAIN_PARTS_SUM}); "
            "memory is the training footprint of the largest step; time is the training loop "
            "time; energy is the host estimate for the whole run."
        ))
    if results:
        argmax = sorted({row["class_il_logits"] for row in rows})
        blocks.append(Note(f"{INTERVAL_NOTE} Class-IL argmax over {' / '.join(argmax)} "
                           "logits (seen: the classes seen so far; all: every logit)."))
    blocks.append(Note(ENERGY_NOTE, highlight=True))
    return Section("Comparison", blocks)


def compare_markdown(results: Sequence[RunResults]) -> str:
    """A markdown comparison table of several runs, first run as the reference."""
    return render_markdown(TITLE, [_section(results)])


def _figures(results: Sequence[RunResults]) -> list[Block]:
    rows = compare_table(results)
    curves = {result.label: accuracy_points(result) for result in results}
    figures: list[Block] = []
    if any(curves.values()):
        title = "Class-IL average accuracy after each task"
        ylabel = "average accuracy on seen tasks (%)"
        if any(seen_classes(result) for result in results):
            ylabel = "class-IL accuracy on seen tasks/classes (%)"
        figures.append(Plot(title, curves_png(curves, title, ylabel)))
    axes_specs = (
        ("train_gflops", "training compute (GFLOPs, every part)", "Accuracy vs compute"),
        ("train_footprint_mib", "training footprint, largest step (MiB)", "Accuracy vs memory"),
    )
    for key, xlabel, title in axes_specs:
        points = [
            (row["name"], row[key], row["class_il_final"])
            for row in rows
            if row[key] is not None and row["class_il_final"] is not None
        ]
        if points:
            figures.append(Plot(title, scatter_png(points, xlabel, title)))
    return figures


def compare_html(results: Sequence[RunResults]) -> str:
    """A self-contained HTML comparison page: table, accuracy curves, accuracy-vs-cost plots."""
    return render_html(TITLE, [_section(results), Section("Plots", _figures(results))])
