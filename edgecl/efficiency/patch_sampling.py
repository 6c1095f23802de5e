"""Critical Patch Sampling (CPS-Prompt, Lim, Lee & Kim, CVPR 2026): the prompt-update forward
runs on a sparse subset of the patch tokens.

After the patch embedding and position embeddings, ``keep = int(L · (1 − reduction_ratio))``
of the ``L`` patch tokens are kept, CLS always first and the kept patches in their original
order (the reference's ``token_shuffling=False``):

- ``critical_score``: drawn without replacement from ``softmax(significance / temperature)``,
  where a patch's significance is the CLS attention to it (summed over heads) times its value
  norm, from the last block of the prompt-free query pass (``ViTHooks.significance_layer``);
- ``uniform``: a uniformly random subset.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Sampling = Literal["critical_score", "uniform"]


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
