"""BatchNorm folding: ``bn(conv(x)) == conv'(x)`` with the BN's statistics in the weights.

CsKO's "structure reorganization" (as its reference code does before the incremental
sessions): for a conv ``W, b`` followed by an inference-mode BatchNorm ``gamma, beta, mu,
var, eps``, ``W' = W * gamma / sqrt(var + eps)`` (per output channel) and
``b' = beta + (b - mu) * gamma / sqrt(var + eps)``. The reference hard-codes eps = 1e-5,
the BatchNorm default; here each BN's own ``eps`` is used (the same for the shipped
checkpoints). The result is exact for BN in eval mode; the BN is replaced by an identity.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new conv (with bias) equal to ``bn(conv(x))`` with ``bn`` in eval mode."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics")
    if conv.out_channels != bn.num_features:
        raise ValueError(
            f"conv has {conv.out_channels} output channels, BatchNorm {bn.num_features}"
        )
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    shift = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_mean)
    folded = nn.Conv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
        padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True,
        padding_mode=conv.padding_mode,
    ).to(device=conv.weight.device, dtype=conv.weight.dtype)
    folded.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
    folded.bias.copy_(shift + (bias - bn.running_mean) * scale)
    return folded


def adjacent_conv_bn_pairs(root: nn.Module) -> list[tuple[str, str]]:
    """``(conv, bn)`` name pairs where a BatchNorm2d is registered right after a Conv2d of the
    same parent with matching channels (``conv1``/``bn1``, ``Sequential(conv, bn)``): the
    layout of edgecl's CNNs, whose registration order is their execution order."""
    pairs = []
    for parent_name, parent in root.named_modules():
        children = list(parent.named_children())
        for (a, conv), (b, bn) in zip(children, children[1:], strict=False):
            if (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
                    and conv.out_channels == bn.num_features):
                prefix = f"{parent_name}." if parent_name else ""
                pairs.append((prefix + a, prefix + b))
    return pairs


def set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule at dotted path ``name`` of ``root``."""
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def fold_batchnorms(root: nn.Module, pairs: Iterable[tuple[str, str]]) -> int:
    """Fold every ``(conv name, bn name)`` pair of ``root`` in place; returns how many."""
    count = 0
    for conv_name, bn_name in pairs:
        conv, bn = root.get_submodule(conv_name), root.get_submodule(bn_name)
        if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d):
            raise ValueError(f"{conv_name}/{bn_name} are not a Conv2d followed by a BatchNorm2d")
        set_submodule(root, conv_name, fold_conv_bn(conv, bn))
        set_submodule(root, bn_name, nn.Identity())
        count += 1
    return count
