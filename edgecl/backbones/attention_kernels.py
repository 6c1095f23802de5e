"""The ViT's attention softmax(q kᵀ/√d + bias) v, three ways (``ViTConfig.attention_kernel``).

- ``sdpa``: torch's fused ``scaled_dot_product_attention``; keeps only its output and the
  row log-sum-exp for backward.
- ``explicit``: two batched matmuls and a softmax, keeping the (B, heads, N, N)
  probabilities for backward. torch's CPU softmax accumulates bf16/fp16 inputs in fp32 and
  rounds only its output.
- ``recompute``: the same forward, keeping only q, k, v (alive anyway as views of the qkv
  projection) and recomputing the probabilities in backward: the memory of ``sdpa`` at
  about the speed of ``explicit``.

Measured on this 2-core CPU at ViT-Ti shapes (16 x 3 heads, 197 tokens, head dim 64),
forward + backward in bf16: sdpa 14.8 ms, explicit 4.0 ms (fp32: 10.9 and 10.7 ms);
benchmarks/vit_throughput.py times the whole step. ``auto`` takes ``recompute`` for bf16/fp16
on a CPU and ``sdpa`` otherwise (on a GPU the fused kernel is the fast one).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

KERNELS = ("auto", "sdpa", "explicit", "recompute")


def check_kernel(kernel: str) -> str:
    if kernel not in KERNELS:
        raise ValueError(f"attention kernel must be one of {KERNELS}, got {kernel!r}")
    return kernel


def resolve_kernel(kernel: str, q: Tensor) -> str:
    if check_kernel(kernel) != "auto":
        return kernel
    reduced = q.dtype in (torch.bfloat16, torch.float16)
    return "recompute" if q.device.type == "cpu" and reduced else "sdpa"


def probabilities(q: Tensor, k: Tensor, bias: Tensor | None) -> Tensor:
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    if bias is not None:
        scores = scores + bias
    return scores.softmax(dim=-1)


class RecomputedAttention(torch.autograd.Function):
    """The ``recompute`` kernel: backward rebuilds the probabilities from the saved q, k."""

    @staticmethod
    def forward(  # type: ignore[override]
            ctx, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(q, k, v, bias)
        return probabilities(q, k, bias) @ v

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        q, k, v, bias = ctx.saved_tensors
        p = probabilities(q, k, bias)
        grad_v = p.transpose(-2, -1) @ grad_out
        grad_p = grad_out @ v.transpose(-2, -1)
        grad_scores = torch._softmax_backward_data(grad_p, p, -1, p.dtype)
        scale = q.shape[-1] ** -0.5
        grad_q = (grad_scores @ k) * scale
        grad_k = (grad_scores.transpose(-2, -1) @ q) * scale
        grad_bias = None
        if bias is not None and ctx.needs_input_grad[3]:
            grad_bias = grad_scores.sum_to_size(bias.shape)  # undo the broadcast
        return grad_q, grad_k, grad_v, grad_bias


def attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None,
              kernel: str = "auto") -> Tensor:
    """softmax(q kᵀ/√d + bias) v for (B, heads, N, head_dim) inputs; ``bias`` broadcasts to
    the (B, heads, N, N_keys) scores."""
    chosen = resolve_kernel(kernel, q)
    if chosen == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    # one dtype for every operand, q's, as autocast would give the matmuls
    k, v = k.to(q.dtype), v.to(q.dtype)
    bias = None if bias is None else bias.to(q.dtype)
    if chosen == "explicit":
        return probabilities(q, k, bias) @ v
    with torch.autocast(q.device.type, enabled=False):  # compute in the inputs' dtype
        return RecomputedAttention.apply(q, k, v, bias)
