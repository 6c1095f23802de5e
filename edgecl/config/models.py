"""The run configuration's pydantic models.

A config describes one *comparison*: a benchmark, a backbone, shared training settings and a
list of methods. Each method entry may override fields of the shared ``optim`` and ``train``
blocks; its remaining fields are the method's own hyper-parameters, validated by the method's
``Params`` model (so a misspelt field is an error that names it).

A loaded :class:`RunConfig` is valid as a whole: names, ranges, the methods' parameters and
their merged optimizer and training blocks are all checked by :func:`load_config`, so a bad
value fails before any data is read. A file may ``extends: base.yaml`` (see :func:`read_tree`).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from edgecl.backbones.registry import backbone_entry
from edgecl.backbones.vit import RecomputeMode
from edgecl.data.registry import dataset_entry
from edgecl.data.transforms import AugmentPolicy, TestResize
from edgecl.efficiency.precision import Precision
from edgecl.errors import one_line
from edgecl.methods import REGISTRY, method_class
from edgecl.methods.base import MethodParams, OptimConfig
from edgecl.metrics.accuracy import ClassILLogits


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# The CORe50 scenarios of edgecl.data.core50.SCENARIO_DIRS (a test keeps the two in sync).
Core50Scenario = Literal["ni", "nc", "nic", "nicv2_79", "nicv2_196", "nicv2_391"]
CLASS_INCREMENTAL_FIELDS = ("n_tasks", "class_order", "train_per_class", "test_per_class",
                            "per_class_subset", "first_task_classes")
CORE50_FIELDS = ("core50_scenario", "core50_run", "core50_test_stride", "core50_max_batches")


class DataConfig(Strict):
    dataset: str = "cifar100"  # a name of the dataset registry (edgecl/data/registry.py)
    root: str | None = None  # default: $EDGECL_DATA, then ~/.cache/edgecl/data
    path: str | None = None  # image_folder only
    download: bool = True
    # class-incremental splits (every dataset but core50)
    n_tasks: int = Field(10, ge=1)
    class_order: Literal["fixed", "seeded"] | list[int] = "fixed"
    train_per_class: int | None = Field(None, ge=1)
    test_per_class: int | None = Field(None, ge=1)
    # which images *_per_class keeps: a draw seeded by (seed, class), or the first n of each
    # class in file order (a side-by-side run can then use exactly a reference's images)
    per_class_subset: Literal["seeded", "first"] = "seeded"
    # a base session: the first task has this many classes, the rest split evenly (CsKO)
    first_task_classes: int | None = Field(None, ge=1)
    # input normalization: the backbone weights' own mean/std (from-scratch backbones: the
    # data set's), or none (x / 255, what l2p-, dualprompt-pytorch and CODA-Prompt feed)
    normalize: Literal["weights", "none"] = "weights"
    # core50 only: one task per incremental batch of the scenario's filelists
    core50_scenario: Core50Scenario = "nicv2_391"
    core50_run: int = Field(0, ge=0)
    core50_test_stride: int = Field(1, ge=1)  # keep every n-th test image (ViT-LR/AR1*: 20)
    core50_max_batches: int | None = Field(None, ge=1)  # only the first n batches

    @field_validator("class_order", mode="before")
    @classmethod
    def _order_kind(cls, value: Any) -> Any:
        if isinstance(value, str) and value not in ("fixed", "seeded"):
            raise ValueError(f"must be fixed, seeded or a list of class ids, got {value!r}")
        return value

    @field_validator("class_order")
    @classmethod
    def _distinct_ids(cls, value: str | list[int]) -> str | list[int]:
        if isinstance(value, list):
            if not value or min(value) < 0:
                raise ValueError(f"must list non-negative class ids, got {value}")
            repeated = sorted({c for c in value if value.count(c) > 1})
            if repeated:
                raise ValueError(f"repeats class ids {repeated}")
        return value

    @field_validator("dataset")
    @classmethod
    def registered_dataset(cls, v: str) -> str:
        dataset_entry(v)  # a ConfigError naming the known data sets
        return v

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

    @model_validator(mode="after")
    def _tasks_divide_order(self) -> DataConfig:
        order = self.class_order
        if isinstance(order, list) and self.first_task_classes is not None:
            rest, later = len(order) - self.first_task_classes, self.n_tasks - 1
            if rest < 0 or (later and rest % later) or (not later and rest):
                raise ValueError(
                    f"data.class_order lists {len(order)} classes: after data.first_task_classes "
                    f"{self.first_task_classes}, the other {later} tasks cannot split them evenly")
        elif isinstance(order, list) and len(order) % self.n_tasks:
            raise ValueError(
                f"data.class_order lists {len(order)} classes, which data.n_tasks "
                f"{self.n_tasks} does not divide into equal tasks")
        return self


class BackboneConfig(Strict):
    name: str = "vit_tiny_patch16_224"  # a name of the backbone registry
    weights: str | None = None  # path, "random", or None (local data root, then download)
    img_size: int | None = Field(None, ge=1)  # default: the backbone's native resolution
    # base channel count of a backbone that takes one (resnet18_cifar: stages of 1, 2, 4, 8
    # times it, mammoth's --num_filters); None: the standard width (64)
    width: int | None = Field(None, ge=1)

    @field_validator("name")
    @classmethod
    def registered_backbone(cls, v: str) -> str:
        backbone_entry(v)  # a ConfigError naming the known backbones
        return v

    @model_validator(mode="after")
    def width_supported(self) -> BackboneConfig:
        if self.width is not None and not backbone_entry(self.name).accepts_width:
            raise ValueError(f"backbone.width does not apply to {self.name} (fixed width); "
                             "remove it or use resnet18_cifar")
        return self


class TrainConfig(Strict):
    epochs: int = Field(1, ge=1)
    batch_size: int = Field(16, ge=1)
    eval_batch_size: int = Field(64, ge=1)
    # a named pipeline (edgecl/data/transforms.py); true: random_resized_crop, false: none
    augment: bool | AugmentPolicy = True
    crop_scale: tuple[float, float] = (0.08, 1.0)  # random_resized_crop's area range
    max_steps_per_task: int | None = Field(None, ge=1)
    checkpoint_every_steps: int = Field(0, ge=0)  # 0: only at task ends
    # matmuls/convolutions under autocast, fp32 master weights (edgecl/efficiency/precision.py);
    # auto: bf16 where the hardware computes it natively and faster, else fp32
    precision: Precision = "fp32"
    # mlp: a ViT's blocks keep only their residual for the MLP branch and recompute layer
    # norm, fc1 and GELU in backward (edgecl/backbones/recompute.py); all: the attention
    # branch too. Exact gradients, less activation memory, more forward work in backward
    recompute: RecomputeMode = "none"

    @field_validator("crop_scale")
    @classmethod
    def _scale_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 < value[0] <= value[1] <= 1:
            raise ValueError(f"must satisfy 0 < low <= high <= 1, got {list(value)}")
        return value

    @property
    def augment_policy(self) -> AugmentPolicy:
        """The named pipeline ``augment`` selects (a bool is the older spelling)."""
        if isinstance(self.augment, bool):
            return "random_resized_crop" if self.augment else "none"
        return self.augment


class EvalConfig(Strict):
    """When and on what the model is evaluated.

    ``per_task``: after every task, accuracy on each task seen so far (the accuracy matrix,
    class-IL and task-IL, forgetting, BWT). ``seen_classes``: one class-IL accuracy on the test
    images of all classes seen so far, after every ``every_n_tasks``-th task and after the last
    (the CORe50 NIC protocol of AR1*/ViT-LR, for streams of hundreds of incremental batches).
    """

    protocol: Literal["per_task", "seen_classes"] = "per_task"
    every_n_tasks: int = Field(1, ge=1)
    # test-time resize: bilinear straight to the input size, or Resize(256/224 S, bicubic) +
    # CenterCrop(S) as the references do (edgecl/data/transforms.py)
    test_resize: TestResize = "direct"
    # class-IL argmax over the classes seen so far, or over every logit (l2p-pytorch,
    # dualprompt-pytorch and LightCL)
    class_il_logits: ClassILLogits = "seen"
    precision: Precision | None = None  # None: the method's train.precision

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
    # the real per-step memory peak (allocator/profiler) on the first step and every n-th
    # after it; 0: off (edgecl/metrics/step_peak.py)
    step_peak_every: int = Field(25, ge=0)
    device_profiles: list[str] = ["jetson_nano", "jetson_xavier_nx", "raspberry_pi_4"]

    @field_validator("device_profiles")
    @classmethod
    def known_profiles(cls, v: list[str]) -> list[str]:
        from edgecl.metrics.devices import PROFILES

        unknown = sorted(set(v) - set(PROFILES))
        if unknown:
            raise ValueError(f"unknown device profiles {unknown}; known: {sorted(PROFILES)}")
        return v


# ---- methods ----------------------------------------------------------------------------------
M = TypeVar("M", bound=BaseModel)
SPEC_FIELDS = ("name", "label", "optim", "train")  # the rest of a method entry: its Params


def _dir_name(value: str) -> str:
    if value in ("", ".", "..") or "/" in value or "\\" in value:
        raise ValueError(f"must name a directory (no path separators), got {value!r}")
    return value


RunName = Annotated[str, AfterValidator(_dir_name)]  # names a directory of the run's output


def _checked_override(model: type[BaseModel], value: Any) -> Any:
    """A partial ``optim``/``train`` block, each given field validated and normalised by
    ``model``. (The merge onto the shared block is validated again by ``RunConfig``.)"""
    if isinstance(value, BaseModel):  # a whole block built in code
        value = value.model_dump()
    if not isinstance(value, dict):
        return value  # None, or a type error the field's own type reports
    return model.model_validate(value).model_dump(include=set(value))


def _merged(shared: M, override: dict[str, Any] | None) -> M:
    if not override:
        return shared
    return type(shared).model_validate({**shared.model_dump(), **override})


class MethodSpec(Strict):
    """One method of the comparison: name, optional label, overrides of the shared ``optim``
    and ``train`` blocks (field by field), then the method's own parameters.

    The parameters are validated into the method's ``Params`` model once, when the spec is
    built (:meth:`method_params` returns that instance). ``model_dump`` writes them back flat
    next to ``name``, every default resolved, so a dumped spec loads as the same spec.
    """

    name: str
    label: RunName | None = None  # run name in tables and directories; default: the name
    optim: dict[str, Any] | None = None  # e.g. {lr: 0.001}: the shared optim, lr replaced
    train: dict[str, Any] | None = None  # e.g. {epochs: 3}: the shared train, epochs replaced
    params: MethodParams = Field(exclude=True)  # the method's Params instance

    @model_validator(mode="before")
    @classmethod
    def _parse_params(cls, data: Any) -> Any:
        if isinstance(data, MethodSpec):
            return data
        if not isinstance(data, dict):
            raise ValueError(f"a method entry is a mapping (name: ..., its fields), got {data!r}")
        name = data.get("name")
        if not isinstance(name, str) or name not in REGISTRY:
            got = f"unknown method {name!r}" if "name" in data else "a method entry needs a name"
            raise ValueError(f"{got}; available: {', '.join(sorted(REGISTRY))}")
        own = {k: v for k, v in data.items() if k in SPEC_FIELDS}
        rest = {k: v for k, v in data.items() if k not in SPEC_FIELDS}
        params_cls = method_class(name).Params
        given = rest.get("params")
        if isinstance(given, MethodParams) and len(rest) == 1:  # built in code
            if not isinstance(given, params_cls):
                raise ValueError(
                    f"params must be {params_cls.__name__}, got {type(given).__name__}")
            return {**own, "params": given}
        return {**own, "params": params_cls.model_validate(rest)}

    @field_validator("optim", mode="before")
    @classmethod
    def _optim_fields(cls, value: Any) -> Any:
        return _checked_override(OptimConfig, value)

    @field_validator("train", mode="before")
    @classmethod
    def _train_fields(cls, value: Any) -> Any:
        return _checked_override(TrainConfig, value)

    @model_serializer(mode="wrap")
    def _flat(self, handler: SerializerFunctionWrapHandler,
              info: SerializationInfo) -> dict[str, Any]:
        own = handler(self)
        params = self.params.model_dump(
            mode=info.mode, exclude_unset=info.exclude_unset,
            exclude_defaults=info.exclude_defaults, exclude_none=info.exclude_none)
        head = {k: own.pop(k) for k in ("name", "label") if k in own}
        return {**head, **params, **own}

    @property
    def run_name(self) -> str:
        return self.label or self.name

    def method_params(self) -> MethodParams:
        """The method's parameters, validated when the spec was built."""
        return self.params

    def optim_config(self, shared: OptimConfig) -> OptimConfig:
        """The shared optimizer block with this method's ``optim`` fields replaced."""
        return _merged(shared, self.optim)

    def train_config(self, shared: TrainConfig) -> TrainConfig:
        """The shared training block with this method's ``train`` fields replaced."""
        return _merged(shared, self.train)


# ---- the whole run ----------------------------------------------------------------------------
DEVICE = re.compile(r"cpu|auto|cuda(:\d+)?")


class RunConfig(Strict):
    name: RunName = "run"
    seed: int = Field(42, ge=0)
    # cpu | cuda | cuda:N | auto; only the syntax is checked here (a config may be written on
    # one machine and run on another): the runner checks that the device exists
    device: str = "cpu"
    threads: int | None = Field(None, ge=1)  # torch intra-op threads; default: torch's choice
    data: DataConfig = DataConfig()
    backbone: BackboneConfig = BackboneConfig()
    train: TrainConfig = TrainConfig()
    optim: OptimConfig = OptimConfig()
    eval: EvalConfig = EvalConfig()
    cost: CostConfig = CostConfig()
    methods: list[MethodSpec] = Field(
        default_factory=lambda: [MethodSpec(name="finetune")], min_length=1)

    @field_validator("device")
    @classmethod
    def _device_syntax(cls, value: str) -> str:
        if not DEVICE.fullmatch(value):
            raise ValueError(f"must be cpu, cuda, cuda:N or auto, got {value!r}")
        return value

    @model_validator(mode="after")
    def _methods_fit(self) -> RunConfig:
        labels = [m.run_name for m in self.methods]
        repeated = sorted({x for x in labels if labels.count(x) > 1})
        if repeated:
            raise ValueError(
                f"methods need distinct labels (each names a run directory), got {labels}; "
                f"set label: on the repeated {', '.join(repeated)}")
        # each override was checked field by field; the merged blocks are checked as a whole
        for i, spec in enumerate(self.methods):
            for block, shared in (("optim", self.optim), ("train", self.train)):
                try:
                    _merged(shared, getattr(spec, block))
                except ValidationError as exc:
                    raise ValueError(
                        f"methods.{i} ({spec.name}): {block}: {format_errors(exc)}") from None
        return self


# ---- errors -----------------------------------------------------------------------------------
def format_errors(exc: ValidationError, tree: Any = None) -> str:
    """Pydantic's errors on one line, each led by the path of its field; a method's errors
    name the method: ``methods.1 (er): buffer_sise: Extra inputs are not permitted``."""
    parts = []
    for err in exc.errors():
        where = _where(err["loc"], tree)
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(msg if not where or msg.startswith(f"{where}.") else f"{where}: {msg}")
    return one_line("; ".join(parts))


def _where(loc: tuple[int | str, ...], tree: Any) -> str:
    path = ".".join(str(p) for p in loc)
    if len(loc) < 2 or loc[0] != "methods" or not isinstance(loc[1], int):
        return path
    name = _method_name(tree, loc[1])
    if name is None:
        return path
    head, rest = f"methods.{loc[1]} ({name})", ".".join(str(p) for p in loc[2:])
    return f"{head}: {rest}" if rest else head


def _method_name(tree: Any, index: int) -> str | None:
    methods = tree.get("methods") if isinstance(tree, dict) else None
    if not isinstance(methods, list) or index >= len(methods):
        return None
    entry = methods[index]
    name = entry.get("name") if isinstance(entry, dict) else None
    return name if isinstance(name, str) and name in REGISTRY else None
