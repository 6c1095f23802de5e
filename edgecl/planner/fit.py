"""The knob search: which batch size, buffer capacity, frozen depth and latent precision make a
method fit a memory budget.

Knobs, where the method has them (values never above the config's, precision never above it):

- ``batch_size``: the configured one, then halvings down to 1;
- buffer capacity (``buffer_size`` of ER/DER++/SparCL/LightCL, ``rm_sz`` of latent replay,
  LightCL's ``importance_samples``, whose task-end pass can be its peak): the configured one, a
  half and a quarter;
- frozen depth (``freeze_until`` of LightCL, ``split_layer`` of latent replay): the configured
  depth and up to three deeper ones, to the last layer;
- latent precision (``storage`` of latent replay): the configured one, then fp16 (from fp32), int8.

Order, best first: the largest batch, then the largest buffer, then the least freezing, then
the highest precision (lexicographic: a smaller batch is only proposed when no variant fits
the larger one). Each variant other than the configured one is measured with a short profile
(FLOPs, saved bytes, state at the calibration batch sizes); the host's calibrated overhead and rate
are carried over to it. The search first checks the most frugal variant, so an impossible
budget costs one profile, and stops after ``limit`` configurations that fit.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edgecl.planner.model import MIB, HostModel, Prediction, StepModel, predict
from edgecl.planner.profile import BUFFER_KNOBS, DEPTH_KNOBS, PRECISION_KNOBS

# Storage precisions the search may step down to, best first; bf16 and fp16 take the same
# bytes, so a configured bf16 steps straight to int8.
LOWER_PRECISIONS = {"fp32": ["fp32", "fp16", "int8"], "fp16": ["fp16", "int8"],
                    "bf16": ["bf16", "int8"], "int8": ["int8"]}
MAX_DEEPER = 3


def halvings(value: int, count: int | None = None) -> list[int]:
    """``value, value // 2, ...`` down to 1 (at most ``count`` of them)."""
    out: list[int] = []
    while value >= 1 and (count is None or len(out) < count):
        if value not in out:
            out.append(value)
        value //= 2
    return out


@dataclass(frozen=True)
class KnobSpace:
    """The values each knob may take, best first."""

    batch_sizes: list[int]
    dims: list[tuple[str, list[Any]]]  # method parameters: (name, values best first)
    configured: dict[str, Any]

    @classmethod
    def of(cls, knobs: dict[str, Any]) -> KnobSpace:
        dims: list[tuple[str, list[Any]]] = []
        for name in BUFFER_KNOBS:
            if name in knobs:
                dims.append((name, halvings(int(knobs[name]), 3)))
        for name in DEPTH_KNOBS:
            if name in knobs:
                k, n = int(knobs[name]), int(knobs["n_layers"])
                dims.append((name, list(range(k, min(n, k + MAX_DEEPER) + 1))))
        for name in PRECISION_KNOBS:
            if name in knobs:
                dims.append((name, list(LOWER_PRECISIONS[knobs[name]])))
        configured = {name: values[0] for name, values in dims}
        return cls(halvings(int(knobs["batch_size"])), dims, configured)

    def variants(self) -> list[dict[str, Any]]:
        """Every combination of the method-parameter knobs, best first."""
        names = [name for name, _ in self.dims]
        return [dict(zip(names, combo, strict=True))
                for combo in itertools.product(*(values for _, values in self.dims))]

    def changes(self, variant: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in variant.items() if self.configured.get(k) != v}


@dataclass
class Suggestion:
    """A configuration that fits: its knob values and what it is predicted to cost."""

    method_index: int
    batch_size: int
    params: dict[str, Any]  # the method's knob parameters (all of them)
    changes: dict[str, tuple[Any, Any]]  # knob -> (configured, suggested), changed ones only
    prediction: Prediction = field(repr=False)

    @property
    def peak_memory_mib(self) -> float:
        return self.prediction.peak_memory_bytes / MIB

    def overrides(self) -> list[str]:
        """``--set`` items that turn the config into this configuration."""
        i, out = self.method_index, []
        for name, (_, value) in self.changes.items():
            key = "train.batch_size" if name == "batch_size" else name
            out.append(f"methods.{i}.{key}={value}")
        return out

    def describe(self) -> str:
        changed = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in self.changes.items()) or "as is"
        p = self.prediction
        return (f"{changed} (peak {p.peak_memory_bytes / MIB:.0f} MiB, "
                f"{p.step_seconds:.3g} s/step)")

    def to_dict(self) -> dict[str, Any]:
        p = self.prediction
        return {"batch_size": self.batch_size, "params": self.params,
                "changes": {k: list(v) for k, v in self.changes.items()},
                "overrides": self.overrides(), "peak_memory_mib": p.peak_memory_bytes / MIB,
                "footprint_mib": p.footprint_bytes / MIB, "step_seconds": p.step_seconds,
                "joules_per_sample": p.joules_per_sample}


Evaluate = Callable[[dict[str, Any]], StepModel | None]


def search(space: KnobSpace, evaluate: Evaluate, host: HostModel, budget_bytes: float,
           device: str, method_index: int, limit: int = 5) -> list[Suggestion]:
    """Configurations predicted to fit ``budget_bytes`` on ``device``, best first.

    ``evaluate(variant)`` gives the variant's per-step model (None: the variant cannot run).
    """
    variants = space.variants()
    frugal = evaluate(variants[-1])
    if frugal is None:
        return []
    batches = [b for b in space.batch_sizes
               if predict(frugal, host, b, device).fits(budget_bytes)]
    out: list[Suggestion] = []
    for b in batches:
        for variant in variants:
            steps = evaluate(variant)
            if steps is None:
                continue
            pred = predict(steps, host, b, device)
            if not pred.fits(budget_bytes):
                continue
            changes = {k: (space.configured[k], v) for k, v in space.changes(variant).items()}
            configured_b = space.batch_sizes[0]
            if b != configured_b:
                changes = {"batch_size": (configured_b, b), **changes}
            out.append(Suggestion(method_index, b, dict(variant), changes, pred))
            if len(out) >= limit:
                return out
    return out


def most_frugal(space: KnobSpace, evaluate: Evaluate, host: HostModel,
                device: str) -> Prediction | None:
    """The smallest configuration's prediction (for a message when nothing fits)."""
    steps = evaluate(space.variants()[-1])
    return None if steps is None else predict(steps, host, space.batch_sizes[-1], device)
