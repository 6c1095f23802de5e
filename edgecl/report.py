"""Human-readable reports from ``results.json``: one run, or several runs side by side.

Markdown and HTML are rendered from the same document model (sections of paragraphs, tables and
code blocks). HTML pages are self-contained: inline CSS and plots embedded as base64 PNGs drawn
with matplotlib's Agg canvas (pyplot and the global backend are never touched).

Energy figures in ``results.json`` are estimates from FLOPs and bytes with device profiles;
every table that shows them says so.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SCHEMA_VERSION = 1
RESULTS_FILENAME = "results.json"
MIB = 1024**2
MISSING = "—"
NOT_DEFINED = "n/a"  # a metric the run's evaluation protocol does not define (null in JSON)
REQUIRED_KEYS = ("schema_version", "run_name", "method", "accuracy", "cost")
ENERGY_NOTE = (
    "Energy values are estimates from FLOPs and bytes with device profiles, not measurements."
)


class ResultsError(ValueError):
    """A results file is unreadable or does not follow the results schema."""


class MissingResultsError(ResultsError, FileNotFoundError):
    """No results file where one was expected."""


# ---------------------------------------------------------------------------------------------
# Loading and validation
# ---------------------------------------------------------------------------------------------


def _results_path(run_dir_or_file: str | os.PathLike[str]) -> Path:
    path = Path(run_dir_or_file)
    return path / RESULTS_FILENAME if path.is_dir() else path


def load_results(run_dir_or_file: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check a run's ``results.json`` (pass the run directory or the file itself)."""
    path = _results_path(run_dir_or_file)
    if not path.is_file():
        raise MissingResultsError(
            f"no results file at {path}: the run directory must contain {RESULTS_FILENAME} "
            "(is the run finished, and is this the right directory?)"
        )
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ResultsError(f"{path} is not valid JSON ({exc}); the file is corrupt") from exc
    _validate(result, path)
    return result


def _validate(result: object, source: Path) -> None:
    if not isinstance(result, dict):
        raise ResultsError(f"{source}: expected a JSON object, got {type(result).__name__}")
    version = result.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ResultsError(
            f"{source}: schema_version is {version!r}, this edgecl reads version {SCHEMA_VERSION}"
        )
    missing = [key for key in REQUIRED_KEYS if key not in result]
    if missing:
        raise ResultsError(f"{source}: missing top-level keys {missing}")
    for setting in ("class_il", "task_il"):
        _check_matrix(_dig(result, "accuracy", setting, "matrix"), setting, source)
    _check_curve(_dig(result, "accuracy", "seen_classes_curve"), source)


def _check_matrix(matrix: object, setting: str, source: Path) -> None:
    if matrix is None:
        return
    if not isinstance(matrix, list) or not all(isinstance(row, list) for row in matrix):
        raise ResultsError(f"{source}: accuracy.{setting}.matrix must be a list of lists")
    for t, row in enumerate(matrix):
        if len(row) != t + 1:
            raise ResultsError(
                f"{source}: accuracy.{setting}.matrix row {t} has {len(row)} entries; "
                f"a lower-triangular matrix needs {t + 1}"
            )


def _check_curve(curve: object, source: Path) -> None:
    if curve is None:
        return
    if not isinstance(curve, list) or not all(
        isinstance(point, dict) and isinstance(point.get("task"), int) for point in curve
    ):
        raise ResultsError(
            f"{source}: accuracy.seen_classes_curve must be a list of objects with an integer "
            "'task'"
        )


# ---------------------------------------------------------------------------------------------
# Reading values out of a result
# ---------------------------------------------------------------------------------------------


def _dig(data: Any, *keys: str) -> Any:
    """``data[k1][k2]...``, or None as soon as a level is missing or null."""
    for key in keys:
        if not isinstance(data, dict) or data.get(key) is None:
            return None
        data = data[key]
    return data


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return None if math.isnan(value) else float(value)


def _scaled(value: Any, divisor: float) -> float | None:
    number = _number(value)
    return None if number is None else number / divisor


def _sum_known(*values: Any) -> float | None:
    numbers = [_number(v) for v in values]
    known = [n for n in numbers if n is not None]
    return sum(known) if known else None


def _ratio(value: float | None, base: float | None) -> float | None:
    if value is None or base is None or base == 0:
        return None
    return value / base


def _difference(value: float | None, base: float | None) -> float | None:
    return None if value is None or base is None else value - base


def _matrix(result: dict[str, Any], setting: str) -> list[list[Any]] | None:
    return _dig(result, "accuracy", setting, "matrix")


def _protocol(result: dict[str, Any]) -> str:
    """The evaluation protocol: ``seen_classes``, or ``per_task`` (results without the key)."""
    return str(_dig(result, "accuracy", "protocol") or "per_task")


def _seen_curve(result: dict[str, Any]) -> list[dict[str, Any]]:
    return _dig(result, "accuracy", "seen_classes_curve") or []


def _accuracy_points(result: dict[str, Any], setting: str = "class_il") -> list[tuple[int, float]]:
    """(tasks learned, accuracy) after each evaluation: the row averages of the accuracy
    matrix, or the seen-classes curve."""
    if _protocol(result) == "seen_classes":
        if setting != "class_il":
            return []
        pairs = [(p["task"] + 1, _number(p.get("class_il"))) for p in _seen_curve(result)]
    else:
        pairs = [(t + 1, a) for t, a in enumerate(_row_averages(_matrix(result, setting)))]
    return [(x, y) for x, y in pairs if y is not None]


def _row_averages(matrix: list[list[Any]] | None) -> list[float | None]:
    """Average accuracy over the tasks seen so far, after each task."""
    averages: list[float | None] = []
    for row in matrix or []:
        known = [n for n in map(_number, row) if n is not None]
        averages.append(sum(known) / len(known) if known else None)
    return averages


def _run_label(result: dict[str, Any]) -> str:
    return str(result.get("run_name") or result.get("method") or "run")


def _training_flops(result: dict[str, Any]) -> float | None:
    """Train (forward + backward + optimizer) plus sample-selection FLOPs."""
    flops = _dig(result, "cost", "flops") or {}
    return _sum_known(_dig(flops, "train", "total"), flops.get("selection"))


# ---------------------------------------------------------------------------------------------
# Number formatting
# ---------------------------------------------------------------------------------------------


def _human(value: float | None) -> str:
    """About three significant digits, thousands separators for big numbers."""
    if value is None or math.isnan(value):
        return MISSING
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude == 0:
        return "0"
    if magnitude >= 0.01:
        return f"{value:.2f}"
    return f"{value:.2g}"


def _count(value: float | None) -> str:
    return MISSING if value is None else f"{round(value):,}"


def _percent(value: float | None) -> str:
    return MISSING if value is None else f"{value:.2f}"


def _signed(value: float | None) -> str:
    return MISSING if value is None else f"{value:+.2f}"


def _percent_or_na(value: float | None) -> str:
    """Forgetting/BWT: null means the protocol does not define it (seen_classes)."""
    return NOT_DEFINED if value is None else f"{value:.2f}"


def _signed_or_na(value: float | None) -> str:
    return NOT_DEFINED if value is None else f"{value:+.2f}"


def _times(value: float | None) -> str:
    return MISSING if value is None else f"{_human(value)}×"


def _share(part: float | None, whole: float | None) -> str:
    ratio = _ratio(part, whole)
    return MISSING if ratio is None else f"{100 * ratio:.1f}%"


# ---------------------------------------------------------------------------------------------
# Comparison table
# ---------------------------------------------------------------------------------------------


def _compare_values(result: dict[str, Any]) -> dict[str, Any]:
    class_il = _dig(result, "accuracy", "class_il") or {}
    return {
        "name": _run_label(result),
        "method": result.get("method"),
        "class_il_final": _number(class_il.get("final_average")),
        "class_il_avg_incremental": _number(class_il.get("average_incremental")),
        "class_il_forgetting": _number(class_il.get("forgetting")),
        "task_il_final": _number(_dig(result, "accuracy", "task_il", "final_average")),
        "train_gflops": _scaled(_dig(result, "cost", "flops", "train", "total"), 1e9),
        "selection_gflops": _scaled(_dig(result, "cost", "flops", "selection"), 1e9),
        "train_footprint_mib": _scaled(
            _dig(result, "cost", "memory", "training_footprint_bytes"), MIB
        ),
        "train_time_s": _number(_dig(result, "cost", "time_s", "train_total")),
        "energy_host_j": _host_joules(result),
    }


def _host_joules(result: dict[str, Any]) -> float | None:
    host = _dig(result, "cost", "energy", "estimates", "host") or {}
    total = _number(host.get("total_joules"))
    return total if total is not None else _number(host.get("train_joules"))


def compare_table(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per run, with ratios to the first run.

    Keys: ``name, method, class_il_final, class_il_avg_incremental, class_il_forgetting,
    task_il_final`` (percent / points), ``train_gflops, selection_gflops, train_footprint_mib``
    (peak), ``train_time_s, energy_host_j`` (estimated, whole run), and relative to the first
    run ``flops_ratio`` (train + selection FLOPs), ``memory_ratio``, ``time_ratio``,
    ``energy_ratio`` (×) and ``acc_delta`` (class-IL final accuracy, points). Missing values
    are None.
    """
    if not results:
        return []
    base = results[0]
    base_values = _compare_values(base)
    rows = []
    for result in results:
        row = _compare_values(result)
        row["flops_ratio"] = _ratio(_training_flops(result), _training_flops(base))
        row["memory_ratio"] = _ratio(row["train_footprint_mib"], base_values["train_footprint_mib"])
        row["time_ratio"] = _ratio(row["train_time_s"], base_values["train_time_s"])
        row["energy_ratio"] = _ratio(row["energy_host_j"], base_values["energy_host_j"])
        row["acc_delta"] = _difference(row["class_il_final"], base_values["class_il_final"])
        rows.append(row)
    return rows


# (row key, column header, formatter)
COMPARE_COLUMNS: tuple[tuple[str, str, Any], ...] = (
    ("name", "Run", str),
    ("method", "Method", lambda v: MISSING if v is None else str(v)),
    ("class_il_final", "Class-IL final acc (%)", _percent),
    ("class_il_avg_incremental", "Class-IL avg incremental acc (%)", _percent),
    ("class_il_forgetting", "Forgetting (pts)", _percent_or_na),
    ("task_il_final", "Task-IL final acc (%)", _percent),
    ("train_gflops", "Train GFLOPs", _human),
    ("selection_gflops", "Selection GFLOPs", _human),
    ("train_footprint_mib", "Training footprint (MiB, peak)", _human),
    ("train_time_s", "Train time (s)", _human),
    ("energy_host_j", "Est. energy, host (J)", _human),
    ("flops_ratio", "FLOPs ×", _times),
    ("memory_ratio", "Memory ×", _times),
    ("time_ratio", "Time ×", _times),
    ("energy_ratio", "Energy ×", _times),
    ("acc_delta", "Class-IL acc Δ (pts)", _signed),
)


def _compare_notes(results: Sequence[dict[str, Any]]) -> list[str]:
    if not results:
        return []
    return [
        f"Ratios and Δ are relative to the first run ({_run_label(results[0])}). "
        "FLOPs × counts train (forward + backward + optimizer) plus selection FLOPs; "
        "memory is the peak training footprint; time is the training loop time; "
        "energy is the host estimate for the whole run.",
    ]


def _compare_document_table(results: Sequence[dict[str, Any]]) -> Table:
    rows = compare_table(results)
    return Table(
        headers=[header for _, header, _ in COMPARE_COLUMNS],
        rows=[[fmt(row[key]) for key, _, fmt in COMPARE_COLUMNS] for row in rows],
    )


def _compare_section(results: Sequence[dict[str, Any]]) -> Section:
    notes = [Note(text) for text in _compare_notes(results)]
    return Section(
        "Comparison",
        [_compare_document_table(results), *notes, Note(ENERGY_NOTE, highlight=True)],
    )


def compare_markdown(results: Sequence[dict[str, Any]]) -> str:
    """A markdown comparison table of several runs, first run as the reference."""
    return _render_markdown("edgecl run comparison", [_compare_section(results)])


# ---------------------------------------------------------------------------------------------
# Document model, rendered to markdown or HTML
# ---------------------------------------------------------------------------------------------


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    caption: str | None = None


@dataclass
class Note:
    text: str
    highlight: bool = False


@dataclass
class Code:
    text: str
    summary: str


@dataclass
class Plot:
    title: str
    png_base64: str


Block = Table | Note | Code | Plot


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)


def _md_cell(text: str) -> str:
    return text.replace("|", r"\|").replace("\n", " ")


def _markdown_table(table: Table) -> str:
    lines = [f"**{table.caption}**", ""] if table.caption else []
    lines.append("| " + " | ".join(map(_md_cell, table.headers)) + " |")
    lines.append("|" + "|".join("---" for _ in table.headers) + "|")
    lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in table.rows]
    return "\n".join(lines)


def _markdown_block(block: Block) -> str:
    if isinstance(block, Table):
        return _markdown_table(block)
    if isinstance(block, Code):
        return f"{block.summary}:\n\n```json\n{block.text}\n```"
    if isinstance(block, Plot):
        return ""  # figures only appear in the HTML report
    return block.text


def _render_markdown(title: str, sections: Sequence[Section]) -> str:
    parts = [f"# {title}"]
    for section in sections:
        parts.append(f"## {section.title}")
        parts += [text for text in map(_markdown_block, section.blocks) if text]
    return "\n\n".join(parts) + "\n"


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 1200px; padding: 0 1rem; color: #1d2330; line-height: 1.45; }
h1 { font-size: 1.6rem; border-bottom: 2px solid #d8dde6; padding-bottom: .3rem; }
h2 { font-size: 1.25rem; margin-top: 2rem; color: #2b4a7a; }
table { border-collapse: collapse; margin: .6rem 0 1rem; font-size: .88rem; }
caption { text-align: left; font-weight: 600; padding-bottom: .3rem; }
th, td { border: 1px solid #d8dde6; padding: .25rem .55rem; }
th { background: #eef2f8; text-align: left; }
td { text-align: right; font-variant-numeric: tabular-nums; }
td:first-child { text-align: left; }
tr:nth-child(even) td { background: #f8f9fb; }
.note { color: #5a6475; font-size: .9rem; }
.estimate { background: #fff6e0; border-left: 4px solid #e0a800; padding: .4rem .7rem; }
.scroll { overflow-x: auto; }
figure { display: inline-block; margin: .5rem 1rem .5rem 0; }
figure img { max-width: 100%; border: 1px solid #e3e6ec; }
figcaption { font-size: .85rem; color: #5a6475; }
pre { background: #f4f6f9; padding: .7rem; overflow-x: auto; font-size: .8rem; }
"""


def _html_table(table: Table) -> str:
    caption = f"<caption>{html.escape(table.caption)}</caption>" if table.caption else ""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
        for row in table.rows
    )
    return (
        f'<div class="scroll"><table>{caption}<thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def _html_block(block: Block) -> str:
    if isinstance(block, Table):
        return _html_table(block)
    if isinstance(block, Code):
        return (
            f"<details><summary>{html.escape(block.summary)}</summary>"
            f"<pre>{html.escape(block.text)}</pre></details>"
        )
    if isinstance(block, Plot):
        title = html.escape(block.title)
        return (
            f'<figure><img alt="{title}" src="data:image/png;base64,{block.png_base64}">'
            f"<figcaption>{title}</figcaption></figure>"
        )
    css_class = "note estimate" if block.highlight else "note"
    return f'<p class="{css_class}">{html.escape(block.text)}</p>'


def _render_html(title: str, sections: Sequence[Section]) -> str:
    body = [f"<h1>{html.escape(title)}</h1>"]
    for section in sections:
        body.append(f"<h2>{html.escape(section.title)}</h2>")
        body += [_html_block(block) for block in section.blocks]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


# ---------------------------------------------------------------------------------------------
# Per-run document
# ---------------------------------------------------------------------------------------------


def _summary_table(result: dict[str, Any]) -> Table:
    env = result.get("environment") or {}
    scenario = result.get("scenario") or {}
    acc = {s: _dig(result, "accuracy", s) or {} for s in ("class_il", "task_il")}
    rows = [
        ["Run", _run_label(result)],
        ["Method", str(result.get("method") or MISSING)],
        ["Status", str(result.get("status") or MISSING)],
        ["Dataset", str(scenario.get("dataset") or MISSING)],
        ["Tasks", _count(_number(scenario.get("n_tasks")))],
        ["Evaluation", _evaluation_text(result)],
    ]
    if _protocol(result) == "seen_classes":
        rows += _seen_classes_rows(acc["class_il"])
    else:
        for setting, label in (("class_il", "Class-IL"), ("task_il", "Task-IL")):
            rows += _per_task_rows(acc[setting], label)
    cost = _compare_values(result)
    versions = (result.get("edgecl_version"), env.get("python"), env.get("torch"))
    rows += [
        ["Train GFLOPs (fwd + bwd + opt)", _human(cost["train_gflops"])],
        ["Selection GFLOPs", _human(cost["selection_gflops"])],
        ["Training footprint, peak (MiB)", _human(cost["train_footprint_mib"])],
        ["Train time (s)", _human(cost["train_time_s"])],
        ["Est. energy, host (J, not measured)", _human(cost["energy_host_j"])],
        ["edgecl / Python / torch", " / ".join(str(v or MISSING) for v in versions)],
        ["Device", _device_text(env)],
        ["Platform", str(env.get("platform") or MISSING)],
    ]
    return Table(["Item", "Value"], rows)


def _per_task_rows(acc: dict[str, Any], label: str) -> list[list[str]]:
    return [
        [f"{label} final avg acc (%)", _percent(_number(acc.get("final_average")))],
        [f"{label} avg incremental acc (%)", _percent(_number(acc.get("average_incremental")))],
        [f"{label} forgetting (pts)", _percent_or_na(_number(acc.get("forgetting")))],
        [f"{label} BWT (pts)", _signed_or_na(_number(acc.get("bwt")))],
    ]


def _seen_classes_rows(acc: dict[str, Any]) -> list[list[str]]:
    return [
        ["Class-IL final acc, all seen classes (%)", _percent(_number(acc.get("final_average")))],
        ["Class-IL mean over the curve (%)", _percent(_number(acc.get("average_incremental")))],
        ["Class-IL forgetting / BWT (pts)", NOT_DEFINED],
        ["Task-IL accuracy (%)", NOT_DEFINED],
    ]


def _evaluation_text(result: dict[str, Any]) -> str:
    if _protocol(result) != "seen_classes":
        return "per task: accuracy on each task seen so far, after every task"
    every = _dig(result, "config", "eval", "every_n_tasks")
    cadence = f"every {every} tasks and after the last" if every and every != 1 else "every task"
    return (f"seen classes: one accuracy on the test images of all classes seen so far, after "
            f"{cadence} ({len(_seen_curve(result))} points)")


def _device_text(env: dict[str, Any]) -> str:
    parts = [str(env.get("device") or MISSING)]
    if env.get("gpu"):
        parts.append(str(env["gpu"]))
    if env.get("threads"):
        parts.append(f"{env['threads']} threads")
    if env.get("processor"):
        parts.append(str(env["processor"]))
    return ", ".join(parts)


def _matrix_table(matrix: list[list[Any]], caption: str) -> Table:
    n_tasks = len(matrix)
    headers = ["After task", *(f"T{i}" for i in range(n_tasks)), "Avg"]
    rows = []
    for t, (row, average) in enumerate(zip(matrix, _row_averages(matrix), strict=True)):
        cells = [_percent(_number(v)) for v in row] + [""] * (n_tasks - len(row))
        rows.append([str(t), *cells, _percent(average)])
    return Table(headers, rows, caption)


def _seen_curve_table(curve: list[dict[str, Any]]) -> Table:
    rows = [
        [
            str(point["task"]),
            _count(_number(point.get("seen_classes"))),
            _count(_number(point.get("test_samples"))),
            _percent(_number(point.get("class_il"))),
        ]
        for point in curve
    ]
    headers = ["After task", "Seen classes", "Test images", "Class-IL acc (%)"]
    return Table(headers, rows, "Class-IL accuracy on all seen classes")


def _accuracy_section(result: dict[str, Any]) -> Section:
    if _protocol(result) == "seen_classes":
        return Section("Accuracy", [
            Note("Protocol seen_classes: after the listed tasks, one class-IL accuracy (%) on the "
                 "test images of every class seen so far; forgetting, BWT and task-IL are not "
                 "defined (n/a)."),
            _seen_curve_table(_seen_curve(result)),
        ])
    section = Section("Accuracy")
    section.blocks.append(
        Note("Row t: accuracy (%) on tasks 0..t after training task t; Avg is the row mean.")
    )
    for setting, label in (("class_il", "Class-IL"), ("task_il", "Task-IL")):
        matrix = _matrix(result, setting)
        if matrix:
            section.blocks.append(_matrix_table(matrix, f"{label} accuracy matrix"))
        else:
            section.blocks.append(Note(f"{label} accuracy was not recorded for this run."))
    return section


def _flops_table(result: dict[str, Any]) -> Table:
    flops = _dig(result, "cost", "flops") or {}
    train = flops.get("train") or {}
    phases = [
        ("Train: forward", train.get("forward")),
        ("Train: backward", train.get("backward")),
        ("Train: optimizer", train.get("optimizer")),
        ("Train total", train.get("total")),
        ("Sample selection", flops.get("selection")),
        ("Evaluation", flops.get("eval")),
    ]
    whole = _sum_known(train.get("total"), flops.get("selection"), flops.get("eval"))
    rows = [[name, _human(_scaled(v, 1e9)), _share(_number(v), whole)] for name, v in phases]
    per_sample = _scaled(flops.get("train_per_sample"), 1e6)
    rows.append(["Train per sample (MFLOPs)", _human(per_sample), ""])
    rows.append(["Train samples", _count(_number(flops.get("train_samples"))), ""])
    return Table(["Phase", "GFLOPs", "Share of all"], rows, "FLOPs by phase")


MEMORY_ROWS = (
    ("peak_saved_for_backward_bytes", "Activations saved for backward (peak)"),
    ("mean_saved_for_backward_bytes", "Activations saved for backward (mean)"),
    ("parameter_bytes", "Parameters"),
    ("trainable_parameter_bytes", "Trainable parameters"),
    ("gradient_bytes", "Gradients"),
    ("optimizer_state_bytes", "Optimizer state"),
    ("buffer_bytes", "Buffers (incl. replay memory)"),
    ("training_footprint_bytes", "Training footprint (peak)"),
    ("training_footprint_mean_bytes", "Training footprint (mean)"),
    ("peak_rss_bytes", "Process peak RSS"),
    ("cuda_max_allocated_bytes", "CUDA max allocated"),
)


def _memory_table(result: dict[str, Any]) -> Table:
    memory = _dig(result, "cost", "memory") or {}
    rows = [[label, _human(_scaled(memory.get(key), MIB))] for key, label in MEMORY_ROWS]
    return Table(["Component", "MiB"], rows, "Memory")


TIME_ROWS = (
    ("data", "Data loading"),
    ("selection", "Sample selection"),
    ("forward", "Forward"),
    ("backward", "Backward"),
    ("step", "Optimizer step"),
    ("eval", "Evaluation"),
    ("train_total", "Training total"),
    ("wall_total", "Wall-clock total"),
)


def _time_table(result: dict[str, Any]) -> Table:
    times = _dig(result, "cost", "time_s") or {}
    wall = _number(times.get("wall_total"))
    rows = [
        [label, _human(_number(times.get(key))), _share(_number(times.get(key)), wall)]
        for key, label in TIME_ROWS
    ]
    return Table(["Phase", "Seconds", "Share of wall"], rows, "Time per phase")


def _energy_blocks(result: dict[str, Any]) -> list[Block]:
    energy = _dig(result, "cost", "energy") or {}
    estimates = energy.get("estimates") or {}
    rows = [
        [
            _profile_label(name, estimate),
            _human(_number(_dig(estimate, "train_joules"))),
            _human(_number(_dig(estimate, "total_joules"))),
        ]
        for name, estimate in estimates.items()
    ]
    unit = energy.get("unit") or "J"
    blocks: list[Block] = [
        Table(
            ["Device profile", f"Train ({unit}, estimated)", f"Total ({unit}, estimated)"],
            rows,
            "Energy estimates (not measurements)",
        ),
        Note(_energy_note(energy.get("note")), highlight=True),
    ]
    blocks.append(Note(f"Measured energy: {_measured_text(energy.get('measured'), unit)}"))
    return blocks


def _energy_note(estimator_note: Any) -> str:
    if not estimator_note or str(estimator_note).lower() in ENERGY_NOTE.lower():
        return ENERGY_NOTE
    return f"{ENERGY_NOTE} Estimator: {estimator_note}."


def _profile_label(name: str, estimate: Any) -> str:
    profile_name = _dig(estimate, "profile", "name")
    return f"{name}: {profile_name}" if profile_name and profile_name != name else name


def _measured_text(measured: Any, unit: str) -> str:
    if measured is None:
        return "none (no energy counter available for this run)."
    number = _number(measured)
    if number is not None:
        return f"{_human(number)} {unit}."
    if isinstance(measured, dict):
        return ", ".join(f"{k} = {_format_any(v)}" for k, v in measured.items()) + "."
    return f"{measured}."


def _format_any(value: Any) -> str:
    number = _number(value)
    return _human(number) if number is not None else str(value)


def _per_task_table(result: dict[str, Any]) -> Table | None:
    entries = result.get("per_task") or []
    if not entries:
        return None
    rows = [
        [
            str(entry.get("task", index)),
            _count(_number(entry.get("train_steps"))),
            _count(_number(entry.get("train_samples"))),
            _human(_number(entry.get("train_time_s"))),
            _human(_scaled(entry.get("train_flops"), 1e9)),
            _human(_number(entry.get("eval_time_s"))),
        ]
        for index, entry in enumerate(entries)
    ]
    headers = ["Task", "Steps", "Samples", "Train time (s)", "Train GFLOPs", "Eval time (s)"]
    return Table(headers, rows, "Per task")


def _scenario_blocks(result: dict[str, Any]) -> list[Block]:
    scenario = result.get("scenario") or {}
    columns = [
        ("classes_per_task", "Classes"),
        ("train_samples_per_task", "Train samples"),
        ("test_samples_per_task", "Test samples"),
    ]
    n_tasks = max((len(scenario.get(key) or []) for key, _ in columns), default=0)
    rows = [
        [str(t), *(_list_item(scenario.get(key), t) for key, _ in columns)] for t in range(n_tasks)
    ]
    blocks: list[Block] = [Table(["Task", *(label for _, label in columns)], rows)]
    if scenario.get("class_order"):
        blocks.append(Note(f"Class order: {', '.join(map(str, scenario['class_order']))}"))
    return blocks


def _list_item(values: Any, index: int) -> str:
    if not isinstance(values, list) or index >= len(values):
        return MISSING
    value = values[index]
    return _count(len(value) if isinstance(value, list) else _number(value))


def _run_sections(result: dict[str, Any]) -> list[Section]:
    summary = Section("Summary", [_summary_table(result)])
    if result.get("status") not in (None, "completed"):
        summary.blocks.insert(0, Note(f"Warning: run status is {result['status']!r}."))
    cost = Section("Cost", [_flops_table(result), _memory_table(result), _time_table(result)])
    cost.blocks += _energy_blocks(result)
    per_task = _per_task_table(result)
    if per_task is not None:
        cost.blocks.append(per_task)
    config = json.dumps(result.get("config") or {}, indent=2, sort_keys=True, default=str)
    return [
        summary,
        _accuracy_section(result),
        cost,
        Section("Scenario", _scenario_blocks(result)),
        Section("Configuration", [Code(config, "Full run configuration")]),
    ]


def run_markdown(result: dict[str, Any]) -> str:
    """A markdown report of one run: summary, accuracy matrices and the cost breakdown."""
    return _render_markdown(f"edgecl run report: {_run_label(result)}", _run_sections(result))


# ---------------------------------------------------------------------------------------------
# Plots (matplotlib Agg canvas, no pyplot)
# ---------------------------------------------------------------------------------------------


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


def _heatmap_png(matrix: list[list[Any]], title: str) -> str:
    import numpy as np

    n_tasks = len(matrix)
    grid = np.full((n_tasks, n_tasks), np.nan)
    for t, row in enumerate(matrix):
        for i, value in enumerate(row):
            number = _number(value)
            grid[t, i] = np.nan if number is None else number
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
    for (t, i), value in _finite_cells(grid):
        colour = "black" if value > 60 else "white"
        axes.text(i, t, f"{value:.0f}", ha="center", va="center", fontsize=8, color=colour)


def _finite_cells(grid: Any) -> list[tuple[tuple[int, int], float]]:
    import numpy as np

    return [
        ((t, i), float(grid[t, i])) for t, i in zip(*np.nonzero(np.isfinite(grid)), strict=True)
    ]


def _curves_png(
    curves: dict[str, list[tuple[int, float]]], title: str,
    ylabel: str = "average accuracy on seen tasks (%)",
) -> str:
    figure = _new_figure(6.4, 4.0)
    axes = figure.add_subplot()
    for label, points in curves.items():
        if points:
            xs, ys = zip(*points, strict=True)
            axes.plot(xs, ys, marker="o", label=label)
    from matplotlib.ticker import MaxNLocator

    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("tasks learned")
    axes.set_ylabel(ylabel)
    axes.set_ylim(0, 100)
    axes.grid(alpha=0.3)
    axes.set_title(title)
    if curves:
        axes.legend(fontsize=8)
    return _png_base64(figure)


def _scatter_png(points: list[tuple[str, float, float]], xlabel: str, title: str) -> str:
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


# ---------------------------------------------------------------------------------------------
# HTML pages
# ---------------------------------------------------------------------------------------------


def _run_figures(result: dict[str, Any]) -> list[Block]:
    figures: list[Block] = []
    if _protocol(result) == "seen_classes":
        points = _accuracy_points(result)
        if points:
            title = "Class-IL accuracy on all seen classes"
            figures.append(Plot(title, _curves_png(
                {"Class-IL": points}, title, "accuracy on seen classes (%)")))
        return figures
    curves: dict[str, list[tuple[int, float]]] = {}
    for setting, label in (("class_il", "Class-IL"), ("task_il", "Task-IL")):
        matrix = _matrix(result, setting)
        if matrix:
            title = f"{label} accuracy matrix (%)"
            figures.append(Plot(title, _heatmap_png(matrix, title)))
            curves[label] = _accuracy_points(result, setting)
    if curves:
        title = "Average accuracy after each task"
        figures.append(Plot(title, _curves_png(curves, title)))
    return figures


def run_html(result: dict[str, Any]) -> str:
    """A self-contained HTML report of one run, with accuracy heatmaps and curves."""
    sections = _run_sections(result)
    accuracy = next(s for s in sections if s.title == "Accuracy")
    accuracy.blocks = _run_figures(result) + accuracy.blocks
    return _render_html(f"edgecl run report: {_run_label(result)}", sections)


def _compare_figures(results: Sequence[dict[str, Any]]) -> list[Block]:
    rows = compare_table(results)
    curves = {_run_label(r): _accuracy_points(r) for r in results}
    figures: list[Block] = []
    if any(curves.values()):
        title = "Class-IL average accuracy after each task"
        ylabel = "average accuracy on seen tasks (%)"
        if any(_protocol(r) == "seen_classes" for r in results):
            ylabel = "class-IL accuracy on seen tasks/classes (%)"
        figures.append(Plot(title, _curves_png(curves, title, ylabel)))
    compute = [_scaled(_training_flops(r), 1e9) for r in results]
    memory = [row["train_footprint_mib"] for row in rows]
    axes_specs = (
        (compute, "training compute (train + selection GFLOPs)", "Accuracy vs compute"),
        (memory, "training footprint, peak (MiB)", "Accuracy vs memory"),
    )
    for xs, xlabel, title in axes_specs:
        points = [
            (row["name"], x, row["class_il_final"])
            for row, x in zip(rows, xs, strict=True)
            if x is not None and row["class_il_final"] is not None
        ]
        if points:
            figures.append(Plot(title, _scatter_png(points, xlabel, title)))
    return figures


def compare_html(results: Sequence[dict[str, Any]]) -> str:
    """A self-contained HTML comparison page: table, accuracy curves, accuracy-vs-cost plots."""
    plots = Section("Plots", _compare_figures(results))
    return _render_html("edgecl run comparison", [_compare_section(results), plots])


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def _atomic_write(path: Path, text: str) -> None:
    """Write via a temporary file in the same directory, then rename over the target."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def write_report(run_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` next to the run's ``results.json``."""
    run_dir = Path(run_dir)
    result = load_results(run_dir)
    md_path, html_path = run_dir / "report.md", run_dir / "report.html"
    _atomic_write(md_path, run_markdown(result))
    _atomic_write(html_path, run_html(result))
    return md_path, html_path


def write_compare(
    run_dirs: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str]
) -> tuple[Path, Path]:
    """Write ``compare.md`` and ``compare.html`` for several runs (the first is the reference)."""
    if not run_dirs:
        raise ValueError("write_compare needs at least one run directory")
    results = [load_results(run_dir) for run_dir in run_dirs]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md_path, html_path = out_dir / "compare.md", out_dir / "compare.html"
    _atomic_write(md_path, compare_markdown(results))
    _atomic_write(html_path, compare_html(results))
    return md_path, html_path
