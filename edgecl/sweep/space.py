"""Sweep files: an ordinary run config plus a ``sweep:`` block naming the search space.

::

    extends: base.yaml          # any run config (or its fields inline)
    methods: [{name: finetune}, {name: er, buffer_size: 50}]   # the methods axis
    sweep:
      metric: class_il.final_average   # named metric (edgecl.sweep.metrics.METRICS)
      mode: max                        # default: the metric's better direction
      seeds: [0, 1, 2]                 # the seeds axis (default: the config's seed)
      grid:                            # dotted config fields, every value crossed
        optim.lr: [0.01, 0.001]
        methods.er.buffer_size: [50, 100]   # methods.<label>.<field>: that method only
      sample:                          # sampled axes, drawn num_samples times per grid point
        num_samples: 4
        search: random                 # or optuna (Ray Tune's OptunaSearch)
        seed: 0
        axes:
          optim.weight_decay: {loguniform: [1.0e-6, 1.0e-3]}
          train.batch_size: {choice: [4, 8]}
      cpus_per_trial: 1
      gpus_per_trial: 0                # e.g. 0.5: two trials share a GPU (device: auto)
      max_concurrent: null             # default: as many as the CPUs allow
      max_failures: 0                  # Ray's retries of a failing trial

Each trial runs one method of ``methods`` with one seed and one value per axis. The space is
checked here (structure, ranges, paths); a *value* a run config rejects fails its trial only.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgecl.config import RunConfig
from edgecl.config.files import read_tree
from edgecl.config.models import format_errors
from edgecl.errors import ConfigError
from edgecl.sweep.metrics import METRICS, metric_entry

PATH_FORBIDDEN = {"seed": "use sweep.seeds", "methods": "the config's methods: list is the axis",
                  "name": "a sweep names its trials itself"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Distribution(_Strict):
    """Exactly one of ``uniform: [low, high]``, ``loguniform: [low, high]`` (low > 0) or
    ``choice: [values...]``."""

    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    choice: list[Any] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _one_kind(self) -> Distribution:
        given = [k for k in ("uniform", "loguniform", "choice") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of uniform: [low, high], loguniform: [low, high] "
                             f"or choice: [values], got {given or 'none'}")
        bounds = self.uniform or self.loguniform
        if bounds is not None and not bounds[0] < bounds[1]:
            raise ValueError(f"{given[0]} needs low < high, got {list(bounds)}")
        if self.loguniform is not None and self.loguniform[0] <= 0:
            raise ValueError(f"loguniform needs low > 0, got {list(self.loguniform)}")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("uniform", "loguniform", "choice") if getattr(self, k) is not None)


class SampleSpec(_Strict):
    num_samples: int = Field(1, ge=1)
    search: Literal["random", "optuna"] = "random"
    seed: int = Field(0, ge=0)  # the searcher's random state: the same sweep draws the same
    axes: dict[str, Distribution] = Field(default_factory=dict)


class SweepSpec(_Strict):
    metric: str = "class_il.final_average"
    mode: Literal["max", "min"] | None = None  # default: the metric's better direction
    seeds: list[int] | None = Field(None, min_length=1)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    sample: SampleSpec = SampleSpec()
    cpus_per_trial: float = Field(1, gt=0)
    gpus_per_trial: float = Field(0, ge=0)  # Ray sets CUDA_VISIBLE_DEVICES; use device: auto
    max_concurrent: int | None = Field(None, ge=1)
    max_failures: int = Field(0, ge=0)

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        metric_entry(value)
        return value

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, value: list[int] | None) -> list[int] | None:
        if value is not None:
            if min(value) < 0:
                raise ValueError(f"seeds must be >= 0, got {value}")
            if len(set(value)) != len(value):
                raise ValueError(f"seeds repeat: {value}")
        return value

    @field_validator("grid")
    @classmethod
    def _grid_lists(cls, value: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for path, values in value.items():
            if not values:
                raise ValueError(f"{path}: a grid axis needs at least one value")
        return value

    @property
    def direction(self) -> str:
        return self.mode or METRICS[self.metric].better


@dataclass(frozen=True)
class Axis:
    """A dotted config path, scoped to one method's entry when written
    ``methods.<label>.<field>`` (then ``path`` addresses the trial's only method entry)."""

    name: str  # as written in the sweep file
    path: tuple[str, ...]  # in the trial's one-method config
    method: str | None  # the label it applies to; None: every trial


@dataclass
class Sweep:
    """A validated sweep: the base config tree (methods included) and the space."""

    tree: dict[str, Any]
    spec: SweepSpec
    labels: list[str]
    axes: dict[str, Axis] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.tree.get("name", "sweep"))

    @property
    def seeds(self) -> list[int]:
        return self.spec.seeds or [int(self.tree.get("seed", RunConfig().seed))]

    def method_entry(self, label: str) -> dict[str, Any]:
        return copy.deepcopy(self.tree["methods"][self.labels.index(label)])

    def cells(self) -> list[dict[str, Any]]:
        """The grid points without seeds: per method, the product of the axes that apply."""
        out = []
        for label in self.labels:
            names = [n for n in self.spec.grid if self.axes[n].method in (None, label)]
            for values in itertools.product(*(self.spec.grid[n] for n in names)):
                out.append({"method": label, "grid": dict(zip(names, values, strict=True))})
        return out

    def to_dict(self) -> dict[str, Any]:
        """The sweep file this sweep reloads from (``sweep.yaml`` in its output)."""
        return {**self.tree, "sweep": self.spec.model_dump(mode="json", exclude_none=True)}


def parse_axis(name: str, labels: list[str]) -> Axis:
    parts = name.split(".")
    if not all(parts):
        raise ConfigError(f"sweep axis {name!r}: not a dotted config path")
    if parts[0] in PATH_FORBIDDEN and not (parts[0] == "methods" and len(parts) > 2):
        raise ConfigError(f"sweep axis {name!r}: {PATH_FORBIDDEN[parts[0]]}")
    if parts[0] != "methods":
        return Axis(name, tuple(parts), None)
    if parts[1] not in labels:
        raise ConfigError(f"sweep axis {name!r}: no method labelled {parts[1]!r} "
                          f"(methods.<label>.<field>; labels: {', '.join(labels)})")
    if parts[2] in ("name", "label"):
        raise ConfigError(f"sweep axis {name!r}: a method's {parts[2]} is not an axis")
    return Axis(name, ("methods", "0", *parts[2:]), parts[1])


def sweep_from_tree(tree: dict[str, Any], source: str = "sweep") -> Sweep:
    """Validate a sweep tree: the run config (every method included) and the space."""
    tree = copy.deepcopy(tree)
    raw = tree.pop("sweep", None)
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a sweep file needs a sweep: mapping (metric, seeds, grid, "
                          "sample); without one it is a run config (edgecl run)")
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: invalid sweep: {format_errors(exc)}") from None
    try:
        base = RunConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(f"{source}: invalid config: {format_errors(exc, tree)}") from None
    labels = [m.run_name for m in base.methods]
    tree.setdefault("methods", [m.model_dump(mode="json") for m in base.methods])
    names = list(spec.grid) + list(spec.sample.axes)
    both = sorted(set(spec.grid) & set(spec.sample.axes))
    if both:
        raise ConfigError(f"{source}: sweep axes {both} are both grid and sampled")
    sweep = Sweep(tree, spec, labels, {n: parse_axis(n, labels) for n in names})
    if spec.sample.search == "optuna":
        _optuna_fits(sweep, source)
    return sweep


def _optuna_fits(sweep: Sweep, source: str) -> None:
    """Optuna explores the sampled axes of one configuration (it cannot take grid axes)."""
    spec = sweep.spec
    if not spec.sample.axes:
        raise ConfigError(f"{source}: sweep.sample.search optuna needs sampled axes")
    grid = [*spec.grid, *(["seeds"] if len(sweep.seeds) > 1 else []),
            *(["methods"] if len(sweep.labels) > 1 else [])]
    if grid:
        raise ConfigError(
            f"{source}: sweep.sample.search optuna searches sampled axes of one method and seed; "
            f"remove the grid axes {grid} (sweep the seeds of the best values afterwards)")


def load_sweep(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Sweep:
    """The sweep file at ``path`` (``extends`` merged, ``--set`` overrides applied)."""
    from edgecl.config.files import apply_override, parse_override

    tree = read_tree(Path(path))
    for item in overrides:
        apply_override(tree, *parse_override(item))
    return sweep_from_tree(tree, str(path))
