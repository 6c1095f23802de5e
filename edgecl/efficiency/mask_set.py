"""Named boolean masks with cached densities: the state TDM and DGM (SparCL) share."""

from __future__ import annotations

from torch import Tensor


class MaskSet:
    """Mixin for a dataclass with ``masks`` (name → bool tensor) and ``_densities`` fields."""

    masks: dict[str, Tensor]
    _densities: dict[str, float] | None

    def densities(self) -> dict[str, float]:
        """Fraction of set entries per mask (cached until the masks change)."""
        if self._densities is None:
            self._densities = {n: float(m.float().mean()) for n, m in self.masks.items()}
        return dict(self._densities)

    def nbytes(self) -> int:
        return sum(m.numel() * m.element_size() for m in self.masks.values())

    def masks_state(self) -> dict[str, Tensor]:
        return {n: m.clone() for n, m in self.masks.items()}

    def load_masks(self, masks: dict[str, Tensor]) -> None:
        self.masks = {n: m.clone() for n, m in masks.items()}
        self._densities = None
