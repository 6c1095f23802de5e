"""A sweep's aggregate from its finished trials' records and results.json files.

Per configuration (a method with its axis values): mean, std and a 95 % interval over its
seeds of every metric; the Pareto front (accuracy against cost) over all completed trials; the
best configuration per method under the sweep's metric (by its mean over seeds).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgecl.errors import ResultsError
from edgecl.schema import load_results
from edgecl.sweep.metrics import METRICS, pareto_axes, read_metrics
from edgecl.sweep.records import TRIALS_DIR, configuration_key, read_record, trial_dirs
from edgecl.sweep.stats import summary

SWEEP_SCHEMA_VERSION = 1


def trial_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per trial directory: its record, and its metrics when it completed."""
    rows = []
    for trial_dir in trial_dirs(sweep_dir):
        record = read_record(trial_dir)
        row: dict[str, Any] = {**record.model_dump(mode="json"),
                               "configuration": configuration_key(record.label, record.params),
                               "dir": f"{TRIALS_DIR}/{trial_dir.name}/{record.label}",
                               "metrics": None}
        if record.status == "completed":
            try:
                row["metrics"] = read_metrics(load_results(trial_dir / record.label))
            except ResultsError as exc:  # a record whose results went missing
                row.update(status="failed", error=f"results unreadable: {exc}")
        rows.append(row)
    return rows


def configurations(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Completed trials grouped by configuration, each metric summarized over the seeds."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row["status"] == "completed":
            groups.setdefault(row["configuration"], []).append(row)
    out = []
    for key, members in groups.items():
        members.sort(key=lambda r: r["seed"])
        metrics = {}
        for name in METRICS:
            values = [r["metrics"][name] for r in members if r["metrics"][name] is not None]
            metrics[name] = summary(values)
        first = members[0]
        out.append({"configuration": key, "label": first["label"], "method": first["method"],
                    "params": first["params"], "seeds": [r["seed"] for r in members],
                    "trials": [r["key"] for r in members], "metrics": metrics})
    return out


def best_per_method(configs: list[dict[str, Any]], metric: str, mode: str
                    ) -> dict[str, dict[str, Any]]:
    """Per method label, the configuration whose mean of ``metric`` is best."""
    best: dict[str, dict[str, Any]] = {}
    sign = 1.0 if mode == "max" else -1.0
    for config in configs:
        mean = config["metrics"][metric]["mean"]
        if mean is None:
            continue
        held = best.get(config["label"])
        if held is None or sign * mean > sign * held["mean"]:
            best[config["label"]] = {"configuration": config["configuration"],
                                     "params": config["params"], "mean": mean,
                                     "n": config["metrics"][metric]["n"]}
    return best


def pareto_front(rows: list[dict[str, Any]], cost: str, accuracy: str) -> list[str]:
    """Keys of the completed trials no other trial dominates (no worse on both axes, better on
    one), ``cost`` minimized and ``accuracy`` optimized in its own direction."""
    sign = 1.0 if METRICS[accuracy].better == "max" else -1.0
    points = [(r["key"], r["metrics"][cost], sign * r["metrics"][accuracy]) for r in rows
              if r["status"] == "completed" and r["metrics"][cost] is not None
              and r["metrics"][accuracy] is not None]
    front = []
    for key, c, a in points:
        dominated = any(c2 <= c and a2 >= a and (c2 < c or a2 > a) for _, c2, a2 in points)
        if not dominated:
            front.append(key)
    return front


def aggregate(sweep_dir: Path, name: str, metric: str, mode: str) -> dict[str, Any]:
    """The content of ``sweep.json``."""
    rows = trial_rows(Path(sweep_dir))
    configs = configurations(rows)
    cost, accuracy = pareto_axes(metric)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("completed", "failed", "running")}
    return {
        "schema_version": SWEEP_SCHEMA_VERSION, "sweep": name, "metric": metric, "mode": mode,
        "counts": counts, "configurations": configs,
        "best": best_per_method(configs, metric, mode),
        "pareto": {"cost": cost, "accuracy": accuracy,
                   "front": pareto_front(rows, cost, accuracy)},
        "trials": rows,
    }
