"""Task-aware dynamic masking (TDM, SparCL): sparse weights whose mask is re-drawn during training.

A set of weight tensors (for SparCL: the 3x3 convolutions of a ResNet's residual stages) is
kept sparse by binary masks. At setup the weights are magnitude-pruned to the target sparsity.
Then, on the epochs of a per-task schedule (the epoch counter restarts with every task), each
layer is

1. *pruned* to the schedule's lower-bound sparsity by importance ``|w| + lambda * |g|``, ``g``
   being the last minibatch gradient (masked, so pruned entries score 0);
2. *regrown* to the upper-bound sparsity by switching randomly chosen zero entries back on,
   with their weights initialised to 0.

After every optimizer step ``w <- w * M`` keeps the pruned weights at zero, and gradients are
masked before the step. The default schedule for a target sparsity ``s`` follows the SparCL
reference script (0.75: prune to 0.75 / grow to 0.74 for epochs < 5, 0.76 / 0.75 for epochs
5-44, 0.75 / 0.75 from epoch 45; an update every 5 epochs), generalised as ``s / s - 0.01``,
``s + 0.01 / s``, ``s / s``.

Counts are exact: pruning to sparsity ``s`` keeps the ``n - round(s * n)`` entries of highest
importance (the reference thresholds at a percentile, which differs by ties only).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from edgecl.efficiency.mask_set import MaskSet


def select_sparse_convs(
    model: nn.Module,
    prefixes: Sequence[str] = ("layer",),
    kernel_size: tuple[int, int] = (3, 3),
) -> dict[str, nn.Conv2d]:
    """Conv2d modules whose qualified name starts with one of ``prefixes`` and whose kernel is
    ``kernel_size`` (for the CIFAR ResNet-18: the 16 3x3 convs of layer1-4; the stem, the 1x1
    shortcuts, BatchNorm and the head stay dense)."""
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.Conv2d)
        and tuple(module.kernel_size) == tuple(kernel_size)
        and any(name.startswith(p) for p in prefixes)
    }


def kept_count(numel: int, sparsity: float) -> int:
    """Entries a tensor of ``numel`` keeps at ``sparsity`` (round the pruned count)."""
    return numel - int(round(sparsity * numel))


def importance_scores(weight: Tensor, grad: Tensor | None, lam: float) -> Tensor:
    """TDM importance ``|w| + lam * |g|`` (``|w|`` when there is no gradient or lam = 0)."""
    score = weight.detach().abs()
    if grad is not None and lam:
        score = score + lam * grad.detach().abs()
    return score


def top_entries(scores: Tensor, k: int) -> Tensor:
    """Flat indices of the ``k`` highest scores (non-negative scores).

    When at least ``k`` scores are positive only those are ranked (after masking most scores
    are exactly 0, so this is several times cheaper than ranking the whole tensor); the
    selection is the same as a full top-k up to the order of ties.
    """
    flat = scores.reshape(-1)
    if k <= 0:
        return torch.zeros(0, dtype=torch.long, device=flat.device)
    positive = torch.nonzero(flat > 0).squeeze(1)
    if len(positive) >= k:
        return positive[torch.topk(flat[positive], k, sorted=False).indices]
    return torch.topk(flat, k, sorted=False).indices


def prune_mask(importance: Tensor, sparsity: float) -> Tensor:
    """Boolean mask keeping the ``kept_count`` entries of highest importance."""
    flat = importance.reshape(-1)
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    mask[top_entries(flat, kept_count(flat.numel(), sparsity))] = True
    return mask.view_as(importance)


def sample_without_replacement(pool: int, k: int, generator: torch.Generator) -> Tensor:
    """``k`` distinct positions drawn uniformly from ``range(pool)``.

    For small ``k`` positions are drawn with replacement until ``k`` distinct ones exist and a
    random ``k`` of them is kept (uniform by exchangeability), avoiding a permutation of the
    whole pool.
    """
    k = max(0, min(k, pool))
    if 4 * k >= pool:
        return torch.randperm(pool, generator=generator)[:k]
    distinct = torch.zeros(0, dtype=torch.long)
    while len(distinct) < k:
        draw = torch.randint(pool, (2 * (k - len(distinct)) + 16,), generator=generator)
        distinct = torch.unique(torch.cat([distinct, draw]))
    return distinct[torch.randperm(len(distinct), generator=generator)[:k]]


def regrow_mask(mask: Tensor, sparsity: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Switch on random zero entries until the mask's sparsity is ``sparsity``.

    Returns ``(new_mask, grown)``; ``grown`` marks the entries switched on (their weights are to
    be set to 0). Nothing grows when the mask is already at or below that sparsity.
    """
    flat = mask.reshape(-1)
    zeros = torch.nonzero(~flat).squeeze(1)
    n_add = len(zeros) - int(round(sparsity * flat.numel()))
    n_add = max(0, min(n_add, len(zeros)))
    grown = torch.zeros_like(flat)
    if n_add:
        pick = sample_without_replacement(len(zeros), n_add, generator).to(zeros.device)
        grown[zeros[pick]] = True
    return (flat | grown).view_as(mask), grown.view_as(mask)


@dataclass
class BoundSchedule:
    """When TDM updates masks and the (lower, upper) sparsity bounds in force, per task epoch.

    ``lower[i]``/``upper[i]`` hold from ``change_epochs[i-1]`` (0 for i = 0) until the next
    change epoch; updates happen on epochs divisible by ``update_every`` (epoch 0 included).
    """

    update_every: int = 5
    change_epochs: tuple[int, ...] = (5, 45)
    lower: tuple[float, ...] = (0.75, 0.76, 0.75)
    upper: tuple[float, ...] = (0.74, 0.75, 0.75)

    def __post_init__(self) -> None:
        if self.update_every < 1:
            raise ValueError(f"update_every must be at least 1, got {self.update_every}")
        if not len(self.lower) == len(self.upper) == len(self.change_epochs) + 1:
            raise ValueError("need one (lower, upper) pair more than change epochs")
        if any(lo < up for lo, up in zip(self.lower, self.upper, strict=True)):
            raise ValueError("each lower-bound (prune-to) sparsity must be >= its upper bound")

    @classmethod
    def for_sparsity(
        cls,
        sparsity: float,
        update_every: int = 5,
        change_epochs: Sequence[int] = (5, 45),
        step: float = 0.01,
    ) -> BoundSchedule:
        """The reference pattern around a target: (s, s - step), (s + step, s), (s, s)."""
        s = float(sparsity)
        lower = (s, min(s + step, 1.0), s)
        upper = (max(s - step, 0.0), s, s)
        return cls(update_every, tuple(int(e) for e in change_epochs), lower, upper)

    def scaled(self, factor: float) -> BoundSchedule:
        """The same schedule with every epoch number multiplied by ``factor`` (rounded, >= 1)."""
        return BoundSchedule(
            max(1, round(self.update_every * factor)),
            tuple(max(1, round(e * factor)) for e in self.change_epochs),
            self.lower,
            self.upper,
        )

    def bounds(self, epoch: int) -> tuple[float, float]:
        index = sum(1 for e in self.change_epochs if epoch >= e)
        return self.lower[index], self.upper[index]

    def is_update_epoch(self, epoch: int) -> bool:
        return epoch % self.update_every == 0


@dataclass
class TaskAwareDynamicMask(MaskSet):
    """Masks for a dict of weight tensors, updated by :class:`BoundSchedule`."""

    params: dict[str, nn.Parameter]
    schedule: BoundSchedule
    generator: torch.Generator
    importance_lambda: float = 0.5
    masks: dict[str, Tensor] = field(default_factory=dict)
    updates: int = 0
    _densities: dict[str, float] | None = field(default=None, repr=False)

    def initial_prune(self, sparsity: float) -> None:
        """Magnitude-prune every layer to ``sparsity`` (SparCL's one-shot prune at the start)."""
        for name, w in self.params.items():
            self.masks[name] = prune_mask(w.detach().abs(), sparsity)
        self._densities = None
        self.apply_to_weights()

    def update(self, epoch: int, grads: dict[str, Tensor | None] | None = None) -> bool:
        """Prune to the lower bound by importance, regrow to the upper bound; True if it ran."""
        if not self.schedule.is_update_epoch(epoch):
            return False
        lower, upper = self.schedule.bounds(epoch)
        grads = grads or {}
        with torch.no_grad():
            for name, w in self.params.items():
                score = importance_scores(w, grads.get(name), self.importance_lambda)
                kept = prune_mask(score, lower)
                mask, grown = regrow_mask(kept, upper, self.generator)
                w.mul_(kept)
                w.masked_fill_(grown, 0.0)  # already 0 once masked; explicit zero init
                self.masks[name] = mask
        self._densities = None
        self.updates += 1
        return True

    def apply_to_weights(self) -> None:
        with torch.no_grad():
            for name, w in self.params.items():
                w.mul_(self.masks[name])

    def apply_to_grads(self) -> None:
        for name, w in self.params.items():
            if w.grad is not None:
                w.grad.mul_(self.masks[name])

    def overall_sparsity(self) -> float:
        total = sum(m.numel() for m in self.masks.values())
        live = sum(int(m.sum()) for m in self.masks.values())
        return 1.0 - live / total if total else 0.0

    def state_dict(self) -> dict[str, Any]:
        return {"masks": self.masks_state(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.load_masks(state["masks"])
        self.updates = state["updates"]
