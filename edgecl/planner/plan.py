"""Plans: a config's predicted memory, step time and energy on a device, whether it fits, and
which knob values would make it fit.

A :class:`Planner` calibrates one method of a config once on this host (a few real training
steps at a few small batch sizes, :mod:`edgecl.planner.profile`) and then predicts for any
device and budget (:mod:`edgecl.planner.model`), searching the knobs when the config does not
fit (:mod:`edgecl.planner.fit`). :func:`plan` and :func:`fit` are one-call wrappers; with
``isolated=True`` the whole computation runs in a fresh Python process, so the caller's own
resident set (a learner about to train under the budget) is not inflated by the calibration.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgecl.config import RunConfig
from edgecl.errors import BudgetError, ConfigError, EdgeclError
from edgecl.metrics.devices import PROFILES
from edgecl.planner.fit import KnobSpace, Suggestion, most_frugal, search
from edgecl.planner.model import HOST, MIB, HostModel, Prediction, StepModel, predict
from edgecl.planner.profile import Calibrator, Profile, calibrate, run_request, select_method

DEVICE_ALIASES = {"this_host": HOST, "this-host": HOST}


def device_names() -> list[str]:
    """Every device a plan can be made for: the profiles, then this host."""
    return [*PROFILES, HOST]


def resolve_device(name: str) -> str:
    key = DEVICE_ALIASES.get(name, name)
    if key not in device_names():
        raise ConfigError(f"unknown device {name!r}; known: {', '.join(device_names())}")
    return key


@dataclass
class Plan:
    """One method of a config on one device."""

    label: str
    prediction: Prediction
    budget_bytes: float | None  # None: the device's available memory is the limit
    suggestions: list[Suggestion] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    frugal: Prediction | None = None  # the smallest configuration, when nothing fits
    setup_peak_bytes: float = 0.0  # the process's peak before training (data, weights)

    @property
    def fits(self) -> bool:
        return self.prediction.fits(self.budget_bytes)

    @property
    def limit_bytes(self) -> float:
        p = self.prediction
        if self.budget_bytes is None:
            return p.available_bytes
        return min(self.budget_bytes, p.available_bytes) if p.available_bytes else \
            self.budget_bytes

    def message(self) -> str:
        """One line: fits, or what would fit."""
        p, limit = self.prediction, self.limit_bytes / MIB
        where = "" if p.peak_phase == "steps" else f" ({p.peak_phase})"
        head = (f"{self.label} on {p.device}: predicted peak {p.peak_memory_bytes / MIB:.0f} MiB"
                f"{where} at batch {p.batch_size}")
        if self.fits:
            return f"{head} fits {limit:.0f} MiB"
        if self.suggestions:
            best = self.suggestions[0]
            return (f"{head} exceeds {limit:.0f} MiB; would fit: {best.describe()} "
                    f"[{' '.join('--set ' + o for o in best.overrides())}]")
        smallest = f"{self.frugal.peak_memory_bytes / MIB:.0f} MiB" if self.frugal else "n/a"
        return (f"{head} exceeds {limit:.0f} MiB, and no knob setting fits: the smallest "
                f"(batch 1, every knob at its most frugal) needs {smallest}; loading the data "
                f"and weights alone peaks at {self.setup_peak_bytes / MIB:.0f} MiB")

    def to_dict(self) -> dict[str, Any]:
        p = self.prediction
        return {
            "label": self.label, "device": p.device, "device_name": p.device_name,
            "batch_size": p.batch_size, "peak_memory_mib": p.peak_memory_bytes / MIB,
            "footprint_mib": p.footprint_bytes / MIB,
            "available_mib": p.available_bytes / MIB,
            "budget_mib": None if self.budget_bytes is None else self.budget_bytes / MIB,
            "fits": self.fits, "step_seconds": p.step_seconds,
            "samples_per_second": p.samples_per_second,
            "joules_per_sample": p.joules_per_sample, "measured_rate": p.measured_rate,
            "suggestions": [s.to_dict() for s in self.suggestions],
            "notes": self.notes, "message": self.message(),
        }


class Planner:
    """One method of a config, calibrated on this host; plans for any device and budget."""

    def __init__(self, cfg: RunConfig, method: str | None = None, *,
                 profile: Profile | None = None, batch_sizes: tuple[int, ...] | None = None,
                 fresh: bool = True) -> None:
        """Calibrate (see :func:`~edgecl.planner.profile.calibrate`) unless ``profile`` is
        given; ``fresh=False`` measures in this process (quicker; see there)."""
        self.cfg = cfg
        self.spec = select_method(cfg, method)
        self.index = cfg.methods.index(self.spec)
        self._calibrator: Calibrator | None = None
        self.profile = profile or calibrate(cfg, self.spec.run_name, batch_sizes, fresh=fresh)
        self.batch_sizes = tuple(s.batch_size for s in self.profile.steps)
        self.steps = StepModel.from_profile(self.profile)
        self.host = HostModel.from_profile(self.profile, self.steps)
        self.space = KnobSpace.of(self.profile.knobs)
        self._variants: dict[tuple, StepModel | None] = {(): self.steps}

    @property
    def calibrator(self) -> Calibrator:
        if self._calibrator is None:
            self._calibrator = Calibrator(self.cfg)
        return self._calibrator

    @property
    def batch_size(self) -> int:
        return int(self.profile.knobs["batch_size"])

    def evaluate(self, variant: dict[str, Any]) -> StepModel | None:
        """The per-step model of the method with ``variant``'s knob parameters."""
        changes = self.space.changes(variant)
        key = tuple(sorted(changes.items()))
        if key not in self._variants:
            try:
                # no high-water-mark resets: they would reset this process's ru_maxrss too
                prof = self.calibrator.profile(self.spec, self.batch_sizes, warmup=0, steps=1,
                                               fill=2, params=changes, timed=False,
                                               split_peaks=False)
                self._variants[key] = StepModel.from_profile(prof)
            except (EdgeclError, ValueError):  # a depth the method refuses, for instance
                self._variants[key] = None
        return self._variants[key]

    def _host(self, resident_mib: float | None) -> HostModel:
        return self.host if resident_mib is None else self.host.rebased(resident_mib * MIB)

    def predict(self, device: str = HOST, batch_size: int | None = None,
                resident_mib: float | None = None) -> Prediction:
        return predict(self.steps, self._host(resident_mib), batch_size or self.batch_size,
                       resolve_device(device))

    def fit(self, budget_mib: float, device: str = HOST, limit: int = 5,
            resident_mib: float | None = None) -> list[Suggestion]:
        """Configurations predicted to stay under ``budget_mib`` on ``device``, best first.
        ``resident_mib``: the training process's resident set before training, when it is not
        the calibration's (see :meth:`HostModel.rebased`)."""
        return search(self.space, self.evaluate, self._host(resident_mib), budget_mib * MIB,
                      resolve_device(device), self.index, limit)

    def plan(self, device: str = HOST, budget_mib: float | None = None,
             limit: int = 5, resident_mib: float | None = None) -> Plan:
        key = resolve_device(device)
        host = self._host(resident_mib)
        budget = None if budget_mib is None else budget_mib * MIB
        result = Plan(self.spec.run_name, predict(self.steps, host, self.batch_size, key),
                      budget, notes=self.notes(key), setup_peak_bytes=host.setup_peak_bytes)
        if not result.fits:
            result.suggestions = search(self.space, self.evaluate, host,
                                        result.limit_bytes, key, self.index, limit)
            if not result.suggestions:
                result.frugal = most_frugal(self.space, self.evaluate, host, key)
        return result

    def notes(self, device: str) -> list[str]:
        cal = ", ".join(str(b) for b in self.batch_sizes)
        if device == HOST:
            return [f"step time from this host's measured steps (batch {cal}): "
                    f"{self.host.flops_per_second / 1e9:.1f} GFLOP/s effective + "
                    f"{self.host.fixed_seconds * 1e3:.0f} ms per step; energy assumes "
                    f"{self.host.watts:.0f} W"]
        profile = PROFILES[device]
        notes = ["estimate from datasheet rates: compute at the sustained rate plus DRAM "
                 "traffic at peak bandwidth, no framework overhead; memory as on this host"]
        if profile.compute == "gpu":
            notes.append("GPU boards: a CUDA context and the kernels' workspace come on top of "
                         "the predicted memory (not modelled)")
        return notes


def plan(cfg: RunConfig, device: str = HOST, budget_mib: float | None = None, *,
         method: str | None = None, isolated: bool = False,
         resident_mib: float | None = None) -> Plan:
    """``cfg``'s method (``method``: a label; default the first) on ``device``;
    ``resident_mib``: see :meth:`Planner.fit`."""
    if isolated:
        return _plan_from(run_request({"op": "plan", "config": _dump(cfg), "method": method,
                                       "device": device, "budget_mib": budget_mib,
                                       "resident_mib": resident_mib}))
    return Planner(cfg, method).plan(device, budget_mib, resident_mib=resident_mib)


def fit(cfg: RunConfig, budget_mib: float, *, method: str | None = None, device: str = HOST,
        limit: int = 5, isolated: bool = True) -> list[Suggestion]:
    """The knob values (best first) with which ``cfg``'s method is predicted to stay under
    ``budget_mib`` of peak RSS; empty when none does. For the learner's start-up check."""
    if isolated:
        out = run_request({"op": "fit", "config": _dump(cfg), "method": method,
                           "budget_mib": budget_mib, "device": device, "limit": limit})
        return [_suggestion_from(s) for s in out["suggestions"]]
    return Planner(cfg, method).fit(budget_mib, device, limit)


def require_fit(cfg: RunConfig, budget_mib: float, *, method: str | None = None,
                isolated: bool = True) -> Plan:
    """The host plan under ``budget_mib``; a :class:`BudgetError` saying what would fit when
    the config does not."""
    result = plan(cfg, HOST, budget_mib, method=method, isolated=isolated)
    if not result.fits:
        raise BudgetError(result.message())
    return result


# ---- a fresh process --------------------------------------------------------------------------
def _dump(cfg: RunConfig) -> dict[str, Any]:
    return cfg.model_dump(mode="json")


def _prediction_from(d: dict[str, Any]) -> Prediction:
    return Prediction(**d)


def _suggestion_from(d: dict[str, Any]) -> Suggestion:
    return Suggestion(d["method_index"], d["batch_size"], d["params"],
                      {k: tuple(v) for k, v in d["changes"].items()},
                      _prediction_from(d["prediction"]))


def _plan_from(d: dict[str, Any]) -> Plan:
    return Plan(d["label"], _prediction_from(d["prediction"]), d["budget_bytes"],
                [_suggestion_from(s) for s in d["suggestions"]], d["notes"],
                _prediction_from(d["frugal"]) if d["frugal"] else None, d["setup_peak_bytes"])
