"""Training FLOPs of sparse training, counted RigL-style, beside the dense FLOPs executed.

The :class:`~edgecl.metrics.cost.CostMeter` counts what dense kernels execute: a masked weight
still costs a multiply. Sparse-training papers (RigL, Evci et al. 2020; SparCL) count what a
sparse kernel would need instead. Per sparse layer and training step, with ``d_w`` the weight
mask density and ``d_g`` the density of the gradient actually kept:

    forward      = F * d_w        (F: the dense layer's forward FLOPs)
    input grad   = F * d_w        (only when the layer's input needs a gradient)
    weight grad  = F * d_g        (d_g = d_w without gradient masking; DGM's mask otherwise)

and the optimizer updates ``numel * d_g`` entries. Dense layers (stem, shortcuts, head, ...)
keep their executed FLOPs. Removed training data needs no special rule: it shows as fewer
steps, hence fewer FLOPs, in both counts.

:class:`SparseFlopCounter` hooks the sparse layers, records each layer's dense FLOPs during a
step and converts them at the end of the step with that step's densities; ``summary`` then
replaces the sparse layers' share of the meter's dense totals by the sparse count.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any

from torch import Tensor, nn
from torch.utils.flop_counter import conv_flop_count


@dataclass
class LayerFlops:
    forward: int = 0
    input_grad: int = 0
    weight_grad: int = 0

    def add(self, other: LayerFlops) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    @property
    def backward(self) -> int:
        return self.input_grad + self.weight_grad


def conv2d_layer_flops(x: Tensor, weight: Tensor, out: Tensor) -> LayerFlops:
    """Dense FLOPs of one Conv2d call split into forward / input-grad / weight-grad.

    Same formulas as the cost meter (torch's ``conv_flop_count``); the backward parts count
    only when the output joins the autograd graph and the input / weight needs a gradient.
    """
    xs, ws, os_ = list(x.shape), list(weight.shape), list(out.shape)
    if len(xs) == 3:
        xs, os_ = [1, *xs], [1, *os_]
    fwd = conv_flop_count(xs, ws, os_, transposed=False)
    flops = LayerFlops(forward=fwd)
    if out.requires_grad:
        if x.requires_grad:
            flops.input_grad = conv_flop_count(os_, ws, xs, transposed=True)
        if weight.requires_grad:
            flops.weight_grad = conv_flop_count(
                [xs[1], xs[0], *xs[2:]], [os_[1], os_[0], *os_[2:]], ws, transposed=False
            )
    return flops


def sparse_layer_flops(dense: LayerFlops, weight_density: float, grad_density: float) -> float:
    """RigL-style FLOPs of a sparse layer step from its dense FLOPs and densities."""
    return (dense.forward + dense.input_grad) * weight_density + dense.weight_grad * grad_density


@dataclass
class SparseTotals:
    dense_forward: float = 0.0
    dense_backward: float = 0.0
    dense_optimizer: float = 0.0
    sparse_forward: float = 0.0
    sparse_backward: float = 0.0
    sparse_optimizer: float = 0.0
    steps: int = 0


class SparseFlopCounter:
    """Per-step dense FLOPs of named sparse layers, converted to the sparse (RigL) count."""

    def __init__(self, layers: dict[str, nn.Module]) -> None:
        self.layers = layers
        self.totals = SparseTotals()
        self._pending: dict[str, LayerFlops] = {}
        self._recording = False
        self._handles = [m.register_forward_hook(self._hook(name)) for name, m in layers.items()]

    def _hook(self, name: str):
        def record(module: nn.Module, args: tuple, out: Tensor) -> None:
            if self._recording:
                flops = conv2d_layer_flops(args[0], module.weight, out)
                self._pending.setdefault(name, LayerFlops()).add(flops)

        return record

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        """Count the sparse layers' calls made inside (the training step's forward passes)."""
        self._recording = True
        try:
            yield
        finally:
            self._recording = False

    def end_step(
        self,
        weight_density: dict[str, float],
        grad_density: dict[str, float],
        optimizer_flops_per_element: int,
        updated: dict[str, bool],
    ) -> None:
        """Book the step: pending dense FLOPs at this step's densities, and optimizer work."""
        t = self.totals
        for name, dense in self._pending.items():
            dw = weight_density.get(name, 1.0)
            dg = grad_density.get(name, dw)
            t.dense_forward += dense.forward
            t.dense_backward += dense.backward
            t.sparse_forward += dense.forward * dw
            t.sparse_backward += dense.input_grad * dw + dense.weight_grad * dg
        for name, module in self.layers.items():
            if updated.get(name, False):
                numel = module.weight.numel() * optimizer_flops_per_element
                t.dense_optimizer += numel
                t.sparse_optimizer += numel * grad_density.get(name, weight_density.get(name, 1.0))
        t.steps += 1
        self._pending = {}

    def summary(self, dense_train: dict[str, int]) -> dict[str, Any]:
        """Sparse-accounted training FLOPs from the meter's dense ``train_flops()``: the
        sparse layers' share is re-counted, every other part kept as executed."""
        t = self.totals
        forward = dense_train["forward"] - t.dense_forward + t.sparse_forward
        backward = dense_train["backward"] - t.dense_backward + t.sparse_backward
        optimizer = dense_train["optimizer"] - t.dense_optimizer + t.sparse_optimizer
        rest = dense_train["total"] - dense_train["forward"] - dense_train["backward"] - (
            dense_train["optimizer"])  # selection, prefix, other: no sparse layers there
        total = forward + backward + optimizer + rest
        dense_total = dense_train["total"]
        return {
            "accounting": "rigl",
            "train": {
                "forward": forward,
                "backward": backward,
                "optimizer": optimizer,
                "total": total,
            },
            "dense_executed": dict(dense_train),
            "ratio_to_dense_executed": total / dense_total if dense_total else None,
            "sparse_layers": {
                "names": list(self.layers),
                "dense_executed": t.dense_forward + t.dense_backward + t.dense_optimizer,
                "sparse": t.sparse_forward + t.sparse_backward + t.sparse_optimizer,
            },
            "steps": t.steps,
        }

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def state_dict(self) -> dict[str, Any]:
        return dict(vars(self.totals))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.totals = SparseTotals(**state)
