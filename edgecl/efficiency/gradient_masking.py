"""Dynamic gradient masking (DGM, SparCL): update only the largest gradient entries.

On a *refresh* batch (batch ``k`` of an epoch with ``k % refresh_every == 0``) each sparse
layer's gradient is first multiplied by its weight mask ``M``; then only the top entries by
magnitude are kept and that selection is stored as the gradient mask ``G``. On every other
batch the gradient is multiplied by ``G`` alone. As in the SparCL reference
(``--gradient_sparse 0.80``, ``--sample_frequency 30``) the kept fraction is a fraction of the
*whole layer* (``relative_to="layer"``): keeping 20 % of a layer whose weights are 75 % sparse
drops another 5 % of its entries' updates, and at 90 % or 95 % weight sparsity the selection
keeps every live gradient entry. ``relative_to="live"`` instead keeps that fraction of the
entries ``M`` leaves alive (a stronger, non-reference variant). Entries whose gradient is
exactly 0 are never selected (the reference keeps ``grad != 0`` after thresholding).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from edgecl.efficiency.mask_set import MaskSet

RelativeTo = Literal["layer", "live"]


def topk_gradient_mask(
    grad: Tensor,
    keep_fraction: float,
    within: Tensor | None = None,
    relative_to: RelativeTo = "layer",
) -> Tensor:
    """Boolean mask of the largest-magnitude gradient entries.

    ``k = round(keep_fraction * n)`` with ``n`` the layer size (``"layer"``) or the number of
    entries of ``within`` (``"live"``); only entries inside ``within`` (if given) and with a
    non-zero gradient are selected, so the mask may hold fewer than ``k`` entries.
    """
    magnitude = grad.detach().abs().reshape(-1)
    allowed = magnitude != 0
    if within is not None:
        allowed &= within.reshape(-1)
    live = relative_to == "live" and within is not None
    base = int(within.sum()) if live else magnitude.numel()
    candidates = torch.nonzero(allowed).squeeze(1)
    k = min(int(round(keep_fraction * base)), len(candidates))
    mask = torch.zeros_like(allowed)
    if k > 0:
        mask[candidates[torch.topk(magnitude[candidates], k, sorted=False).indices]] = True
    return mask.view_as(grad)


@dataclass
class DynamicGradientMask(MaskSet):
    """Gradient masks for a dict of weight tensors, refreshed every ``refresh_every`` batches."""

    params: dict[str, nn.Parameter]
    gradient_sparsity: float = 0.80  # fraction of entries whose update is dropped
    refresh_every: int = 30
    relative_to: RelativeTo = "layer"
    masks: dict[str, Tensor] = field(default_factory=dict)
    refreshes: int = 0
    _densities: dict[str, float] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.gradient_sparsity < 1.0:
            raise ValueError(f"gradient_sparsity must be in [0, 1), got {self.gradient_sparsity}")
        if self.refresh_every < 1:
            raise ValueError(f"refresh_every must be at least 1, got {self.refresh_every}")

    def is_refresh(self, batch_in_epoch: int) -> bool:
        return batch_in_epoch % self.refresh_every == 0 or len(self.masks) < len(self.params)

    def apply(self, batch_in_epoch: int, weight_masks: dict[str, Tensor] | None = None) -> bool:
        """Mask the gradients in place (between backward and step); True on a refresh batch."""
        refresh = self.is_refresh(batch_in_epoch)
        weight_masks = weight_masks or {}
        for name, w in self.params.items():
            if w.grad is None:
                continue
            if refresh:
                self.masks[name] = self._refreshed(w.grad, weight_masks.get(name))
            w.grad.mul_(self.masks[name])
        if refresh:
            self.refreshes += 1
            self._densities = None
        return refresh

    def _refreshed(self, grad: Tensor, weight_mask: Tensor | None) -> Tensor:
        if weight_mask is not None:
            grad.mul_(weight_mask)
        return topk_gradient_mask(grad, 1.0 - self.gradient_sparsity, weight_mask, self.relative_to)

    def state_dict(self) -> dict[str, Any]:
        return {"masks": self.masks_state(), "refreshes": self.refreshes}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.load_masks(state["masks"])
        self.refreshes = state["refreshes"]
