"""LightCL (Wang et al., arXiv 2407.10545): freeze the general layers, memorise feature patterns.

1. *Maintain generalizability*: the first ``k`` layers (ViT blocks / CNN stages) are frozen
   for the whole stream and run under ``no_grad`` (:mod:`edgecl.efficiency.freezing`), which
   removes their activations, gradients and optimizer state from the training footprint.
2. *Memorize feature patterns*: at the end of task t, channel importance
   ``Σ_{n,spatial/tokens} |f_c|`` is computed at every tap of the trainable part on one batch
   of task t; the top channels form a binary mask, accumulated over tasks by OR. At the start
   of task t > 0, a buffer of 15 images of the new task's first batch is stored together with
   its tap features and logits under the pre-task weights. Every step adds
   ``β·Σ_taps Σ M ⊙ (F(B) − F_ref)² + β·Σ (z_B − z_ref)²`` (sums) to the cross-entropy.

Follows the released code (``INV-WZQ/LightCL``) where it is more specific than the paper:
cross-entropy over the *current task's* logits only (``ce_scope``), the kthvalue channel
selection that keeps ``round(C·ratio)+1`` channels (``mask_rule``), buffer and importance
forwards in training mode, β = 2e-4, 15 buffer images, ratio 0.15. Deviation by default:
frozen BatchNorm layers run in eval mode (``frozen_bn: train`` restores the reference).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgecl.efficiency.feature_cache import Storage
from edgecl.efficiency.freezing import (
    FreezeSpec,
    FrozenBN,
    FrozenPrefix,
    TapRecorder,
    channel_dim,
    is_vit,
    layer_names,
    reference_cnn_split,
    resolve_freeze_point,
    tap_points,
)
from edgecl.efficiency.prefix_features import PrefixFeatures
from edgecl.efficiency.replay_buffer import augment
from edgecl.errors import ConfigError
from edgecl.methods.base import (
    Batch,
    BenchmarkInfo,
    ClassifierMethod,
    MethodParams,
    StepStats,
    TaskInfo,
)
from edgecl.metrics.cost import tensor_bytes


class LightCLParams(MethodParams):
    # Frozen layers: a count, a layer name (frozen up to and including it), "auto" (from an
    # `edgecl analyze-layers` JSON given as layer_analysis) or None (the reference analogue:
    # ViT all but the last two blocks; ResNet-18 up to layer3; EfficientNet up to stage6).
    freeze_until: FreezeSpec = None
    layer_analysis: str | None = None
    frozen_bn: FrozenBN = "eval"
    beta: float = 2e-4
    buffer_size: int = 15
    ratio: float = 0.15
    mask_rule: Literal["reference", "topk"] = "reference"
    importance_samples: int = 256
    ce_scope: Literal["task", "seen"] = "task"
    cache_features: bool = False
    cache_storage: Storage = "fp32"


# ---- pieces with hand-checkable semantics ----------------------------------------------------
def n_keep(channels: int, ratio: float) -> int:
    """``int(C·ratio + 0.5)``: round half up, as the reference computes it."""
    return int(channels * ratio + 0.5)


def select_channels(importance: Tensor, ratio: float, rule: str = "reference") -> Tensor:
    """Binary mask of important channels.

    ``reference``: threshold = the ``max(1, C − n_keep)``-th smallest importance, keep every
    channel ``>=`` it (this keeps ``n_keep + 1`` channels when values are distinct, as the
    released code does). ``topk``: exactly the ``n_keep`` largest.
    """
    c = importance.numel()
    keep = n_keep(c, ratio)
    if rule == "reference":
        threshold = torch.kthvalue(importance.flatten(), max(1, c - keep)).values
        return importance >= threshold
    if rule == "topk":
        mask = torch.zeros(c, dtype=torch.bool, device=importance.device)
        mask[torch.topk(importance.flatten(), keep).indices] = True
        return mask
    raise ValueError(f"mask_rule must be 'reference' or 'topk', got {rule!r}")


def channel_importance(feature: Tensor, vit: bool) -> Tensor:
    """Σ |f_c| over every axis except the channel axis."""
    dim = channel_dim(feature, vit)
    dims = [d for d in range(feature.dim()) if d != dim]
    return feature.detach().abs().sum(dim=dims)


def broadcast_mask(mask: Tensor, feature: Tensor, vit: bool) -> Tensor:
    shape = [1] * feature.dim()
    shape[channel_dim(feature, vit)] = -1
    return mask.to(feature.dtype).view(shape)


def pattern_loss(
    feats: dict[str, Tensor], refs: dict[str, Tensor], masks: dict[str, Tensor],
    logits: Tensor, ref_logits: Tensor, beta: float, vit: bool,
) -> Tensor:
    """β·Σ_taps Σ M ⊙ (F − F_ref)² + β·Σ (z − z_ref)² (sums, not means)."""
    total = ((logits - ref_logits) ** 2).sum()
    for name, ref in refs.items():
        diff2 = (feats[name] - ref) ** 2
        if name in masks:
            diff2 = diff2 * broadcast_mask(masks[name], diff2, vit)
        total = total + diff2.sum()
    return beta * total


def default_freeze_point(backbone: nn.Module) -> int:
    """The released code's split, carried over: only the last two blocks/stages train."""
    cnn = reference_cnn_split(backbone)
    return cnn if cnn is not None else max(0, len(layer_names(backbone)) - 2)  # ViT


def freeze_point_from_analysis(path: str | None, backbone: nn.Module) -> int:
    if not path:
        raise ConfigError(
            "lightcl: freeze_until='auto' needs layer_analysis: the analysis.json written by "
            "`edgecl analyze-layers` for this backbone"
        )
    data = json.loads(Path(path).read_text())
    if list(data["layers"]) != layer_names(backbone):
        raise ConfigError(
            f"lightcl: {path} analyses layers {data['layers']}, not this backbone's "
            f"{layer_names(backbone)}"
        )
    return int(data["proposed_freeze_until"])


# ---- the method --------------------------------------------------------------------------------
class LightCL(ClassifierMethod):
    name = "lightcl"
    Params = LightCLParams
    params: LightCLParams

    def setup(self, backbone: nn.Module, info: BenchmarkInfo) -> None:
        super().setup(backbone, info)
        nn.init.xavier_uniform_(self.net.head.weight)  # the reference's fresh head
        nn.init.zeros_(self.net.head.bias)
        p = self.params
        if p.freeze_until == "auto":
            k = freeze_point_from_analysis(p.layer_analysis, backbone)
        else:
            k = resolve_freeze_point(backbone, p.freeze_until, default_freeze_point(backbone))
        self.frozen = FrozenPrefix(backbone, k, p.frozen_bn)
        storage = p.cache_storage if p.cache_features else None
        self.features = PrefixFeatures.build(self.frozen, storage, info.train_transform,
                                             self.name, "freeze_until", self.meter)
        self.vit = is_vit(backbone)
        self.taps = tap_points(backbone, k)
        self.masks: dict[str, Tensor] = {}
        self.reset_task_state()

    def reset_task_state(self) -> None:
        self.buffer: Tensor | None = None  # prefix outputs (or inputs when frozen_bn=train)
        self.ref_feats: dict[str, Tensor] = {}
        self.ref_logits: Tensor | None = None
        self.stash: Tensor | None = None  # raw images (or dataset indices with the cache)

    # ---- lifecycle -----------------------------------------------------------------------
    def begin_task(self, task: TaskInfo) -> None:
        self.reset_task_state()
        self.features.begin_task(task.n_train)
        super().begin_task(task)

    def forward_taps(self, h: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        with TapRecorder(self.taps) as rec:
            logits = self.net.head(self.frozen.suffix(h))
        return rec.outputs(), logits

    @torch.no_grad()
    def record_reference(self, batch: Batch) -> None:
        """Buffer of the new task's first images + their features under pre-task weights."""
        n = min(self.params.buffer_size, len(batch.y))
        x = batch.x[:n]
        h = self.frozen.prefix(x)
        feats, logits = self.forward_taps(h)
        self.buffer = (h if self.frozen.deterministic else x).detach().clone()
        self.ref_feats = {k: v.detach().clone() for k, v in feats.items()}
        self.ref_logits = logits.detach().clone()

    def buffer_loss(self) -> Tensor:
        assert self.buffer is not None and self.ref_logits is not None
        h = self.buffer if self.frozen.deterministic else self.frozen.prefix(self.buffer)
        feats, logits = self.forward_taps(h)
        masks = self.masks if self.params.ratio < 1.0 else {}
        return pattern_loss(feats, self.ref_feats, masks, logits, self.ref_logits,
                            self.params.beta, self.vit)

    def ce_loss(self, logits: Tensor, y: Tensor) -> Tensor:
        if self.params.ce_scope == "seen":
            return self.classification_loss(logits, y)
        classes = torch.sort(self.current_classes).values
        return F.cross_entropy(logits[:, classes], torch.searchsorted(classes, y))

    def observe(self, batch: Batch) -> StepStats:
        self.frozen.train_mode()
        if self.task_index > 0 and self.ref_logits is None:
            with self.meter.phase("forward"):
                self.record_reference(batch)
        with self.meter.phase("forward"):
            reg = self.buffer_loss() if self.ref_logits is not None else None
            logits = self.net.head(self.frozen.suffix(self.features(batch.x, batch.index)))
            ce = self.ce_loss(logits, batch.y)
            loss = ce if reg is None else ce + reg
        self.optimize(loss)
        self.add_to_stash(batch)
        n_buffer = 0 if self.buffer is None else len(self.buffer)
        extra = {"ce": float(ce.detach()), "pattern": 0.0 if reg is None else float(reg.detach())}
        return StepStats(float(loss.detach()), len(batch.y) + n_buffer, extra)

    def add_to_stash(self, batch: Batch) -> None:
        have = 0 if self.stash is None else len(self.stash)
        room = self.params.importance_samples - have
        if room <= 0:
            return
        cached = self.features.cache is not None
        new = (batch.index if cached else batch.raw)[:room].detach().cpu().clone()
        self.stash = new if self.stash is None else torch.cat([self.stash, new])

    def end_task(self, task: TaskInfo) -> None:
        if self.stash is not None and len(self.stash):
            with self.meter.phase("forward"):
                self.update_masks(self.stash)
        self.reset_task_state()

    @torch.no_grad()
    def update_masks(self, stash: Tensor) -> None:
        """Importance on one batch of the task (training mode, as the reference), OR-ed in."""
        self.frozen.train_mode()
        if self.features.cache is not None:
            h = self.features.cache.get(stash).to(self.device)
        else:
            h = self.frozen.prefix(augment(stash, self.info.train_transform, self.rng, self.device))
        feats, _ = self.forward_taps(h)
        for name, f in feats.items():
            mask = select_channels(channel_importance(f, self.vit), self.params.ratio,
                                   self.params.mask_rule)
            old = self.masks.get(name)
            self.masks[name] = mask if old is None else old | mask

    # ---- accounting / resume ---------------------------------------------------------------
    def state_tensors(self) -> list[Tensor]:
        tensors = [*self.masks.values(), *self.ref_feats.values()]
        tensors += [t for t in (self.buffer, self.ref_logits, self.stash) if t is not None]
        return tensors

    def buffer_bytes(self) -> int:
        """Masks, the 15-image buffer, reference features/logits, the importance stash and the
        cache, as held now (the per-task ones are released at the task's end)."""
        return tensor_bytes(self.state_tensors()) + self.features.nbytes()

    def extra_state(self) -> dict[str, Any]:
        return {
            "masks": self.masks, "buffer": self.buffer, "ref_feats": self.ref_feats,
            "ref_logits": self.ref_logits, "stash": self.stash,
            "cache": self.features.state_dict(),
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.masks = dict(state["masks"])
        self.buffer, self.ref_logits = state["buffer"], state["ref_logits"]
        self.ref_feats, self.stash = dict(state["ref_feats"]), state["stash"]
        self.features.load_state_dict(state["cache"])
