"""The metrics a sweep aggregates and can optimize, each read from a trial's results.json."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from edgecl.errors import ConfigError
from edgecl.schema import RunResults


@dataclass(frozen=True)
class Metric:
    kind: Literal["accuracy", "cost"]
    better: Literal["max", "min"]
    label: str
    read: Callable[[RunResults], float | None]


def _task_il(result: RunResults, field: str) -> float | None:
    summary = result.accuracy.task_il
    return None if summary is None else getattr(summary, field)


METRICS: dict[str, Metric] = {
    "class_il.final_average": Metric(
        "accuracy", "max", "class-IL final average accuracy (%)",
        lambda r: r.accuracy.class_il.final_average),
    "class_il.average_incremental": Metric(
        "accuracy", "max", "class-IL average incremental accuracy (%)",
        lambda r: r.accuracy.class_il.average_incremental),
    "class_il.forgetting": Metric(
        "accuracy", "min", "class-IL forgetting (points)",
        lambda r: r.accuracy.class_il.forgetting),
    "class_il.bwt": Metric(
        "accuracy", "max", "class-IL backward transfer (points)",
        lambda r: r.accuracy.class_il.bwt),
    "task_il.final_average": Metric(
        "accuracy", "max", "task-IL final average accuracy (%)",
        lambda r: _task_il(r, "final_average")),
    "train_flops_per_sample": Metric(
        "cost", "min", "training FLOPs per stream sample",
        lambda r: r.cost.flops.per_sample.train_flops),
    "train_flops": Metric(
        "cost", "min", "training FLOPs (total)", lambda r: float(r.cost.flops.train.total)),
    "training_footprint_mib": Metric(
        "cost", "min", "training memory footprint (MiB)",
        lambda r: r.cost.memory.training_footprint_bytes / 2**20),
    "peak_rss_mib": Metric(
        "cost", "min", "peak RSS (MiB)", lambda r: r.cost.memory.peak_rss_bytes / 2**20),
    "train_time_s": Metric(
        "cost", "min", "training time (s)", lambda r: r.cost.time_s.train_total),
}
PARETO_COST = "train_flops_per_sample"  # the x axis of the Pareto plot (unless the metric is
PARETO_ACCURACY = "class_il.final_average"  # a cost); the y axis (unless it is an accuracy)


def metric_entry(name: str) -> Metric:
    if name not in METRICS:
        raise ConfigError(f"unknown sweep metric {name!r}; known: {', '.join(METRICS)}")
    return METRICS[name]


def read_metrics(result: RunResults) -> dict[str, float | None]:
    """Every metric of :data:`METRICS` of one finished trial (None where undefined)."""
    out: dict[str, float | None] = {}
    for name, metric in METRICS.items():
        value = metric.read(result)
        out[name] = None if value is None else float(value)
    return out


def pareto_axes(metric: str) -> tuple[str, str]:
    """(cost, accuracy) metric names of the Pareto plot: the named metric on its own axis."""
    kind = METRICS[metric].kind
    cost = metric if kind == "cost" else PARETO_COST
    accuracy = metric if kind == "accuracy" else PARETO_ACCURACY
    return cost, accuracy
