"""Shared pieces of prompt-based continual learning (L2P, DualPrompt, CODA-Prompt).

- :class:`QueryModel`: the frozen selection model. Maps images to query features (the final
  CLS token after the last norm, "pre-logits") under ``no_grad``. It may wrap the very ViT the
  prompts are trained on (shared weights) or a separate, smaller one.
- :class:`PromptPool`: ``M`` prompts, each ``n_layers x length x D``, with ``M`` keys in the
  query feature space. Cosine matching, per-sample top-k, batch-wise majority selection and
  the pull constraint live here and serve L2P's pool and DualPrompt's E-prompts.
- :func:`layer_inputs`: turns selected prompts into what the hookable ViT takes: prompt
  tokens inserted after CLS (prompt tuning) or per-layer prefix keys/values (prefix tuning,
  each prompt split into a key half and a value half).
- :class:`CodaComponents`: CODA-Prompt's per-task slices of prompt components with keys and
  attention vectors, their input-conditioned weighted sum, and the Gram-Schmidt
  initialisation that makes every new slice orthogonal to the span of the old ones.

Tie-breaking is deterministic everywhere: among equal similarities or equal counts the lower
prompt id wins (what ``jax.lax.top_k`` does in the original L2P code; ``torch.topk`` leaves
ties unspecified).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgecl.backbones.vit import VisionTransformer

PromptInit = Literal["uniform", "uniform01", "zero"]
Tuning = Literal["prompt", "prefix"]
Prefix = dict[int, tuple[Tensor, Tensor]]


def init_tensor(shape: Sequence[int], init: PromptInit, generator: torch.Generator) -> Tensor:
    """``uniform``: U(-1, 1) (l2p- and dualprompt-pytorch's prompts and keys, l2p-pytorch since
    commit 173a6af); ``uniform01``: U(0, 1) (``nn.init.uniform_``'s default bounds, what
    l2p-pytorch used before that commit); ``zero``."""
    if init == "zero":
        return torch.zeros(*shape)
    low = -1.0 if init == "uniform" else 0.0
    return torch.rand(*shape, generator=generator) * (1.0 - low) + low


# ---- the frozen query / selection model ----------------------------------------------------
class QueryModel(nn.Module):
    """Frozen ViT → query features ``(B, D)``: the CLS token after the final norm.

    Always runs under ``no_grad`` in eval mode; callers attribute its cost to the
    ``selection`` phase. Wrapping the update model's ViT shares its (frozen) weights.
    """

    def __init__(self, vit: VisionTransformer) -> None:
        super().__init__()
        self.vit = vit.requires_grad_(False).eval()

    @property
    def feature_dim(self) -> int:
        return self.vit.embed_dim

    def train(self, mode: bool = True) -> QueryModel:
        return super().train(False)  # frozen: never in training mode

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return self.vit.forward_features(x).cls


# ---- matching and selection ----------------------------------------------------------------
def cosine_similarity(query: Tensor, keys: Tensor) -> Tensor:
    """(B, D) x (M, D) → (B, M) cosine similarities."""
    return F.normalize(query, dim=-1) @ F.normalize(keys, dim=-1).t()


def topk_ids(similarity: Tensor, k: int) -> Tensor:
    """Per-row ids of the ``k`` largest values, largest first; ties → lower id."""
    if not 1 <= k <= similarity.shape[1]:
        raise ValueError(f"top_k={k} must be between 1 and the pool size {similarity.shape[1]}")
    return torch.sort(similarity, dim=1, descending=True, stable=True).indices[:, :k]


def batchwise_ids(ids: Tensor, pool_size: int, k: int) -> Tensor:
    """The ``k`` ids chosen most often over the batch's top-k lists, for every sample.

    Counts are taken over the whole pool (ids never chosen count 0: the "padding" of the
    reference's ``unique`` to the pool size), ordered by count, ties → lower id.
    """
    counts = torch.bincount(ids.flatten(), minlength=pool_size)
    major = torch.sort(counts, descending=True, stable=True).indices[:k]
    return major.unsqueeze(0).expand(ids.shape[0], -1)


def pull_similarity(query: Tensor, keys: Tensor, ids: Tensor) -> Tensor:
    """Σ_b Σ_j cos(q_b, k_{ids[b, j]}) / B: the pull constraint is ``-λ`` times this."""
    q = F.normalize(query, dim=-1)
    k = F.normalize(keys, dim=-1)[ids]  # (B, top_k, D)
    return (k * q.unsqueeze(1)).sum() / query.shape[0]


@dataclass
class Selection:
    ids: Tensor  # (B, top_k) prompt ids used for each sample
    pull: Tensor  # scalar: summed cosine of the used keys to the query, / B


class PromptPool(nn.Module):
    """``M`` prompts of shape ``(n_layers, length, D)`` and ``M`` keys of dimension ``key_dim``."""

    def __init__(
        self,
        pool_size: int,
        length: int,
        embed_dim: int,
        key_dim: int,
        generator: torch.Generator,
        n_layers: int = 1,
        init: PromptInit = "uniform",
        key_init: PromptInit = "uniform",
    ) -> None:
        super().__init__()
        self.pool_size = pool_size
        self.prompts = nn.Parameter(
            init_tensor((pool_size, n_layers, length, embed_dim), init, generator)
        )
        self.keys = nn.Parameter(init_tensor((pool_size, key_dim), key_init, generator))

    def select(
        self, query: Tensor, top_k: int, batchwise: bool, forced: Tensor | None = None
    ) -> Selection:
        """Match ``query`` to the keys (unless ``forced`` ids are given) and pick prompts."""
        if forced is not None:
            ids = forced.to(query.device).expand(query.shape[0], -1)
        else:
            with torch.no_grad():
                ids = topk_ids(cosine_similarity(query, self.keys), top_k)
            if batchwise:
                ids = batchwise_ids(ids, self.pool_size, top_k)
        return Selection(ids, pull_similarity(query, self.keys, ids))

    def gather(self, ids: Tensor) -> Tensor:
        """Selected prompts, ``(n_layers, B, top_k, length, D)``."""
        return self.prompts[ids].permute(2, 0, 1, 3, 4)


class SharedPrompt(nn.Module):
    """One prompt per layer, ``(n_layers, length, D)``, used for every input (DualPrompt's G)."""

    def __init__(
        self, n_layers: int, length: int, embed_dim: int, generator: torch.Generator,
        init: PromptInit = "uniform",
    ) -> None:
        super().__init__()
        self.prompts = nn.Parameter(init_tensor((n_layers, length, embed_dim), init, generator))

    def forward(self, batch: int) -> Tensor:
        """The prompts for a batch, ``(n_layers, B, 1, length, D)``."""
        return self.prompts[:, None, None].expand(-1, batch, -1, -1, -1)


# ---- prompts → ViT inputs ------------------------------------------------------------------
def stored_length(length: int, tuning: Tuning, prefix_mode: str) -> int:
    """Tokens stored per prompt (``per_kv`` prefix: ``length`` keys *and* ``length`` values)."""
    return 2 * length if tuning == "prefix" and prefix_mode == "per_kv" else length


def split_prefix(prompts: Tensor) -> tuple[Tensor, Tensor]:
    """``(B, n, L, D)`` prompts → key and value prefixes ``(B, n·L/2, D)`` each.

    Each prompt's first half becomes keys and its second half values; the ``n`` prompts are
    concatenated along the length.
    """
    b, n, length, d = prompts.shape
    if length % 2:
        raise ValueError(f"prefix tuning splits a prompt in two halves; length {length} is odd")
    half = length // 2
    keys = prompts[:, :, :half].reshape(b, n * half, d)
    values = prompts[:, :, half:].reshape(b, n * half, d)
    return keys, values


def layer_inputs(
    prompts: Tensor, layers: Sequence[int], tuning: Tuning
) -> tuple[Tensor | None, Prefix]:
    """``(n_layers, B, n, L, D)`` → (prompt tokens ``(B, n·L, D)`` | None, prefix dict).

    Prompt tuning inserts tokens once, before block 0 (``layers == [0]``); prefix tuning gives
    layer ``layers[i]`` the key/value halves of ``prompts[i]``.
    """
    if len(layers) != prompts.shape[0]:
        raise ValueError(f"{prompts.shape[0]} prompt layers for layer list {list(layers)}")
    if tuning == "prompt":
        if list(layers) != [0]:
            raise ValueError("prompt tuning inserts tokens before block 0 only: layers=[0]")
        p = prompts[0]
        return p.reshape(p.shape[0], -1, p.shape[-1]), {}
    return None, {layer: split_prefix(prompts[i]) for i, layer in enumerate(layers)}


def reference_batch_mixing(keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
    """dualprompt-pytorch's E-prompt prefix, reproduced: ``(B, T, D)`` keys and values →
    what its ``(layers, 2, B, ...) → (layers, B, 2, ...)`` reshape (no permute) hands each
    sample. Read as rows of the stacked ``(2B, T, D)`` tensor, sample ``b`` gets row ``2b`` as
    keys and row ``2b + 1`` as values: the first half of the batch takes two samples' key
    parts, the second half two samples' value parts."""
    rows = torch.cat([keys, values], dim=0)
    return rows[0::2], rows[1::2]


def merge_prefix(first: Prefix, second: Prefix) -> Prefix:
    """Per-layer concatenation (``first`` then ``second``) of two prefix dicts."""
    merged = dict(first)
    for layer, (k, v) in second.items():
        if layer in merged:
            k0, v0 = merged[layer]
            k, v = torch.cat([k0, k], dim=1), torch.cat([v0, v], dim=1)
        merged[layer] = (k, v)
    return merged


# ---- CODA-Prompt ---------------------------------------------------------------------------
def orthonormal_basis(vectors: Tensor, tol: float = 1e-10) -> Tensor:
    """Orthonormal rows spanning ``vectors``' rows (modified Gram-Schmidt, float64)."""
    basis: list[Tensor] = []
    for v in vectors.double():
        for _ in range(2):  # re-orthogonalise once for numerical orthogonality
            for b in basis:
                v = v - (v @ b) * b
        norm = v.norm()
        if norm > tol:
            basis.append(v / norm)
    dim = vectors.shape[1]
    return torch.stack(basis) if basis else vectors.new_zeros(0, dim, dtype=torch.float64)


def gram_schmidt_new(old: Tensor, n_new: int, generator: torch.Generator) -> Tensor:
    """``n_new`` random unit rows, orthogonal to each other and to the span of ``old``'s rows.

    The reference (CODA-Prompt) projects random vectors on the old rows one by one, which is
    orthogonal to them only while they still are orthogonal to each other; projecting on an
    orthonormal basis of their span holds after training too.
    """
    dim = old.shape[1]
    basis = orthonormal_basis(old)
    if basis.shape[0] + n_new > dim:
        raise ValueError(
            f"cannot make {n_new} new components orthogonal to {basis.shape[0]} old ones in "
            f"{dim} dimensions; use fewer components (pool_size) or a wider model"
        )
    new: list[Tensor] = []
    while len(new) < n_new:
        v = torch.randn(dim, generator=generator, dtype=torch.float64)
        for _ in range(2):
            v = v - basis.t() @ (basis @ v)
        if v.norm() < 1e-6:
            continue  # fell (numerically) into the span: draw again
        v = v / v.norm()
        new.append(v)
        basis = torch.cat([basis, v.unsqueeze(0)])
    return torch.stack(new).float()


class CodaComponents(nn.Module):
    """CODA-Prompt components for ``n_layers`` prefix layers, grown one slice per task.

    Slice ``t`` holds ``per_task`` components per layer: prompts ``(n_layers, per_task, L, D)``,
    keys and attention vectors ``(n_layers, per_task, key_dim)``. The prompt of layer ``l`` for
    query ``q`` is ``Σ_m α_m P_m`` with ``α_m = cos(q ⊙ A_m, K_m)`` over every slice present.
    """

    def __init__(
        self, n_layers: int, per_task: int, length: int, embed_dim: int, key_dim: int
    ) -> None:
        super().__init__()
        self.n_layers, self.per_task, self.length = n_layers, per_task, length
        self.embed_dim, self.key_dim = embed_dim, key_dim
        self.prompts = nn.ParameterList()
        self.keys = nn.ParameterList()
        self.attention = nn.ParameterList()

    def __len__(self) -> int:
        return len(self.prompts)

    def add_slice(
        self, generator: torch.Generator | None, device: torch.device | str = "cpu"
    ) -> None:
        """Append a slice; with a generator its rows are Gram-Schmidt-initialised per layer.

        Without one (resume: the values are about to be loaded) it is zero-filled.
        """
        shapes = (
            (self.prompts, (self.length, self.embed_dim)),
            (self.keys, (self.key_dim,)),
            (self.attention, (self.key_dim,)),
        )
        for plist, row_shape in shapes:
            size = (self.n_layers, self.per_task, *row_shape)
            if generator is None:
                plist.append(nn.Parameter(torch.zeros(size, device=device)))
                continue
            old = self.stacked(plist).cpu()
            rows = [
                gram_schmidt_new(old[layer].flatten(1), self.per_task, generator)
                for layer in range(self.n_layers)
            ]
            plist.append(nn.Parameter(torch.stack(rows).reshape(size).to(device)))

    def train_only_last(self) -> None:
        """Freeze every slice but the newest (the current task's)."""
        for plist in (self.prompts, self.keys, self.attention):
            for i, p in enumerate(plist):
                p.requires_grad_(i == len(plist) - 1)
                if not p.requires_grad:
                    p.grad = None  # a stale gradient from its own task is dead memory

    def stacked(self, plist: nn.ParameterList) -> Tensor:
        """All slices concatenated along the component axis: ``(n_layers, M, ...)``."""
        if len(plist) == 0:
            shape = (self.length, self.embed_dim) if plist is self.prompts else (self.key_dim,)
            return torch.zeros(self.n_layers, 0, *shape)
        return torch.cat(list(plist), dim=1)

    def weights(self, query: Tensor) -> Tensor:
        """α ``(n_layers, B, M)``: cos(q ⊙ A_m, K_m) = Σ_d q_d A_md K̂_md / ‖q ⊙ A_m‖."""
        keys = F.normalize(self.stacked(self.keys), dim=-1)
        attn = self.stacked(self.attention)
        numerator = torch.einsum("bd,lmd->lbm", query, attn * keys)
        norm = torch.einsum("bd,lmd->lbm", query.square(), attn.square()).sqrt()
        return numerator / norm.clamp_min(1e-12)

    def forward(self, query: Tensor) -> Tensor:
        """Weighted prompts ``(n_layers, B, 1, L, D)`` for a batch of queries."""
        alpha = self.weights(query)
        prompts = torch.einsum("lbm,lmtd->lbtd", alpha, self.stacked(self.prompts))
        return prompts.unsqueeze(2)

    def flops(self, batch: int) -> int:
        """Multiply-add FLOPs of :meth:`forward` (2 per MAC), for the cost meter."""
        m = sum(p.shape[1] for p in self.keys)
        per_layer = 2 * batch * m * (2 * self.key_dim + self.length * self.embed_dim)
        return self.n_layers * per_layer

    def ortho_penalty(self) -> Tensor:
        """Σ over layers and (P, K, A) of mean((X Xᵀ − I)²), X the layer's components as rows."""
        total = self.prompts[0].new_zeros(())
        for plist in (self.prompts, self.keys, self.attention):
            for x in self.stacked(plist).flatten(2):
                eye = torch.eye(x.shape[0], device=x.device)
                total = total + (x @ x.t() - eye).square().mean()
        return total
