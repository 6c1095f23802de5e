"""``python -m edgecl.planner``: one planner request in a fresh process (JSON on stdin, one
JSON line on stdout). Ops: ``profile`` (a :class:`~edgecl.planner.profile.Profile` with this
process's ``ru_maxrss``, how the benchmark measures real runs), ``plan`` and ``fit``."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from typing import Any

from edgecl.config import RunConfig
from edgecl.errors import EdgeclError
from edgecl.metrics.cost import peak_rss_bytes


def handle(request: dict[str, Any]) -> dict[str, Any]:
    from edgecl.planner.plan import Planner
    from edgecl.planner.profile import calibrate

    cfg = RunConfig.model_validate(request["config"])
    method = request.get("method")
    op = request.get("op", "profile")
    if op == "profile":
        sizes = request.get("batch_sizes")
        prof = calibrate(cfg, method, tuple(sizes) if sizes else None,
                         warmup=request.get("warmup", 1), steps=request.get("steps", 6),
                         fresh=False, split_peaks=request.get("split_peaks", True))
        prof.ru_maxrss_bytes = peak_rss_bytes()
        return prof.to_dict()
    planner = Planner(cfg, method)
    if op == "plan":
        return asdict(planner.plan(request.get("device", "host"), request.get("budget_mib"),
                                   resident_mib=request.get("resident_mib")))
    if op == "fit":
        found = planner.fit(request["budget_mib"], request.get("device", "host"),
                            request.get("limit", 5))
        return {"suggestions": [asdict(s) for s in found]}
    raise ValueError(f"unknown op {op!r}")


def main() -> None:
    request = json.loads(sys.stdin.read())
    try:
        out = handle(request)
    except EdgeclError as exc:
        out = {"error": str(exc)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
