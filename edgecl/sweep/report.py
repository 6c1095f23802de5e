"""``sweep.json``, ``sweep.md`` and ``sweep.html`` (Pareto plot embedded) of a sweep directory,
rebuilt from its finished trials alone (no Ray needed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgecl.io import atomic_write_text, write_json
from edgecl.report.document import Note, Plot, Section, Table, render_html, render_markdown
from edgecl.report.formatting import MISSING, human
from edgecl.sweep.aggregate import aggregate
from edgecl.sweep.metrics import METRICS
from edgecl.sweep.plot import pareto_png


def _values(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={json.dumps(v)}" for k, v in sorted(params.items())) or MISSING


def _interval(stats: dict[str, Any]) -> str:
    ci = stats["ci95"]
    return MISSING if ci is None else f"[{human(ci[0])}, {human(ci[1])}]"


def _metric_table(data: dict[str, Any], name: str) -> Table:
    rows = [[c["configuration"], str(s["n"]), human(s["mean"]), human(s["std"]), _interval(s)]
            for c in data["configurations"] for s in [c["metrics"][name]]]
    return Table(["configuration", "seeds", "mean", "std", "95 % interval"], rows,
                 caption=f"{METRICS[name].label} ({name})")


def _sections(data: dict[str, Any], with_plot: bool) -> list[Section]:
    metric, counts = data["metric"], data["counts"]
    head = Section("Summary", [Note(
        f"{counts['completed']} trials completed, {counts['failed']} failed, "
        f"{counts['running']} unfinished. Metric: {metric} ({data['mode']}). Intervals: "
        "95 % Student-t intervals of the mean over the seeds of a configuration.")])
    best_rows = [[label, b["configuration"], human(b["mean"]), str(b["n"])]
                 for label, b in data["best"].items()]
    best = Section("Best configuration per method", [Table(
        ["method", "configuration", f"mean {metric}", "seeds"], best_rows)])
    per_config = Section("Per configuration, over seeds",
                         [_metric_table(data, name) for name in METRICS])
    pareto = data["pareto"]
    front = Section("Accuracy vs cost: Pareto front over all trials", [Note(
        f"{pareto['accuracy']} against {pareto['cost']}; on the front: "
        f"{', '.join(pareto['front']) or MISSING}")])
    if with_plot:
        front.blocks.append(Plot("accuracy vs cost, every completed trial", pareto_png(
            data["trials"], pareto["cost"], pareto["accuracy"], pareto["front"])))
    trial_rows = [[t["key"], t["label"], str(t["seed"]), _values(t["params"]), t["status"],
                   human((t["metrics"] or {}).get(metric)), t["error"] or ""]
                  for t in data["trials"]]
    trials = Section("Trials", [Table(
        ["trial", "method", "seed", "axis values", "status", metric, "error"], trial_rows)])
    return [head, best, per_config, front, trials]


def write_sweep_report(sweep_dir: Path, name: str, metric: str, mode: str
                       ) -> dict[str, Any]:
    """Aggregate the trials of ``sweep_dir``; write sweep.json, sweep.md and sweep.html;
    returns the aggregate (the content of sweep.json)."""
    sweep_dir = Path(sweep_dir)
    data = aggregate(sweep_dir, name, metric, mode)
    paths = sweep_dir / "sweep.json", sweep_dir / "sweep.md", sweep_dir / "sweep.html"
    write_json(paths[0], data)
    title = f"Sweep {name}"
    atomic_write_text(paths[1], render_markdown(title, _sections(data, with_plot=False)))
    atomic_write_text(paths[2], render_html(title, _sections(data, with_plot=True)))
    return data
