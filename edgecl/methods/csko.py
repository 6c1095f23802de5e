"""CsKO: center-sensitive kernel optimization (Zhang, Li, Cheng, Wang, Han; arXiv 2406.08830).

Follows the authors' code (``YanLi-LY/CSKO``, read 2026-12); see docs/methods/csko.md for
every choice where paper, spec and code differ. Per task ``t``:

- **Base session** (``t = 0``): the pretrained network, BatchNorm and all, trains on the base
  classes (``base_trainable``: ``all``, a stand-in for the reference's separately trained
  base model, or ``head``); then a statistics pass.
- **Incremental sessions** (``t >= 1``): BatchNorm is folded into the convs at the first one
  (the reference's structure reorganization before its incremental sessions); the 3x3
  convs of ``adapted_blocks`` (default: the last residual block) are split into a frozen
  3x3 with a zero center plus a 1x1 branch holding the center
  (:class:`CenterDecoupledConv`); only the 1x1 branches and the classifier train. The
  first epoch (``selection_batches``) is DCES's gradient pass (no update): the top
  ``channel_fraction`` input channels of each branch are then the only trainable ones.
  Updates are Adam's, projected onto the approximate null space of the old tasks' input
  covariance restricted to those channels. Old classes are kept by prototype
  augmentation. At task end the branches merge back into the 3x3 centers.
- **Statistics pass**: the last epoch of every task (``stats_batches``) runs the final
  model without updates, as the reference's separate pass after training: class-mean
  features (prototypes) and the adapted layers' input covariance.

So a task of E epochs trains for E - 2 epochs (E - 1 in the base session); configs add the
two passes to the reference's epoch counts. Every loss divides logits by
``logit_temperature`` (0.1) as the reference.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from edgecl.efficiency.bn_folding import adjacent_conv_bn_pairs, fold_batchnorms, set_submodule
from edgecl.efficiency.center_kernel import CenterDecoupledConv
from edgecl.efficiency.channel_selection import GradientSum, top_channels
from edgecl.efficiency.null_space import ProjectedAdam, input_covariance, null_space_projector
from edgecl.efficiency.prototypes import PrototypeBank
from edgecl.errors import ConfigError
from edgecl.methods.base import (
    Batch,
    BenchmarkInfo,
    Classifier,
    Method,
    MethodParams,
    StepStats,
    TaskInfo,
    feature_dim_of,
    mask_logits,
)


class CsKOParams(MethodParams):
    base_trainable: Literal["all", "head"] = "all"
    adapted_blocks: list[str] | None = None  # backbone block names; None: the last block
    fold_bn: bool = True  # structure reorganization
    center_decoupling: bool = True  # False: the adapted 3x3 convs train whole (ablation)
    dces: bool = True
    channel_fraction: float = Field(0.75, gt=0.0, le=1.0)  # reference channel_sparsity
    selection_batches: int | None = Field(None, ge=1)  # None: one epoch
    projection: bool = True
    null_space_ratio: float = Field(5.0, ge=1.0)  # reference thres
    projector_normalize: bool = True  # reference: P / ||P||_F
    prototype_augmentation: bool = True
    proto_weight: float = Field(10.0, ge=0.0)
    proto_temperature: float = Field(0.1, gt=0.0)
    proto_batch_size: int | None = Field(None, ge=1)  # None: the batch's size
    logit_temperature: float = Field(0.1, gt=0.0)
    gradient_filter: bool = True
    filter_patch: int = Field(2, ge=1)
    stats_batches: int | None = Field(None, ge=1)  # None: one epoch
    incremental_lr: float | None = Field(1e-4, gt=0.0)  # reference lr_new; None: optim.lr


def _last_block(backbone: nn.Module) -> str:
    """The last residual block (a module with conv1/conv2 convs), else the last 3x3 conv."""
    last = conv = None
    for name, module in backbone.named_modules():
        if all(isinstance(getattr(module, c, None), nn.Conv2d) for c in ("conv1", "conv2")):
            last = name
        if isinstance(module, nn.Conv2d) and module.kernel_size == (3, 3):
            conv = name
    if last is None and conv is None:
        raise ConfigError("csko needs a CNN backbone with 3x3 convs")
    return last or conv  # type: ignore[return-value]


class CsKO(Method):
    name = "csko"
    Params = CsKOParams
    params: CsKOParams

    # ---- set-up --------------------------------------------------------------------------
    def setup(self, backbone: nn.Module, info: BenchmarkInfo) -> None:
        super().setup(backbone, info)
        p = self.params
        if self.optim_cfg.name != "adam":
            raise ConfigError("csko uses its own projected Adam: set optim.name: adam")
        if not p.center_decoupling and (p.dces or p.projection):
            raise ConfigError("csko: dces and projection act on the 1x1 center branches; "
                              "set them false when center_decoupling is false")
        self.bn_pairs: list[tuple[str, str]] = []
        if p.fold_bn:  # folded at the first incremental session, as the reference
            self.bn_pairs = (backbone.conv_bn_pairs() if hasattr(backbone, "conv_bn_pairs")
                             else adjacent_conv_bn_pairs(backbone))
            paired = {bn for _, bn in self.bn_pairs}
            unpaired = [n for n, m in backbone.named_modules()
                        if isinstance(m, nn.modules.batchnorm._BatchNorm) and n not in paired]
            if unpaired:
                raise ConfigError(f"csko.fold_bn: BatchNorm layers {unpaired[:3]} follow no "
                                  "conv; use fold_bn: false")
        self.net = Classifier(backbone, feature_dim_of(backbone), info.num_classes).to(self.device)
        self.modules["net"] = self.net
        blocks = p.adapted_blocks or [_last_block(backbone)]
        self.layer_names: list[str] = []
        for block in blocks:  # every 3x3 conv inside the block (or the block, a conv)
            try:
                module = backbone.get_submodule(block)
            except AttributeError as exc:
                raise ConfigError(f"csko.adapted_blocks: no module {block!r}") from exc
            found = [f"{block}.{n}" if n else block for n, m in module.named_modules()
                     if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
            if not found:
                raise ConfigError(f"csko.adapted_blocks: {block!r} holds no 3x3 conv")
            self.layer_names += found
        self.bank = PrototypeBank()
        self.covariance: dict[str, Tensor] = {}
        self.selected: dict[str, Tensor] | None = None
        self.projectors: dict[str, Tensor] = {}
        self.grad_sums: dict[str, GradientSum] = {}
        self.decoupled = False
        self.folded = False
        self.task_step = 0
        self.steps_per_epoch = 0

    # ---- structure -----------------------------------------------------------------------
    def _fold(self) -> None:
        """Structure reorganization: BN into the convs (exact; BN in eval mode)."""
        fold_batchnorms(self.net.backbone, self.bn_pairs)
        self.folded = True

    def layer(self, name: str) -> nn.Module:
        return self.net.backbone.get_submodule(name)

    def _decouple(self) -> None:
        patch = self.params.filter_patch if self.params.gradient_filter else None
        for name in self.layer_names:
            conv = self.layer(name)
            assert isinstance(conv, nn.Conv2d)
            set_submodule(self.net.backbone, name, CenterDecoupledConv(conv, patch))
        self.decoupled = True

    def _merge(self) -> None:
        for name in self.layer_names:
            layer = self.layer(name)
            assert isinstance(layer, CenterDecoupledConv)
            merged = layer.merge()
            merged.requires_grad_(False)
            set_submodule(self.net.backbone, name, merged)
        self.decoupled = False

    def _select(self, selected: dict[str, Tensor]) -> None:
        for name, channels in selected.items():
            layer = self.layer(name)
            assert isinstance(layer, CenterDecoupledConv)
            layer.select(channels)
        self.selected = selected

    @property
    def incremental(self) -> bool:
        return self.task_index >= 1

    def _set_trainable(self) -> None:
        self.net.requires_grad_(False)
        self.net.head.requires_grad_(True)
        if not self.incremental:
            if self.params.base_trainable == "all":
                self.net.requires_grad_(True)
            return
        for name in self.layer_names:
            layer = self.layer(name)
            if isinstance(layer, CenterDecoupledConv):
                layer.adapter.weight.requires_grad_(True)
            else:  # ablation without decoupling: the whole 3x3 conv trains
                layer.requires_grad_(True)

    def _make_optimizer(self) -> ProjectedAdam:
        cfg = self.optim_cfg
        lr = cfg.lr if not self.incremental else (self.params.incremental_lr or cfg.lr)
        opt = ProjectedAdam(self.trainable_parameters(), lr=lr, betas=cfg.betas,
                            weight_decay=cfg.weight_decay)
        for name, proj in self.projectors.items():
            layer = self.layer(name)
            if isinstance(layer, CenterDecoupledConv):
                opt.set_projector(layer.adapter.weight, proj)
        return opt

    def _build_projectors(self) -> None:
        self.projectors = {}
        if not (self.params.projection and self.incremental and self.covariance):
            return
        for name in self.layer_names:
            layer = self.layer(name)
            assert isinstance(layer, CenterDecoupledConv)
            idx = layer.selected.to(self.covariance[name].device)
            cov = self.covariance[name][idx][:, idx]
            self.projectors[name] = null_space_projector(
                cov, self.params.null_space_ratio, self.params.projector_normalize)

    # ---- lifecycle -----------------------------------------------------------------------
    def begin_task(self, task: TaskInfo) -> None:
        self.task_index = task.index
        self.current_classes = task.classes.to(self.device)
        self.seen_classes = max(self.seen_classes, int(task.classes.max()) + 1)
        self.task_step, self.steps_per_epoch = 0, 0
        self.scheduler = None
        self.selected, self.projectors, self.grad_sums = None, {}, {}
        if self.incremental and self.params.fold_bn and not self.folded:
            self._fold()
        if self.incremental and self.params.center_decoupling and not self.decoupled:
            self._decouple()
        self._set_trainable()
        self.optimizer = None  # made at the first training step (after the DCES pass)
        self.n_steps = task.n_steps
        self.n_train = task.n_train

    @property
    def selecting_this_task(self) -> bool:
        return self.incremental and self.params.dces and self.params.center_decoupling

    @property
    def needs_stats(self) -> bool:
        return self.params.prototype_augmentation or self.params.projection

    def _pass_sizes(self) -> tuple[int, int]:
        """Steps of this task's DCES pass and statistics pass."""
        n_select = (self.params.selection_batches or self.steps_per_epoch
                    if self.selecting_this_task else 0)
        n_stats = self.params.stats_batches or self.steps_per_epoch if self.needs_stats else 0
        return n_select, n_stats

    def _phase_of(self, step: int) -> str:
        n_select, n_stats = self._pass_sizes()
        if n_select + n_stats > self.n_steps:
            raise ConfigError(
                f"csko: task {self.task_index} has {self.n_steps} steps, but its DCES pass "
                f"({n_select}) and statistics pass ({n_stats}) need more; raise train.epochs "
                "(the two passes take one epoch each) or set selection/stats_batches"
            )
        if step < n_select:
            return "select"
        if step >= self.n_steps - n_stats:
            return "stats"
        return "train"

    def observe(self, batch: Batch) -> StepStats:
        if self.task_step == 0:
            self.steps_per_epoch = math.ceil(self.n_train / len(batch.y))
        kind = self._phase_of(self.task_step)
        if kind == "train" and self.optimizer is None:
            self._start_training()
        self.task_step += 1
        if kind == "select":
            return self._selection_step(batch)
        if kind == "stats":
            return self._stats_step(batch)
        return self._train_step(batch)

    def _train_mode(self) -> None:
        self.net.train(not self.incremental and self.params.base_trainable == "all")

    def _ce(self, logits: Tensor, y: Tensor, temperature: float) -> Tensor:
        return F.cross_entropy(mask_logits(logits, self.seen_classes) / temperature, y)

    def _train_step(self, batch: Batch) -> StepStats:
        self._train_mode()
        p = self.params
        with self.meter.phase("forward"):
            loss = self._ce(self.net(batch.x), batch.y, p.logit_temperature)
            extra = {"ce": float(loss.detach())}
            if self.incremental and p.prototype_augmentation and len(self.bank) and p.proto_weight:
                n = p.proto_batch_size or len(batch.y)
                protos, labels = self.bank.sample(n, self.rng)
                proto = self._ce(self.net.head(protos.to(self.device)), labels.to(self.device),
                                 p.proto_temperature)
                extra["proto"] = float(proto.detach())
                loss = loss + p.proto_weight * proto
        self.optimize(loss)
        return StepStats(float(loss.detach()), len(batch.y), extra)

    def before_step(self) -> None:
        assert isinstance(self.optimizer, ProjectedAdam)
        self.meter.add_flops("optimizer", self.optimizer.projection_flops())

    def _selection_step(self, batch: Batch) -> StepStats:
        """DCES: one gradient pass (no update); the 1x1 branches' gradients are summed."""
        self.net.eval()
        with self.meter.phase("selection"):
            loss = self._ce(self.net(batch.x), batch.y, self.params.logit_temperature)
            self.check_finite(loss)
            adapters = {n: self.layer(n).adapter.weight for n in self.layer_names}
            grads = torch.autograd.grad(loss, list(adapters.values()))
            for name, g in zip(adapters, grads, strict=True):
                self.grad_sums.setdefault(name, GradientSum()).add(g)
        return StepStats(float(loss.detach()), len(batch.y), {"selection": 1.0})

    def _start_training(self) -> None:
        """After the DCES pass: select channels, build projectors, optimizer and schedule."""
        if self.selecting_this_task:
            self._select({n: top_channels(self.grad_sums[n].channel_scores(),
                                          self.params.channel_fraction).cpu()
                          for n in self.layer_names})
            self.grad_sums = {}
            self._set_trainable()
        self._build_projectors()
        self.optimizer = self._make_optimizer()
        train_steps = self.n_steps - self._pass_sizes()[1] - self.task_step
        self.scheduler = self._make_scheduler(max(1, train_steps))

    @torch.no_grad()
    def _stats_step(self, batch: Batch) -> StepStats:
        """The final model, no update: class-mean features and the layers' input covariance."""
        self.net.eval()
        hooks = []
        if self.params.projection:
            for name in self.layer_names:
                hooks.append(self.layer(name).register_forward_pre_hook(self._covariance_hook(name)))
        try:
            with self.meter.phase("forward"):
                features = self.net.backbone(batch.x)
        finally:
            for h in hooks:
                h.remove()
        if self.params.prototype_augmentation:
            self.bank.accumulate(features, batch.y)
        return StepStats(0.0, len(batch.y), {"stats": 1.0})

    def _covariance_hook(self, name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Tensor, ...]) -> None:
            cov = input_covariance(args[0])
            self.covariance[name] = self.covariance[name] + cov if name in self.covariance else cov
        return hook

    def end_task(self, task: TaskInfo) -> None:
        self.bank.commit()
        if self.decoupled:
            self._merge()
        self.optimizer, self.scheduler = None, None
        self.projectors = {}
        self.selected = None

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        self.net.eval()
        return self.net(x)

    # ---- accounting ----------------------------------------------------------------------
    def buffer_bytes(self) -> int:
        tensors = [*self.covariance.values(), *self.projectors.values()]
        return self.bank.nbytes() + sum(t.numel() * t.element_size() for t in tensors)

    def extra_results(self) -> dict[str, Any]:
        return {"csko_adapted_layers": list(self.layer_names),
                "csko_prototypes": len(self.bank)}

    # ---- resume --------------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        return {
            "bank": self.bank.state_dict(),
            "covariance": dict(self.covariance),
            "selected": dict(self.selected) if self.selected is not None else None,
            "projectors": dict(self.projectors),
            "grad_sums": {n: s.total for n, s in self.grad_sums.items()},
            "decoupled": self.decoupled,
            "folded": self.folded,
            "task_step": self.task_step,
            "steps_per_epoch": self.steps_per_epoch,
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.bank.load_state_dict(state["bank"])
        self.covariance = dict(state["covariance"])
        if state["folded"] and not self.folded:
            self._fold()  # the structure; the saved tensors fill it
        if state["decoupled"] and not self.decoupled:
            self._decouple()
        if not state["decoupled"] and self.decoupled:
            self._merge()
        if state["selected"] is not None:
            self._select(dict(state["selected"]))
        self._set_trainable()
        self.projectors = dict(state["projectors"])
        self.grad_sums = {}
        for name, total in state["grad_sums"].items():
            self.grad_sums[name] = GradientSum()
            self.grad_sums[name].total = total
        self.task_step = state["task_step"]
        self.steps_per_epoch = state["steps_per_epoch"]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.task_index = state["task_index"]
        self.seen_classes = state["seen_classes"]
        self.load_extra_state(state["extra"])  # first: restores the structure
        self.modules.load_state_dict(state["modules"])
        self.optimizer, self.scheduler = None, None
        if state["optimizer"] is not None:
            self.optimizer = self._make_optimizer()
            saved = state["scheduler"]
            self.scheduler = self._make_scheduler(saved["T_max"]) if saved else None
            self.optimizer.load_state_dict(state["optimizer"])  # after: its lr wins
            if self.scheduler is not None:
                self.scheduler.load_state_dict(saved)
        self.rng.set_state(state["rng"])
