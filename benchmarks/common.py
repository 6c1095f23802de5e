"""Helpers shared by the benchmark scripts (not tests): timing, environment, JSON output."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from edgecl.config import RunConfig
from edgecl.runner import run

RESULTS = Path(__file__).resolve().parents[1] / "results"


def environment() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
    }


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
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"environment": environment(), **payload}, indent=1))
    tmp.replace(path)
    return path


def timed_run(
    cfg: RunConfig, out: Path, resume: bool
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``edgecl.runner.run`` of ``cfg``, with the timing record every benchmark writes:
    ``wall_seconds_total`` and the 1/5/15-min ``load_average_before``/``_after``."""
    load_before = os.getloadavg()
    start = time.perf_counter()
    results = run(cfg, out, resume=resume)
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
    return "| " + " | ".join(cells) + " |"
