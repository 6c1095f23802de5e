"""Run configuration: pydantic models, YAML in, ``--set key=value`` overrides.

A config describes one *comparison*: a benchmark, a backbone, shared training settings and a
list of methods. Each method entry may override the optimizer and training settings; its
remaining fields are the method's own hyper-parameters, validated by the method's ``Params``
model (so a misspelt field is an error that names it).
"""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from edgecl.errors import ConfigError
from edgecl.methods import REGISTRY, method_class
from edgecl.methods.base import MethodParams, OptimConfig


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# The CORe50 scenarios of edgecl.data.core50.SCENARIO_DIRS (a test keeps the two in sync).
Core50Scenario = Literal["ni", "nc", "nic", "nicv2_79", "nicv2_196", "nicv2_391"]
CLASS_INCREMENTAL_FIELDS = ("n_tasks", "class_order", "train_per_class", "test_per_class")
CORE50_FIELDS = ("core50_scenario", "core50_run", "core50_test_stride", "core50_max_batches")


class DataConfig(Strict):
    dataset: Literal["cifar100", "cifar10", "fashion_mnist", "image_folder", "core50"] = (
        "cifar100")
    root: str | None = None  # default: $EDGECL_DATA, then ~/.cache/edgecl/data
    path: str | None = None  # image_folder only
    download: bool = True
    # class-incremental splits (every dataset but core50)
    n_tasks: int = Field(10, ge=1)
    class_order: Literal["fixed", "seeded"] | list[int] = "fixed"
    train_per_class: int | None = Field(None, ge=1)
    test_per_class: int | None = Field(None, ge=1)
    # core50 only: one task per incremental batch of the scenario's filelists
    core50_scenario: Core50Scenario = "nicv2_391"
    core50_run: int = Field(0, ge=0)
    core50_test_stride: int = Field(1, ge=1)  # keep every n-th test image (ViT-LR/AR1*: 20)
    core50_max_batches: int | None = Field(None, ge=1)  # only the first n batches

    @model_validator(mode="after")
    def fields_fit_dataset(self) -> DataConfig:
        """A field is in use when its value differs from its default (a resolved config, as
        saved in config.yaml, repeats every default, so being *set* is not enough)."""
        core50 = self.dataset == "core50"
        candidates = CLASS_INCREMENTAL_FIELDS if core50 else CORE50_FIELDS
        unused = [f"data.{name}" for name in candidates
                  if getattr(self, name) != type(self).model_fields[name].default]
        if unused:
            hint = ("CORe50 has one task per incremental batch of data.core50_scenario" if core50
                    else "core50_* fields need data.dataset: core50")
            one = len(unused) == 1
            raise ValueError(
                f"{', '.join(unused)} {'is' if one else 'are'} not used with data.dataset "
                f"{self.dataset}; remove {'it' if one else 'them'} ({hint})")
        return self


class BackboneConfig(Strict):
    name: str = "vit_tiny_patch16_224"  # vit_* | resnet18_cifar | efficientnet_lite0
    weights: str | None = None  # path, "random", or None (local data root, then download)
    img_size: int | None = None  # default: the backbone's native resolution


class TrainConfig(Strict):
    epochs: int = Field(1, ge=1)
    batch_size: int = Field(16, ge=1)
    eval_batch_size: int = Field(64, ge=1)
    augment: bool = True
    max_steps_per_task: int | None = Field(None, ge=1)
    checkpoint_every_steps: int = Field(0, ge=0)  # 0: only at task ends


class EvalConfig(Strict):
    """When and on what the model is evaluated.

    ``per_task``: after every task, accuracy on each task seen so far (the accuracy matrix,
    class-IL and task-IL, forgetting, BWT). ``seen_classes``: one class-IL accuracy on the test
    images of all classes seen so far, after every ``every_n_tasks``-th task and after the last
    (the CORe50 NIC protocol of AR1*/ViT-LR, for streams of hundreds of incremental batches).
    """

    protocol: Literal["per_task", "seen_classes"] = "per_task"
    every_n_tasks: int = Field(1, ge=1)

    @model_validator(mode="after")
    def every_needs_seen_classes(self) -> EvalConfig:
        if self.protocol == "per_task" and self.every_n_tasks != 1:
            raise ValueError(
                "eval.every_n_tasks applies to protocol seen_classes only; per_task evaluates "
                "after every task (its accuracy matrix needs every row)")
        return self

    def due(self, t: int, n_tasks: int) -> bool:
        """Whether to evaluate after task ``t`` (0-based) of ``n_tasks``."""
        return (t + 1) % self.every_n_tasks == 0 or t == n_tasks - 1


class CostConfig(Strict):
    count_flops: bool = True
    device_profiles: list[str] = ["jetson_nano", "jetson_xavier_nx", "raspberry_pi_4"]

    @field_validator("device_profiles")
    @classmethod
    def known_profiles(cls, v: list[str]) -> list[str]:
        from edgecl.metrics.devices import PROFILES

        unknown = sorted(set(v) - set(PROFILES))
        if unknown:
            raise ValueError(f"unknown device profiles {unknown}; known: {sorted(PROFILES)}")
        return v


class MethodSpec(BaseModel):
    """One method of the comparison: name, optional overrides, then its own parameters."""

    model_config = ConfigDict(extra="allow")
    name: str
    label: str | None = None  # run name in tables; default: the method name
    optim: OptimConfig | None = None
    train: dict[str, Any] | None = None  # overrides of the shared TrainConfig

    @field_validator("name")
    @classmethod
    def known_method(cls, v: str) -> str:
        if v not in REGISTRY:
            raise ValueError(f"unknown method {v!r}; available: {', '.join(sorted(REGISTRY))}")
        return v

    @property
    def run_name(self) -> str:
        return self.label or self.name

    def method_params(self) -> MethodParams:
        return method_class(self.name).Params(**(self.model_extra or {}))

    def train_config(self, shared: TrainConfig) -> TrainConfig:
        return TrainConfig(**{**shared.model_dump(), **(self.train or {})})

    def optim_config(self, default: OptimConfig) -> OptimConfig:
        return self.optim or default


class RunConfig(Strict):
    name: str = "run"
    seed: int = 42
    device: str = "cpu"  # cpu | cuda | cuda:N | auto
    threads: int | None = None  # torch intra-op threads; default: torch's choice
    data: DataConfig = DataConfig()
    backbone: BackboneConfig = BackboneConfig()
    train: TrainConfig = TrainConfig()
    optim: OptimConfig = OptimConfig()
    eval: EvalConfig = EvalConfig()
    cost: CostConfig = CostConfig()
    methods: list[MethodSpec] = [MethodSpec(name="finetune")]

    def validate_methods(self) -> None:
        """Validate every method's own parameters (errors name method and field)."""
        labels = [m.run_name for m in self.methods]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"methods need distinct labels, got {labels}")
        for i, spec in enumerate(self.methods):
            try:
                spec.method_params()
                spec.train_config(self.train)
            except ValidationError as exc:
                raise ConfigError(
                    f"methods.{i} ({spec.name}): {_format_errors(exc)}"
                ) from None


def _format_errors(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(msg if msg.startswith(f"{where}.") else f"{where}: {msg}")
    return "; ".join(parts)


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    key, value = item.split("=", 1)
    return key.strip().split("."), yaml.safe_load(value)


def apply_override(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node: Any = tree
    for i, part in enumerate(path[:-1]):
        if isinstance(node, list):
            node = node[_list_index(node, part, path[: i + 1])]
        else:
            node = node.setdefault(part, {})
    last = path[-1]
    if isinstance(node, list):
        node[_list_index(node, last, path)] = value
    else:
        node[last] = value


def _list_index(node: list, part: str, path: list[str]) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"--set {'.'.join(path)}: {part!r} is not an index below {len(node)}")
    return int(part)


def default_config_text() -> str:
    return resources.files("edgecl").joinpath("configs/default.yaml").read_text()


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> RunConfig:
    """Read YAML (or the embedded default), apply ``key=value`` overrides, validate."""
    text = Path(path).read_text() if path else default_config_text()
    try:
        tree = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path or 'default config'}: top level must be a mapping")
    tree = copy.deepcopy(tree)
    for item in overrides:
        apply_override(tree, *parse_override(item))
    try:
        cfg = RunConfig(**tree)
    except ValidationError as exc:
        raise ConfigError(f"invalid config: {_format_errors(exc)}") from None
    cfg.validate_methods()
    return cfg
