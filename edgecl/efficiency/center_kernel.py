"""Center-kernel decoupling: a frozen kxk conv with its center tap split out as a 1x1 branch.

``y = conv_kxk(x; W with W[:, :, c, c] = 0) + conv_1x1(x; W[:, :, c, c])`` equals the
original conv exactly (the 1x1 conv with the kxk conv's stride and no padding sees exactly
the center tap of every window). Only the 1x1 branch trains; :meth:`merge` writes it back
into the center and returns a plain conv (CsKO's re-parameterization at task end).

The 1x1 branch may be split by *input* channel (:meth:`select`, DCES): the selected input
channels form a trainable 1x1 conv over ``x[:, selected]``, the others a frozen one, so the
gradient, optimizer state and saved input of the unselected channels are never held.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from edgecl.efficiency.gradient_filter import FilteredConv2d


def _center(conv: nn.Conv2d) -> tuple[int, int]:
    k_h, k_w = conv.kernel_size
    if k_h % 2 == 0 or k_w % 2 == 0 or conv.padding != (k_h // 2, k_w // 2):
        raise ValueError(
            f"center decoupling needs an odd kernel with 'same' padding; got kernel "
            f"{conv.kernel_size}, padding {conv.padding}"
        )
    if conv.groups != 1 or conv.dilation != (1, 1):
        raise ValueError("center decoupling supports groups=1 and dilation=1 only")
    return k_h // 2, k_w // 2


def _pointwise(weight: Tensor, stride: tuple[int, int], trainable: bool,
               filter_patch: int | None) -> nn.Conv2d:
    out_c, in_c = weight.shape
    if trainable and filter_patch:
        conv: nn.Conv2d = FilteredConv2d(in_c, out_c, 1, stride=stride, bias=False,
                                         patch=filter_patch)
    else:
        conv = nn.Conv2d(in_c, out_c, 1, stride=stride, bias=False)
    conv = conv.to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(weight.reshape(out_c, in_c, 1, 1))
    conv.weight.requires_grad_(trainable)
    return conv


class CenterDecoupledConv(nn.Module):
    """A frozen kxk conv (center zeroed) + its center as a (channel-split) 1x1 branch."""

    def __init__(self, conv: nn.Conv2d, filter_patch: int | None = None) -> None:
        super().__init__()
        self.c = _center(conv)
        self.filter_patch = filter_patch
        self.conv = nn.Conv2d(
            conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
            padding=conv.padding, bias=conv.bias is not None,
        ).to(device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            self.conv.weight.copy_(conv.weight)
            center = conv.weight[:, :, self.c[0], self.c[1]].clone()
            self.conv.weight[:, :, self.c[0], self.c[1]] = 0
            if conv.bias is not None:
                self.conv.bias.copy_(conv.bias)
        for p in self.conv.parameters():
            p.requires_grad_(False)
        self.register_buffer("selected", torch.arange(conv.in_channels))
        self.register_buffer("unselected", torch.zeros(0, dtype=torch.long))
        self.adapter = _pointwise(center, conv.stride, True, filter_patch)
        self.adapter_frozen: nn.Conv2d | None = None

    def center_weight(self) -> Tensor:
        """The full (out, in) 1x1 weight: trainable and frozen input channels together."""
        out = self.adapter.weight.new_zeros(self.conv.out_channels, self.conv.in_channels)
        out[:, self.selected] = self.adapter.weight.detach()[:, :, 0, 0]
        if self.adapter_frozen is not None:
            out[:, self.unselected] = self.adapter_frozen.weight.detach()[:, :, 0, 0]
        return out

    @torch.no_grad()
    def select(self, channels: Tensor) -> None:
        """Train only the input ``channels`` of the 1x1 branch (sorted); freeze the rest."""
        full = self.center_weight()
        channels = torch.unique(channels.to(full.device))  # sorted, distinct
        if channels.numel() == 0 or int(channels.max()) >= self.conv.in_channels:
            raise ValueError(f"selected channels out of range 0..{self.conv.in_channels - 1}")
        mask = torch.ones(self.conv.in_channels, dtype=torch.bool, device=full.device)
        mask[channels] = False
        rest = torch.nonzero(mask).flatten()
        self.selected, self.unselected = channels, rest
        stride = self.conv.stride
        self.adapter = _pointwise(full[:, channels], stride, True, self.filter_patch)  # type: ignore[arg-type]
        self.adapter_frozen = (
            _pointwise(full[:, rest], stride, False, None) if rest.numel() else None  # type: ignore[arg-type]
        )

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        if self.adapter_frozen is None:
            return y + self.adapter(x)
        return (y + self.adapter(x.index_select(1, self.selected))
                + self.adapter_frozen(x.index_select(1, self.unselected)))

    @torch.no_grad()
    def merge(self) -> nn.Conv2d:
        """A plain kxk conv with the 1x1 branch folded back into the center tap."""
        conv = self.conv
        merged = nn.Conv2d(
            conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
            padding=conv.padding, bias=conv.bias is not None,
        ).to(device=conv.weight.device, dtype=conv.weight.dtype)
        merged.weight.copy_(conv.weight)
        merged.weight[:, :, self.c[0], self.c[1]] += self.center_weight()
        if conv.bias is not None:
            merged.bias.copy_(conv.bias)
        return merged
