"""The report of one run: summary, accuracy, cost, scenario and configuration sections."""

from __future__ import annotations

import json

from edgecl.report import formatting as fmt
from edgecl.report.cost_tables import (
    energy_blocks,
    flops_blocks,
    memory_table,
    per_task_table,
    scenario_blocks,
    time_table,
)
from edgecl.report.document import (
    Block,
    Code,
    Note,
    Plot,
    Section,
    Table,
    render_html,
    render_markdown,
)
from edgecl.report.plots import curves_png, heatmap_png
from edgecl.report.values import (
    accuracy_intervals,
    accuracy_points,
    headline,
    matrix,
    row_averages,
    seen_classes,
)
from edgecl.schema import AccuracySummary, CurvePoint, Environment, RunResults

SETTINGS = (("class_il", "Class-IL"), ("task_il", "Task-IL"))


def _title(result: RunResults) -> str:
    return f"edgecl run report: {result.label}"


# ---- summary -----------------------------------------------------------------------------
def _summary_table(result: RunResults) -> Table:
    env, scenario, accuracy = result.environment, result.scenario, result.accuracy
    widths = accuracy_intervals(result)
    rows = [
        ["Run", result.label],
        ["Method", fmt.text(result.method)],
        ["Status", result.status],
        ["Dataset", fmt.text(scenario.dataset)],
        ["Tasks", fmt.count(scenario.n_tasks)],
        ["Evaluation", _evaluation_text(result)],
    ]
    if seen_classes(result):
        rows += _seen_classes_rows(accuracy.class_il, widths)
    else:
        rows += _per_task_rows(accuracy.class_il, "Class-IL", widths["class_il_final_ci95"],
                               widths["class_il_avg_incremental_ci95"])
        if accuracy.task_il is not None:
            rows += _per_task_rows(accuracy.task_il, "Task-IL", widths["task_il_final_ci95"])
    rows.append(["Class-IL argmax over", f"{accuracy.class_il_logits} logits"])
    cost = headline(result)
    versions = (result.edgecl_version, env.python, env.torch)
    rows += [
        ["Train GFLOPs (every part)", fmt.human(cost["train_gflops"])],
        ["of which selection", fmt.human(cost["selection_gflops"])],
        ["of which frozen prefix", fmt.human(cost["prefix_gflops"])],
        ["Train MFLOPs per stream sample", fmt.human(cost["train_mflops_per_sample"])],
        ["Training footprint, largest step (MiB)", fmt.human(cost["train_footprint_mib"])],
        ["Train time (s)", fmt.human(cost["train_time_s"])],
        ["Est. energy, host (J, not measured)", fmt.human(cost["energy_host_j"])],
        ["edgecl / Python / torch", " / ".join(map(fmt.text, versions))],
        ["Device", _device_text(env)],
        ["Platform", fmt.text(env.platform)],
    ]
    return Table(["Item", "Value"], rows)


def _per_task_rows(acc: AccuracySummary, label: str, final_ci: float | None = None,
                   incremental_ci: float | None = None) -> list[list[str]]:
    return [
        [f"{label} final avg acc (%, ± 95 %)", fmt.with_interval(acc.final_average, final_ci)],
        [f"{label} avg incremental acc (%, ± 95 %)",
         fmt.with_interval(acc.average_incremental, incremental_ci)],
        [f"{label} forgetting, Chaudhry (pts)", fmt.percent_or_na(acc.forgetting)],
        [f"{label} forgetting, incl. last row (pts)",
         fmt.percent_or_na(acc.forgetting_with_final)],
        [f"{label} BWT (pts)", fmt.signed_or_na(acc.bwt)],
    ]


def _seen_classes_rows(acc: AccuracySummary, widths: dict[str, float | None]
                       ) -> list[list[str]]:
    return [
        ["Class-IL final acc, all seen classes (%, ± 95 %)",
         fmt.with_interval(acc.final_average, widths["class_il_final_ci95"])],
        ["Class-IL mean over the curve (%)", fmt.percent(acc.average_incremental)],
        ["Class-IL forgetting / BWT (pts)", fmt.NOT_DEFINED],
        ["Task-IL accuracy (%)", fmt.NOT_DEFINED],
    ]


def _evaluation_text(result: RunResults) -> str:
    if not seen_classes(result):
        return "per task: accuracy on each task seen so far, after every task"
    # the cadence is a config setting; the resolved config is stored as written (a plain dict)
    every = (result.config.get("eval") or {}).get("every_n_tasks")
    cadence = f"every {every} tasks and after the last" if every and every != 1 else "every task"
    points = len(result.accuracy.seen_classes_curve or [])
    return (f"seen classes: one accuracy on the test images of all classes seen so far, after "
            f"{cadence} ({points} points)")


def _device_text(env: Environment) -> str:
    parts = [fmt.text(env.device)]
    if env.gpu:
        parts.append(env.gpu)
    if env.threads:
        parts.append(f"{env.threads} threads")
    if env.processor:
        parts.append(env.processor)
    return ", ".join(parts)


# ---- accuracy ----------------------------------------------------------------------------
def _matrix_table(rows: list[list[float | None]], caption: str) -> Table:
    n_tasks = len(rows)
    headers = ["After task", *(f"T{i}" for i in range(n_tasks)), "Avg"]
    cells = []
    for t, (row, average) in enumerate(zip(rows, row_averages(rows), strict=True)):
        values = [fmt.percent(v) for v in row] + [""] * (n_tasks - len(row))
        cells.append([str(t), *values, fmt.percent(average)])
    return Table(headers, cells, caption)


def _seen_curve_table(curve: list[CurvePoint]) -> Table:
    rows = [
        [str(p.task), fmt.count(p.seen_classes), fmt.count(p.test_samples),
         fmt.percent(p.class_il)]
        for p in curve
    ]
    headers = ["After task", "Seen classes", "Test images", "Class-IL acc (%)"]
    return Table(headers, rows, "Class-IL accuracy on all seen classes")


def _accuracy_section(result: RunResults) -> Section:
    if seen_classes(result):
        return Section("Accuracy", [
            Note("Protocol seen_classes: after the listed tasks, one class-IL accuracy (%) on the "
                 "test images of every class seen so far; forgetting, BWT and task-IL are not "
                 "defined (n/a)."),
            _seen_curve_table(result.accuracy.seen_classes_curve or []),
        ])
    blocks: list[Block] = [
        Note("Row t: accuracy (%) on tasks 0..t after training task t; Avg is the row mean.")
    ]
    for setting, label in SETTINGS:
        rows = matrix(result, setting)
        if rows:
            blocks.append(_matrix_table(rows, f"{label} accuracy matrix"))
        else:
            blocks.append(Note(f"{label} accuracy was not recorded for this run."))
    return Section("Accuracy", blocks)


def _accuracy_figures(result: RunResults) -> list[Block]:
    if seen_classes(result):
        points = accuracy_points(result)
        if not points:
            return []
        title = "Class-IL accuracy on all seen classes"
        return [Plot(title, curves_png({"Class-IL": points}, title,
                                       "accuracy on seen classes (%)"))]
    figures: list[Block] = []
    curves: dict[str, list[tuple[int, float]]] = {}
    for setting, label in SETTINGS:
        rows = matrix(result, setting)
        if rows:
            title = f"{label} accuracy matrix (%)"
            figures.append(Plot(title, heatmap_png(rows, title)))
            curves[label] = accuracy_points(result, setting)
    if curves:
        title = "Average accuracy after each task"
        figures.append(Plot(title, curves_png(curves, title)))
    return figures


# ---- the document ------------------------------------------------------------------------
def _sections(result: RunResults, figures: list[Block]) -> list[Section]:
    accuracy = _accuracy_section(result)
    accuracy.blocks[:0] = figures
    cost = Section("Cost", [*flops_blocks(result), memory_table(result), time_table(result),
                            *energy_blocks(result)])
    per_task = per_task_table(result)
    if per_task is not None:
        cost.blocks.append(per_task)
    config = Code(json.dumps(result.config, indent=2, sort_keys=True, default=str),
                  "Full run configuration")
    sections = [
        Section("Summary", [_summary_table(result)]),
        accuracy,
        cost,
        Section("Scenario", scenario_blocks(result)),
        Section("Configuration", [config]),
    ]
    if result.extra:
        extra = json.dumps(result.extra, indent=2, sort_keys=True, default=str)
        summary = f"Results specific to {result.method}"
        sections.append(Section("Method-specific results", [Code(extra, summary)]))
    return sections


def run_markdown(result: RunResults) -> str:
    """A markdown report of one run: summary, accuracy matrices and the cost breakdown."""
    return render_markdown(_title(result), _sections(result, []))


def run_html(result: RunResults) -> str:
    """A self-contained HTML report of one run, with accuracy heatmaps and curves."""
    return render_html(_title(result), _sections(result, _accuracy_figures(result)))
