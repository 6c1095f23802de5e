"""Helpers shared by the benchmark scripts (not tests): timing, environment, JSON output."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from edgecl.config import RunConfig
from edgecl.io import atomic_write_text
from edgecl.metrics.intervals import mean_interval95
from edgecl.runner import run
from edgecl.runner.build import environment as run_environment
from edgecl.runner.comparison import CallbackFactory
from edgecl.schema import RunResults

RESULTS = Path(__file__).resolve().parents[1] / "results"


def environment() -> dict[str, Any]:
    """The runner's environment record without its device fields (benchmarks run on CPU)."""
    env = run_environment(torch.device("cpu"))
    return {key: value for key, value in env.items() if key not in ("device", "gpu")}


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


def matmul_peak_flops(n: int = 2048, repeats: int = 7) -> float:
    """fp32 matmul FLOP/s of this machine (median over repeats of a square n×n product)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / median_seconds(lambda: a @ b, repeats, warmup=2)


def write_result(name: str, payload: dict[str, Any]) -> Path:
    path = RESULTS / f"{name}.json"
    atomic_write_text(path, json.dumps({"environment": environment(), **payload}, indent=1))
    return path


def timed_run(cfg: RunConfig, out: Path, resume: bool, callbacks: CallbackFactory | None = None,
              ) -> tuple[list[RunResults], dict[str, Any]]:
    """``edgecl.runner.run`` of ``cfg``, with the timing record every benchmark writes:
    ``wall_seconds_total`` and the 1/5/15-min ``load_average_before``/``_after``."""
    load_before = os.getloadavg()
    start = time.perf_counter()
    results = run(cfg, out, resume=resume, callbacks=callbacks)
    timing = {
        "wall_seconds_total": time.perf_counter() - start,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
    }
    return results, timing


def table_lines(headers: list[str]) -> list[str]:
    """The header and separator lines of a markdown table."""
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]


def table_row(cells: list[str]) -> str:
    """A markdown table row; a ``|`` inside a cell (``|x| <= 2``) is escaped."""
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def targets_section(targets: list[dict[str, Any]], spec: str = ".2f") -> list[str]:
    """The markdown "## Targets" section of a benchmark's ``targets`` list (a measured value
    of None prints as n/a)."""
    rows = [table_row([t["name"], "n/a" if t["measured"] is None else format(t["measured"], spec),
                       t["goal"], "yes" if t["met"] else "**no**"]) for t in targets]
    return ["", "## Targets", "", *table_lines(["target", "measured", "goal", "met"]), *rows]


def split_cifar100(n_tasks: int, train_per_class: int, test_per_class: int,
                   classes_per_task: int = 10) -> dict[str, Any]:
    """The ``data`` block of the benchmarks' reduced Split CIFAR-100: the first
    ``n_tasks x classes_per_task`` classes in order, the first N images of each in file order."""
    return {"dataset": "cifar100", "n_tasks": n_tasks,
            "class_order": list(range(n_tasks * classes_per_task)),
            "train_per_class": train_per_class, "test_per_class": test_per_class,
            "per_class_subset": "first"}


def class_il_summary(res: RunResults) -> dict[str, Any]:
    """Final class-IL accuracy with its 95 % interval (from the number of test images) and
    forgetting."""
    cil = res.accuracy.class_il
    last = cil.matrix[-1] if cil.matrix else []
    tests = res.scenario.test_samples_per_task
    return {"class_il_final": cil.final_average,
            "class_il_final_ci95": mean_interval95(last, tests[: len(last)]),
            "forgetting": cil.forgetting}
