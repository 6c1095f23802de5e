"""Figures derived from a :class:`~edgecl.schema.RunResults` that several report parts show."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from edgecl.metrics.intervals import interval95, matrix_intervals95
from edgecl.report.formatting import MIB, known, scaled
from edgecl.schema import RunResults, TrainFlops

ENERGY_NOTE = (
    "Energy values are estimates from FLOPs and bytes with device profiles, not measurements."
)
# the parts of flops.train.total, in the order the schema lists them; a part missing here
# shows under its field name
TRAIN_PART_LABELS = {
    "forward": "forward",
    "backward": "backward",
    "optimizer": "optimizer",
    "selection": "selection (query passes)",
    "prefix": "frozen prefix",
    "other": "other (data preparation, inside the update)",
}
TRAIN_PARTS_SUM = " + ".join(
    TRAIN_PART_LABELS.get(name, name) for name in TrainFlops.model_fields if name != "total"
)


def labelled_fields(
    record: BaseModel, labels: dict[str, str], skip: tuple[str, ...] = ()
) -> list[tuple[str, Any]]:
    """(label, value) of the fields of ``record`` in the schema's order; a field without a
    label (one the schema gained later) shows under its own name."""
    names = [name for name in type(record).model_fields if name not in skip]
    return [(labels.get(name, name), getattr(record, name)) for name in names]


def train_parts(train: TrainFlops) -> list[tuple[str, int]]:
    """(label, FLOPs) of each part of ``train.total``."""
    return labelled_fields(train, TRAIN_PART_LABELS, skip=("total",))


def seen_classes(result: RunResults) -> bool:
    return result.accuracy.protocol == "seen_classes"


def matrix(result: RunResults, setting: str) -> list[list[float | None]] | None:
    summary = result.accuracy.task_il if setting == "task_il" else result.accuracy.class_il
    return None if summary is None else summary.matrix


def row_averages(rows: list[list[float | None]] | None) -> list[float | None]:
    """Average accuracy over the tasks seen so far, after each task."""
    averages: list[float | None] = []
    for row in rows or []:
        values = [v for v in map(known, row) if v is not None]
        averages.append(sum(values) / len(values) if values else None)
    return averages


def accuracy_points(result: RunResults, setting: str = "class_il") -> list[tuple[int, float]]:
    """(tasks learned, accuracy) after each evaluation: the row averages of the accuracy
    matrix, or the seen-classes curve."""
    if seen_classes(result):
        if setting != "class_il":
            return []
        curve = result.accuracy.seen_classes_curve or []
        pairs = [(p.task + 1, known(p.class_il)) for p in curve]
    else:
        pairs = [(t + 1, a) for t, a in enumerate(row_averages(matrix(result, setting)))]
    return [(x, y) for x, y in pairs if y is not None]


def host_joules(result: RunResults) -> float | None:
    """The host estimate for the whole run (train only where no total is known)."""
    host = result.cost.energy.estimates.get("host")
    if host is None:
        return None
    total = known(host.total_joules)
    return total if total is not None else known(host.train_joules)


def accuracy_intervals(result: RunResults) -> dict[str, float | None]:
    """95 % half-widths (points) of the final and average incremental accuracies, from the
    number of test images of each task (``edgecl.metrics.intervals``)."""
    counts = result.scenario.test_samples_per_task
    accuracy = result.accuracy
    if seen_classes(result):
        curve = accuracy.seen_classes_curve or []
        widths = [interval95(known(p.class_il), p.test_samples) for p in curve]
        known_widths = [w for w in widths if w is not None]
        return {
            "class_il_final_ci95": widths[-1] if widths else None,
            "class_il_avg_incremental_ci95": (
                sum(known_widths) / len(known_widths) if known_widths else None),
            "task_il_final_ci95": None,
        }
    final, incremental = matrix_intervals95(accuracy.class_il.matrix or [], counts)
    task_final = None
    if accuracy.task_il is not None:
        task_final, _ = matrix_intervals95(accuracy.task_il.matrix or [], counts)
    return {"class_il_final_ci95": final, "class_il_avg_incremental_ci95": incremental,
            "task_il_final_ci95": task_final}


def headline(result: RunResults) -> dict[str, Any]:
    """The figures of a run that the comparison table and the run summary both show."""
    class_il, task_il = result.accuracy.class_il, result.accuracy.task_il
    flops, cost = result.cost.flops, result.cost
    return {
        "name": result.label,
        "method": result.method,
        "class_il_final": known(class_il.final_average),
        "class_il_avg_incremental": known(class_il.average_incremental),
        "class_il_forgetting": known(class_il.forgetting),
        "class_il_forgetting_with_final": known(class_il.forgetting_with_final),
        "task_il_final": None if task_il is None else known(task_il.final_average),
        **accuracy_intervals(result),
        "class_il_logits": result.accuracy.class_il_logits,
        "train_gflops": scaled(flops.train.total, 1e9),
        "selection_gflops": scaled(flops.train.selection, 1e9),
        "prefix_gflops": scaled(flops.train.prefix, 1e9),
        "train_mflops_per_sample": scaled(flops.per_sample.train_flops, 1e6),
        "train_footprint_mib": scaled(cost.memory.training_footprint_bytes, MIB),
        "train_time_s": known(cost.time_s.train_total),
        "energy_host_j": host_joules(result),
    }
