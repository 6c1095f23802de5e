"""Critical Patch Sampling (CPS-Prompt, Lim, Lee & Kim, CVPR 2026): the prompt-update forward
runs on a sparse subset of the patch tokens.

After the patch embedding and position embeddings, ``keep = int(L · (1 − reduction_ratio))``
of the ``L`` patch tokens are kept, CLS always first and the kept patches in their original
order (the reference's ``token_shuffling=False``):

- ``critical_score``: drawn without replacement from ``softmax(significance / temperature)``,
  where a patch's significance is the CLS attention to it (summed over heads) times its value
  norm, from the last block of the prompt-free query pass (``ViTHooks.significance_layer``);
- ``uniform``: a uniformly random subset.

:func:`resize_significance` maps a significance map from a coarser patch grid (REP's swift
selector at 112 px: 7x7) to the update model's (224 px: 14x14); see its docstring.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Sampling = Literal["critical_score", "uniform"]
SignificanceResize = Literal["nearest", "bilinear"]


def kept_patches(n_patches: int, reduction_ratio: float) -> int:
    if not 0 <= reduction_ratio < 1:
        raise ValueError(f"reduction_ratio must be in [0, 1), got {reduction_ratio}")
    return int(n_patches * (1 - reduction_ratio))


def sample_patches(significance: Tensor | None, n_patches: int, keep: int, sampling: Sampling,
                   temperature: float, generator: torch.Generator | None = None) -> Tensor:
    """(B, keep) indices of kept patch tokens (0-based among the patches), ascending."""
    if sampling == "critical_score":
        if significance is None:
            raise ValueError("critical_score sampling needs the query pass's significance")
        probs = (significance.float() / temperature).softmax(dim=1)
        idx = torch.multinomial(probs.cpu(), keep, replacement=False, generator=generator)
    else:
        batch = significance.shape[0] if significance is not None else 1
        noise = torch.rand(batch, n_patches, generator=generator)
        idx = noise.argsort(dim=1)[:, :keep]
    return idx.sort(dim=1).values


def keep_tokens(tokens: Tensor, patch_idx: Tensor) -> Tensor:
    """``tokens`` (B, 1 + L, D): CLS and the patches at ``patch_idx`` (B, keep), in order."""
    b = tokens.shape[0]
    cls = torch.zeros(b, 1, dtype=torch.long)
    index = torch.cat([cls, patch_idx.cpu() + 1], dim=1).to(tokens.device)
    return torch.gather(tokens, 1, index.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def resize_significance(significance: Tensor, n_patches: int,
                        mode: SignificanceResize = "nearest") -> Tensor:
    """(B, g²) significance on a g x g patch grid → (B, n_patches) on the G x G grid.

    ``nearest``: each fine patch takes the value of the coarse patch that contains it (with a
    16-px selector patch at 112 px covering 2 x 2 patches of 16 px at 224 px, exactly its
    area); ``bilinear``: interpolated between coarse patch centres. Either way the map is then
    scaled by g²/G², so that the significance mass is preserved: the CLS attention of one
    coarse token is shared by the fine tokens it covers, which keeps the sampling softmax's
    temperature on the scale a full-resolution pass would give.
    """
    b, n_coarse = significance.shape
    g, big = math.isqrt(n_coarse), math.isqrt(n_patches)
    if g * g != n_coarse or big * big != n_patches:
        raise ValueError(f"significance of {n_coarse} patches -> {n_patches}: not square grids")
    if g == big:
        return significance
    grid = significance.float().view(b, 1, g, g)
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    fine = F.interpolate(grid, size=(big, big), mode=mode, **kwargs).view(b, n_patches)
    return (fine * (n_coarse / n_patches)).to(significance.dtype)
