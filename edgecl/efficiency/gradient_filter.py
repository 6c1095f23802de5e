"""Gradient filter: a conv whose backward runs on patch-averaged maps (Yang et al., 2023).

Forward is the exact convolution. For backward only a sum-pooled copy of the input is kept
(``patch * stride`` windows: 1/patch^2 of the input's size at stride 1), and the output
gradient is average-pooled over ``patch`` windows; then, per patch,

    grad_w[o, i, :, :] = sum_{n, patch} avg(grad_y)[n, o] * sum(x)[n, i]   (every tap alike)
    grad_x[n, i, patch] = sum_o (sum_taps w[o, i]) * avg(grad_y)[n, o]     (spread over it)

which is exact when ``x`` and ``grad_y`` are constant within every patch. CsKO's reference
code installs it (patch 2) on the 1x1 center branches of the adapted block. Only
``groups == 1`` and dilation 1 are supported here.
"""

from __future__ import annotations

from math import ceil
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _FilteredConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None,
                stride: tuple[int, int], padding: tuple[int, int], patch: int) -> Tensor:
        y = F.conv2d(x, weight, bias, stride, padding)
        (h, w), (x_h, x_w) = y.shape[-2:], x.shape[-2:]
        p_h, p_w = ceil(h / patch), ceil(w / patch)
        win = (patch * stride[0], patch * stride[1])
        pad = (ceil((p_h * win[0] - x_h) / 2), ceil((p_w * win[1] - x_w) / 2))
        x_sum = F.avg_pool2d(x, win, win, pad, divisor_override=1)
        ctx.save_for_backward(x_sum, weight.sum(dim=(-1, -2)))
        ctx.geometry = (stride, pad, win, (x_h, x_w), patch, weight.shape[-2:], bias is not None)
        return y

    @staticmethod
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor | None, ...]:
        x_sum, weight_sum = ctx.saved_tensors
        stride, pad, win, (x_h, x_w), patch, (k_h, k_w), has_bias = ctx.geometry
        n, c_in, p_h, p_w = x_sum.shape
        c_out = grad_y.shape[1]
        gy_pad = (ceil((p_h * patch - grad_y.shape[-2]) / 2),
                  ceil((p_w * patch - grad_y.shape[-1]) / 2))
        gy = F.avg_pool2d(grad_y, patch, patch, gy_pad, count_include_pad=False)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            gx = torch.einsum("oi,nopq->nipq", weight_sum, gy)
            gx = gx.repeat_interleave(win[0], dim=2).repeat_interleave(win[1], dim=3)
            grad_x = gx[..., pad[0]:pad[0] + x_h, pad[1]:pad[1] + x_w].contiguous()
        if ctx.needs_input_grad[1]:
            g = torch.einsum("nopq,nipq->oi", gy, x_sum)
            grad_w = g.reshape(c_out, c_in, 1, 1).expand(c_out, c_in, k_h, k_w).clone()
        if has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_y.sum(dim=(0, 2, 3))
        return grad_x, grad_w, grad_b, None, None, None


class FilteredConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` whose backward is the patch-``patch`` gradient filter."""

    def __init__(self, *args: Any, patch: int = 2, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if patch < 1:
            raise ValueError(f"gradient filter patch must be >= 1, got {patch}")
        if self.groups != 1 or self.dilation != (1, 1) or isinstance(self.padding, str):
            raise ValueError("the gradient filter supports groups=1, dilation=1, int padding")
        self.patch = patch

    def forward(self, x: Tensor) -> Tensor:
        if not torch.is_grad_enabled():
            return super().forward(x)
        return _FilteredConv2d.apply(
            x, self.weight, self.bias, self.stride, self.padding, self.patch  # type: ignore[arg-type]
        )


def with_gradient_filter(conv: nn.Conv2d, patch: int = 2) -> FilteredConv2d:
    """A :class:`FilteredConv2d` sharing ``conv``'s weight and bias tensors."""
    out = FilteredConv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
        padding=conv.padding, bias=conv.bias is not None, patch=patch,
    ).to(device=conv.weight.device, dtype=conv.weight.dtype)
    out.weight, out.bias = conv.weight, conv.bias
    return out
