"""The method contract every continual-learning method implements.

Lifecycle (driven by :mod:`edgecl.runner`)::

    setup(backbone, info)                    # heads, prompts, buffers; what is frozen
    for task in stream:
        begin_task(task)                     # new classes arrive
        for batch in task: observe(batch)    # one optimisation step
        end_task(task)                       # consolidation
        predict(x)                           # logits over all classes (class-IL)

``state_dict``/``load_state_dict`` hold everything needed to resume bit for bit (model,
optimizer, buffers, the method's random generator). On a resume the runner sets the method
up afresh, calls ``begin_task`` of the task recorded in the saved state (``task_index``, the
last task begun), then ``load_state_dict``: a method rebuilds a task's structures in
``begin_task`` as always, and its saved state overwrites them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from edgecl.data.transforms import BatchTransform
from edgecl.efficiency.precision import LossScaler
from edgecl.errors import NonFiniteLossError
from edgecl.metrics.cost import CostMeter, optimizer_state_bytes, tensor_bytes


class MethodParams(BaseModel):
    """Hyper-parameters of a method; subclasses add fields. Unknown fields are errors."""

    model_config = ConfigDict(extra="forbid")


Beta = Annotated[float, Field(ge=0.0, lt=1.0)]


class OptimConfig(BaseModel):
    """The optimizer of a method and its per-task learning-rate schedule."""

    model_config = ConfigDict(extra="forbid")
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.01, gt=0.0, allow_inf_nan=False)
    momentum: float = Field(0.0, ge=0.0, lt=1.0)  # sgd only
    weight_decay: float = Field(0.0, ge=0.0, allow_inf_nan=False)
    betas: tuple[Beta, Beta] = (0.9, 0.999)  # adam and adamw only
    grad_clip: float | None = Field(None, gt=0.0)  # max gradient norm; None: no clipping
    reset_each_task: bool = True
    lr_schedule: Literal["constant", "cosine"] = "constant"  # over each task's steps


@dataclass
class BenchmarkInfo:
    num_classes: int
    n_tasks: int
    task_classes: list[Tensor]
    train_transform: BatchTransform
    device: torch.device
    meter: CostMeter
    seed: int
    steps_per_task: list[int]
    input_size: int
    precision: str = "fp32"  # the training precision that runs (edgecl.efficiency.precision)
    epochs: int = 1  # per task (train.epochs)


@dataclass
class TaskInfo:
    index: int
    classes: Tensor
    n_train: int
    n_steps: int


@dataclass
class Batch:
    x: Tensor  # augmented, normalized float (B, C, S, S)
    y: Tensor  # remapped class ids
    raw: Tensor  # un-augmented uint8 images (B, H, W, C), for buffers
    index: Tensor  # dataset indices
    task_id: int
    epoch: int = 0


@dataclass
class StepStats:
    loss: float
    n_samples: int
    extra: dict[str, float] = field(default_factory=dict)


def make_optimizer(params: list[nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    if cfg.name == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    raise ValueError(f"optim.name must be one of sgd, adam, adamw; got {cfg.name!r}")


def optimizer_kind(cfg: OptimConfig) -> str:
    if cfg.name == "sgd":
        return "sgd_momentum" if cfg.momentum else "sgd"
    return cfg.name


class Method:
    """Base class: owns the optimizer, the random generator and the optimisation step."""

    name: ClassVar[str] = "base"
    Params: ClassVar[type[MethodParams]] = MethodParams
    # The runner feeds the union of all tasks seen so far (joint training) when True.
    trains_on_all_seen_data: ClassVar[bool] = False

    def __init__(self, params: MethodParams, optim: OptimConfig) -> None:
        self.params = params
        self.optim_cfg = optim
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self.modules = nn.ModuleDict()
        self.task_index = -1
        self.seen_classes = 0
        self.loss_scaler = LossScaler("fp32", torch.device("cpu"))  # setup sets the real one

    # ---- lifecycle -----------------------------------------------------------------------
    def setup(self, backbone: nn.Module, info: BenchmarkInfo) -> None:
        self.info = info
        self.meter = info.meter
        self.device = info.device
        self.rng = torch.Generator().manual_seed(info.seed)
        self.loss_scaler = LossScaler(info.precision, info.device)

    def begin_task(self, task: TaskInfo) -> None:
        self.task_index = task.index
        self.current_classes = task.classes.to(self.device)
        # a task may bring only known classes (a CORe50 NIC batch): never shrink
        self.seen_classes = max(self.seen_classes, int(task.classes.max()) + 1)
        if self.optimizer is None or self.optim_cfg.reset_each_task:
            self.optimizer = make_optimizer(self.trainable_parameters(), self.optim_cfg)
            self.scheduler = self._make_scheduler(max(1, task.n_steps))

    def _make_scheduler(self, n_steps: int) -> torch.optim.lr_scheduler.LRScheduler | None:
        """The per-task lr schedule over ``n_steps`` steps (None: constant lr)."""
        if self.optim_cfg.lr_schedule != "cosine":
            return None
        return torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=n_steps)

    def begin_epoch(self, task: TaskInfo, epoch: int, indices: np.ndarray) -> np.ndarray:
        """The dataset indices to train on in this epoch (default: all of the task's).

        Called once at the start of every epoch; a method that removes data (SparCL's DDR)
        returns fewer, so the removed examples show up as fewer steps.
        """
        return indices

    def observe(self, batch: Batch) -> StepStats:
        raise NotImplementedError

    def end_task(self, task: TaskInfo) -> None:
        pass

    def predict(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    # ---- what the optimizer sees ---------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.modules.parameters() if p.requires_grad]

    def extra_results(self) -> dict[str, Any]:
        """Method-specific results merged into results.json (e.g. ``sparse_flops``)."""
        return {}

    def buffer_bytes(self) -> int:
        """Bytes of replay/latent buffers, caches and other method state kept for training."""
        return 0

    def memory_breakdown(self) -> dict[str, int]:
        trainable = self.trainable_parameters()
        return {
            "parameter_bytes": tensor_bytes(self.modules.parameters()),
            "trainable_parameter_bytes": tensor_bytes(trainable),
            "gradient_bytes": tensor_bytes(trainable),
            "optimizer_state_bytes": optimizer_state_bytes(self.optimizer),
            "buffer_bytes": self.buffer_bytes(),
        }

    # ---- the shared optimisation step ----------------------------------------------------
    def check_finite(self, loss: Tensor) -> None:
        if not torch.isfinite(loss.detach()):
            raise NonFiniteLossError(
                f"{self.name}: loss became {loss.item()} in task {self.task_index}. "
                "Lower the learning rate or enable optim.grad_clip; the run stopped and the "
                "last good checkpoint is kept."
            )

    def optimize(self, loss: Tensor) -> None:
        """backward → clip → step, each timed as its own phase, with a finiteness check."""
        self.check_finite(loss)
        assert self.optimizer is not None, "begin_task must run before observe"
        self.optimizer.zero_grad(set_to_none=True)
        # backward and the update outside autocast: gradients follow the forward's dtypes,
        # and the fp32 master weights are updated in fp32
        no_autocast = torch.autocast(self.device.type, enabled=False)
        with self.meter.phase("backward"), no_autocast:
            self.loss_scaler.backward(loss)
        with self.meter.phase("step"), no_autocast:
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            self.loss_scaler.unscale(self.optimizer)
            if self.optim_cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, self.optim_cfg.grad_clip)
            self.before_step()
            self.loss_scaler.step(self.optimizer)
            if self.scheduler is not None:
                self.scheduler.step()
            self.after_step()
            updated = sum(p.numel() for p in params if p.grad is not None)
            self.meter.add_optimizer_flops(optimizer_kind(self.optim_cfg), updated)

    def before_step(self) -> None:
        """Hook between backward and the optimizer step (gradient masks, projections)."""

    def after_step(self) -> None:
        """Hook after the optimizer step (weight masks, constraints)."""

    # ---- resume --------------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        """Subclasses add non-module state (buffers, statistics) here."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {
            "modules": self.modules.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "rng": self.rng.get_state(),
            "task_index": self.task_index,
            "seen_classes": self.seen_classes,
            "extra": self.extra_state(),
            "loss_scaler": self.loss_scaler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.load_extra_state(state["extra"])  # first: may re-create modules
        self.modules.load_state_dict(state["modules"])
        if state["optimizer"] is not None:
            # A fresh optimizer needs a fresh scheduler bound to it (the one begin_task made
            # drives the old optimizer). The optimizer state is loaded after the scheduler is
            # built, so the saved lr and initial_lr win over the scheduler's initial step.
            self.optimizer = make_optimizer(self.trainable_parameters(), self.optim_cfg)
            saved = state["scheduler"]
            self.scheduler = self._make_scheduler(saved["T_max"]) if saved else None
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scheduler is not None:
                self.scheduler.load_state_dict(saved)
        self.rng.set_state(state["rng"])
        self.task_index = state["task_index"]
        self.seen_classes = state["seen_classes"]
        self.loss_scaler.load_state_dict(state.get("loss_scaler", {}))


def mask_logits(logits: Tensor, allowed: Tensor | int) -> Tensor:
    """Set logits outside ``allowed`` (class ids, or the first n classes) to -inf."""
    masked = torch.full_like(logits, float("-inf"))
    if isinstance(allowed, int):
        masked[:, :allowed] = logits[:, :allowed]
    else:
        masked[:, allowed] = logits[:, allowed]
    return masked


class Classifier(nn.Module):
    """A backbone producing (B, D) features + one linear head over all classes."""

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))


def feature_dim_of(backbone: nn.Module) -> int:
    for attr in ("feature_dim", "embed_dim"):
        if hasattr(backbone, attr):
            return int(getattr(backbone, attr))
    raise ValueError(f"{type(backbone).__name__} exposes no feature_dim/embed_dim")


class ClassifierMethod(Method):
    """Shared base of methods that train a backbone + linear head end to end."""

    def setup(self, backbone: nn.Module, info: BenchmarkInfo) -> None:
        super().setup(backbone, info)
        self.net = Classifier(backbone, feature_dim_of(backbone), info.num_classes).to(self.device)
        self.modules["net"] = self.net

    def classification_loss(self, logits: Tensor, y: Tensor) -> Tensor:
        """Cross-entropy over the classes seen so far (future classes are masked out)."""
        return F.cross_entropy(mask_logits(logits, self.seen_classes), y)

    def forward_loss(self, batch: Batch) -> tuple[Tensor, Tensor]:
        logits = self.net(batch.x)
        return self.classification_loss(logits, batch.y), logits

    def observe(self, batch: Batch) -> StepStats:
        self.net.train()
        with self.meter.phase("forward"):
            loss, _ = self.forward_loss(batch)
        self.optimize(loss)
        return StepStats(float(loss.detach()), len(batch.y))

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        self.net.eval()
        return self.net(x)


def iter_chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))
