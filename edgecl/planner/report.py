"""What ``edgecl plan`` prints: one row per device, then what would fit where it does not."""

from __future__ import annotations

from collections.abc import Sequence

from edgecl.config import RunConfig
from edgecl.planner.model import MIB
from edgecl.planner.plan import Plan, Planner, device_names, resolve_device

SHOWN_SUGGESTIONS = 3


def resolve_devices(names: Sequence[str]) -> list[str]:
    """Device keys for ``names`` (``all``: every profile and this host), in order, once each."""
    keys: list[str] = []
    for name in names:
        for key in device_names() if name == "all" else [resolve_device(name)]:
            if key not in keys:
                keys.append(key)
    return keys


def plan_report(cfg: RunConfig, devices: Sequence[str], method: str | None = None,
                budget_mib: float | None = None) -> str:
    """Calibrate ``cfg``'s method on this host, plan it for ``devices``; the printed report."""
    keys = resolve_devices(devices)  # an unknown name fails before the calibration runs
    planner = Planner(cfg, method)
    return format_plans(planner, [planner.plan(key, budget_mib) for key in keys])


def _cells(plan: Plan) -> list[str]:
    p = plan.prediction
    limit = plan.limit_bytes / MIB
    return [p.device, f"{p.peak_memory_bytes / MIB:,.0f}", f"{p.footprint_bytes / MIB:,.0f}",
            f"{'yes' if plan.fits else 'no'} ({limit:,.0f})", f"{p.step_seconds:.3g}",
            f"{p.samples_per_second:.3g}", f"{p.joules_per_sample:.3g}"]


def format_plans(planner: Planner, plans: Sequence[Plan]) -> str:
    spec, prof = planner.spec, planner.profile
    cal = ", ".join(str(b) for b in planner.batch_sizes)
    lines = [
        f"{spec.run_name} ({spec.name}, {prof.backbone}) at batch {planner.batch_size}; "
        f"measured on this host at batch {cal}, {prof.threads} threads",
        "",
        "| device | peak memory (MiB) | footprint (MiB) | fits memory? (limit MiB) | "
        "step (s) | samples/s | energy/sample (J) |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(_cells(p)) + " |" for p in plans]
    groups: dict[tuple, list[Plan]] = {}  # the same advice for several devices, printed once
    for p in plans:
        if not p.fits:
            key = (round(p.limit_bytes), tuple(tuple(s.overrides()) for s in p.suggestions))
            groups.setdefault(key, []).append(p)
    for members in groups.values():
        first = members[0]
        where = ", ".join(p.prediction.device for p in members)
        lines += ["", f"{where}: {first.message()}"]
        for s in first.suggestions[:SHOWN_SUGGESTIONS]:
            lines.append(f"  - {s.describe()}: " + " ".join(f"--set {o}" for o in s.overrides()))
        if len(members) > 1 and first.suggestions:
            lines.append(f"  (step times on {first.prediction.device}; re-plan with the --set "
                         "items for the others)")
    notes = list(dict.fromkeys(n for p in plans for n in p.notes))
    lines += ["", "peak memory: predicted peak RSS of the training process; footprint: "
              "edgecl's accounting (saved activations + parameters + gradients + optimizer "
              "state + buffers); energy: estimates", *(f"- {n}" for n in notes)]
    return "\n".join(lines)
