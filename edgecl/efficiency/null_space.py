"""Sparse orthogonal gradient projection (Adam-NSCL style, as CsKO's reference code).

Per adapted layer, the uncentered covariance of its inputs over old tasks is accumulated the
reference's way: each batch's input map is first averaged over the batch, then every spatial
position is one row, ``cov += X^T X`` (C x C over input channels). At a new task the
covariance is restricted to the DCES-selected input channels, its eigenvectors with
eigenvalue ``<= ratio * smallest eigenvalue`` span the approximate null space (reference
``thres = 5``), and the projector is ``P = B B^T / ||B B^T||_F`` (the reference's
normalization; ``normalize=False`` gives the plain orthogonal projector ``B B^T``).

:class:`ProjectedAdam` is Adam in the reference's form (L2 weight decay added to the
gradient, ``step = lr * sqrt(1 - b2^t) / (1 - b1^t)``, ``update = -step * m / (sqrt(v) +
eps)``) whose update of a 1x1 weight ``(out, in_selected)`` is right-multiplied by the
layer's projector before it is applied; parameters without a projector get plain updates.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn


def input_covariance(x: Tensor) -> Tensor:
    """``X^T X`` of one batch ``(B, C, H, W)``: batch-averaged map, positions as rows."""
    rows = x.detach().mean(dim=0).flatten(1).transpose(0, 1)  # (H*W, C)
    return rows.transpose(0, 1) @ rows


def null_space_projector(cov: Tensor, ratio: float = 5.0, normalize: bool = True) -> Tensor:
    """Projector onto the eigenvectors of ``cov`` with eigenvalue <= ratio * the smallest."""
    if cov.ndim != 2 or cov.shape[0] != cov.shape[1]:
        raise ValueError(f"covariance must be square, got shape {tuple(cov.shape)}")
    # SVD as the reference: singular values are >= 0 (eigh can return tiny negative
    # eigenvalues of a rank-deficient covariance, which would break the threshold)
    vectors, values, _ = torch.linalg.svd(cov.double())  # descending
    basis = vectors[:, values <= values[-1] * ratio]
    proj = basis @ basis.T
    if normalize:
        proj = proj / torch.linalg.norm(proj)
    return proj.to(cov.dtype)


class ProjectedAdam(torch.optim.Optimizer):
    """Adam (reference form) with a per-parameter right projector of the update."""

    def __init__(self, params: Iterable[nn.Parameter] | Iterable[dict[str, Any]],
                 lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps,
                                  "weight_decay": weight_decay})
        self.projectors: dict[int, Tensor] = {}  # id(param) -> (in, in) projector

    def set_projector(self, param: nn.Parameter, projector: Tensor | None) -> None:
        if projector is None:
            self.projectors.pop(id(param), None)
            return
        if param.ndim != 4 or param.shape[-2:] != (1, 1) or param.shape[1] != projector.shape[0]:
            raise ValueError(
                f"a projector {tuple(projector.shape)} needs a (out, in, 1, 1) weight with "
                f"in = {projector.shape[0]}; got {tuple(param.shape)}"
            )
        self.projectors[id(param)] = projector.to(param.device, param.dtype)

    def projection_flops(self) -> int:
        """Multiply-adds x 2 of one step's projections."""
        return sum(2 * p.shape[0] * p.shape[1] ** 2 for g in self.param_groups
                   for p in g["params"] if id(p) in self.projectors and p.grad is not None)

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if group["weight_decay"]:
                    grad = grad + group["weight_decay"] * p
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros(())
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = float(state["step"])
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                size = group["lr"] * math.sqrt(1 - beta2**t) / (1 - beta1**t)
                update = -size * m / (v.sqrt() + group["eps"])
                proj = self.projectors.get(id(p))
                if proj is not None:
                    update = (update.flatten(1) @ proj).view_as(p)
                p.add_(update)
