"""Token merging: ToMe's bipartite soft matching with protected tokens, and REP's AToM schedule.

Bipartite soft matching (Bolya et al., ICLR 2023), as used by REP's adaptive token merging:

1. the first ``n_protected`` tokens (CLS, prompt tokens) are never merged and stay first;
2. the remaining *eligible* tokens are split alternately into set A (even positions among
   them) and set B (odd positions);
3. each A token is scored by the cosine similarity of its attention key to its most similar
   B token;
4. the ``r`` best-scoring A tokens are merged into their B match by a size-weighted average
   (``Σ size·x / Σ size``); the sizes add up. Every other token passes unchanged.

Token sizes feed the ViT's proportional attention (``+ log size`` on every key's logit),
which :mod:`edgecl.backbones.vit` applies as soon as a merge callback is installed.

Unlike ToMe's reference (which emits ``[unmerged A, B]``), the kept tokens stay in their
original relative order, so the next layer's alternating A/B split still alternates over
neighbouring positions. The matching runs under ``no_grad``; the merge itself (a scatter-add)
is differentiable, so gradients reach every token that went into a merged one.

AToM (REP, Jeon et al.) merges ``n_l = min(floor(δ·(l−1)), r_max)`` pairs in layer
``l = 1..L`` with ``δ = r_max/(L−1)``: none in the first layer, rising linearly to ``r_max``
in the last, since shallow layers carry the more local, task-specific information.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def atom_schedule(depth: int, r_max: int) -> list[int]:
    """Merges per layer, ``[n_1, ..., n_L]``: ``min(floor(r_max·(l−1)/(L−1)), r_max)``.

    Integer arithmetic, so ``floor(δ·(l−1))`` is exact at the last layer (``δ·(L−1) = r_max``).
    """
    if depth < 1 or r_max < 0:
        raise ValueError(f"need depth >= 1 and r_max >= 0, got depth={depth}, r_max={r_max}")
    if depth == 1:
        return [0]
    return [min(r_max * (l - 1) // (depth - 1), r_max) for l in range(1, depth + 1)]


def removed_before(merges: Sequence[int]) -> list[int]:
    """Tokens removed before each layer: ``[0, n_1, n_1 + n_2, ...]`` (length ``len(merges)``)."""
    out, total = [], 0
    for n in merges:
        out.append(total)
        total += n
    return out


@dataclass
class MergePlan:
    """Where each eligible token goes: output slot ``dest`` (B, N_e) among ``n_out`` slots."""

    dest: Tensor  # (B, N_e) int64 slot of every eligible token after merging
    n_out: int  # eligible tokens left (N_e - r)
    src: Tensor  # (B, r) A-set indices (within A) of the merged tokens
    dst: Tensor  # (B, r) B-set indices (within B) they merge into


def matching_flops(batch: int, n_eligible: int, dim: int) -> int:
    """FLOPs of the similarity matmul ``A·Bᵀ`` (2 per multiply-add), for the cost meter."""
    n_a, n_b = (n_eligible + 1) // 2, n_eligible // 2
    return 2 * batch * n_a * n_b * dim


@torch.no_grad()
def bipartite_soft_matching(keys: Tensor, r: int) -> MergePlan | None:
    """Plan ``r`` merges among eligible tokens with keys ``(B, N_e, d)``; None if nothing merges.

    ``r`` is capped at ``N_e // 2`` (at most every A token merges). Ties in the score go to the
    lower A index (stable sort); ties in the best B match go to the lower B index.
    """
    b, n_e, _ = keys.shape
    r = min(r, n_e // 2)
    if r <= 0:
        return None
    k = F.normalize(keys.float(), dim=-1)
    a, bset = k[:, ::2], k[:, 1::2]
    scores = a @ bset.transpose(1, 2)  # (B, N_a, N_b)
    best, match = scores.max(dim=-1)
    order = torch.sort(best, dim=-1, descending=True, stable=True).indices
    src = order[:, :r]
    merged_a = torch.zeros_like(best, dtype=torch.bool).scatter_(1, src, True)
    keep = torch.ones(b, n_e, dtype=torch.bool, device=keys.device)
    keep[:, ::2] = ~merged_a
    slot = keep.long().cumsum(dim=1) - 1  # output slot of every kept token, in order
    slot_b = slot[:, 1::2]
    dest = slot.clone()
    dest[:, ::2] = torch.where(merged_a, slot_b.gather(1, match), slot[:, ::2])
    return MergePlan(dest, n_e - r, src, match.gather(1, src))


def merge_tokens(x: Tensor, sizes: Tensor, plan: MergePlan) -> tuple[Tensor, Tensor]:
    """Size-weighted merge of eligible tokens ``x`` (B, N_e, D) with ``sizes`` (B, N_e)."""
    b, _, d = x.shape
    new_sizes = sizes.new_zeros(b, plan.n_out).scatter_add(1, plan.dest, sizes)
    weighted = x * sizes.unsqueeze(-1).to(x.dtype)
    summed = x.new_zeros(b, plan.n_out, d).scatter_add(
        1, plan.dest.unsqueeze(-1).expand(-1, -1, d), weighted
    )
    return summed / new_sizes.unsqueeze(-1).to(x.dtype), new_sizes


def merge_protected(
    x: Tensor, keys: Tensor, sizes: Tensor, n_protected: int, r: int
) -> tuple[Tensor, Tensor, MergePlan | None]:
    """Merge ``r`` pairs among tokens ``[n_protected:]``; the protected ones pass untouched."""
    plan = bipartite_soft_matching(keys[:, n_protected:], r)
    if plan is None:
        return x, sizes, None
    merged, merged_sizes = merge_tokens(x[:, n_protected:], sizes[:, n_protected:], plan)
    x = torch.cat([x[:, :n_protected], merged], dim=1)
    sizes = torch.cat([sizes[:, :n_protected], merged_sizes], dim=1)
    return x, sizes, plan


class TokenMerger:
    """A :data:`~edgecl.backbones.vit.MergeFn` merging ``merges[layer]`` pairs in each layer.

    Pass it as ``ViTHooks.merge``. ``on_flops`` receives the FLOPs of each similarity matmul
    (work outside the modules the cost meter sees). ``removed`` records the tokens actually
    removed per layer in the last forward (keyed by layer; reset with :meth:`reset`).
    """

    def __init__(
        self, merges: Sequence[int], on_flops: Callable[[int], None] | None = None
    ) -> None:
        self.merges = list(merges)
        self.on_flops = on_flops
        self.removed: dict[int, int] = {}

    @classmethod
    def atom(
        cls, depth: int, r_max: int, on_flops: Callable[[int], None] | None = None
    ) -> TokenMerger:
        return cls(atom_schedule(depth, r_max), on_flops)

    def reset(self) -> None:
        self.removed = {}

    def __call__(
        self, layer: int, x: Tensor, keys: Tensor, sizes: Tensor, n_protected: int
    ) -> tuple[Tensor, Tensor]:
        r = self.merges[layer] if layer < len(self.merges) else 0
        if r <= 0:
            return x, sizes
        n_eligible = x.shape[1] - n_protected
        if self.on_flops is not None and n_eligible >= 2:
            self.on_flops(matching_flops(x.shape[0], n_eligible, keys.shape[-1]))
        x, sizes, plan = merge_protected(x, keys, sizes, n_protected, r)
        self.removed[layer] = 0 if plan is None else n_eligible - plan.n_out
        return x, sizes
