"""Activation recomputation: keep a function's input for backward and run it again there.

``recomputed(fn, x, params)`` returns ``fn(x)``, but autograd keeps only ``x``; backward runs
``fn`` again on it (same autocast state) and differentiates that. The gradients are the
exact ones, for the cost of a second forward of ``fn``. The ViT uses it for
``layer norm -> fc1 -> GELU`` (``VisionTransformer.set_recompute("mlp")``): that keeps the
block's residual (one ``D``-wide row per token) instead of the ``4D``-wide GELU input, about
a third of what a prompt-tuning step saves.

Unlike ``torch.utils.checkpoint``, the cost meter sees the true work: ``fn``'s modules fire
their forward hooks in both passes, so the forward FLOPs of the recomputation are booked to
the phase backward runs in, and the backward FLOPs are booked once, by the recomputation
whose output joins a graph (edgecl/metrics/cost.py). The tensors the recomputation saves
live only while one block's backward runs; saved-tensor hooks (the cost meter's per-step
accounting) see them bypassed, since counting them for every block would overstate a peak
that holds one block's worth at a time. It works with ``backward()`` and
``torch.autograd.grad`` alike: ``params`` are explicit inputs and get their gradients
returned.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn


def _autocast_state(device_type: str) -> tuple[bool, torch.dtype]:
    return torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)


def _same(t: Tensor) -> Tensor:
    return t


class _Recompute(torch.autograd.Function):
    @staticmethod
    def forward(ctx, fn: Callable[..., Any], n_inputs: int,  # type: ignore[override]
                *tensors: Tensor | None) -> Any:
        inputs = tensors[:n_inputs]
        ctx.fn, ctx.params = fn, tensors[n_inputs:]
        ctx.autocast = _autocast_state(inputs[0].device.type)  # type: ignore[union-attr]
        ctx.save_for_backward(*inputs)
        out = fn(*inputs)
        if isinstance(out, tuple):  # (output, a by-product that takes no gradient)
            ctx.mark_non_differentiable(out[1])
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor, *_: Tensor):  # type: ignore[override]
        inputs = [None if t is None else t.detach() for t in ctx.saved_tensors]
        needs = ctx.needs_input_grad[2:]
        for i, t in enumerate(inputs):
            if t is not None and needs[i]:
                t.requires_grad_()
        wrt = [t for t, need in zip(inputs + list(ctx.params), needs, strict=True) if need]
        enabled, dtype = ctx.autocast
        device_type = next(t for t in inputs if t is not None).device.type
        with torch.enable_grad(), \
                torch.autocast(device_type, dtype=dtype, enabled=enabled), \
                torch.autograd.graph.saved_tensors_hooks(_same, _same):
            out = ctx.fn(*inputs)
        if isinstance(out, tuple):
            out = out[0]
        grads = iter(torch.autograd.grad(out, wrt, grad_out, allow_unused=True))
        return None, None, *(next(grads) if need else None for need in needs)


def recomputed(fn: Callable[..., Any], inputs: Sequence[Tensor | None],
               params: Sequence[nn.Parameter]) -> Any:
    """``fn(*inputs)`` with only ``inputs`` kept for backward; ``params``: every parameter
    ``fn`` uses (those that need no gradient are skipped in backward). ``fn`` must read its
    tensors from its arguments, not from a closure, so that backward can differentiate them.
    ``fn`` may return ``(output, by_product)``: the by-product (token-merge keys) is returned
    too and takes no gradient."""
    return _Recompute.apply(fn, len(inputs), *inputs, *params)
