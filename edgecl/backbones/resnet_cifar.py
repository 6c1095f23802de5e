"""He et al.'s CIFAR ResNets (ResNet-20/32/44/56/110) with "option A" shortcuts.

The layout of the public CIFAR-10 checkpoints of ``akamaster/pytorch_resnet_cifar10``: a 3x3
stem with 16 channels, three stages of ``n`` basic blocks with 16/32/64 channels (stride 2 at
the first block of stages 2 and 3), every conv 3x3 with padding 1 and no bias followed by
BatchNorm, and parameter-free "option A" shortcuts where the shape changes: the input
subsampled ``x[:, :, ::2, ::2]`` and zero-padded by ``planes // 4`` channels on each side.
Global average pooling gives the 64-d features; the CIFAR-10 ``linear`` head is dropped.

Checkpoint keys ``conv1.*``/``bn1.*`` are this module's ``stem.0.*``/``stem.1.*``
(:func:`akamaster_state_dict` maps them); the stages keep the checkpoint's names.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgecl.backbones.cnn import StagedBackbone
from edgecl.backbones.pretrained import load_strict
from edgecl.backbones.weights import read_state_dict
from edgecl.errors import ConfigError, WeightsError

# depth -> blocks per stage (depth = 6n + 2)
CIFAR_RESNET_DEPTHS = {20: 3, 32: 5, 44: 7, 56: 9, 110: 18}


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class OptionAShortcut(nn.Module):
    """Parameter-free shortcut: subsample by 2 and zero-pad ``pad`` channels on each side."""

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = pad

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class CifarBasicBlock(nn.Module):
    """conv-bn-relu-conv-bn, plus the (option A) shortcut, then relu."""

    def __init__(self, in_channels: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != planes:
            self.shortcut = OptionAShortcut(planes // 4)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(StagedBackbone):
    """A CIFAR ResNet of ``depth`` 6n+2 layers; stages ``stem``, ``layer1``..``layer3``."""

    feature_dim = 64
    stage_names = ("stem", "layer1", "layer2", "layer3")
    native_resolution = 32

    def __init__(self, depth: int = 20) -> None:
        super().__init__()
        if depth not in CIFAR_RESNET_DEPTHS:
            raise ConfigError(
                f"CIFAR ResNet depth must be one of {sorted(CIFAR_RESNET_DEPTHS)}, got {depth}"
            )
        n = CIFAR_RESNET_DEPTHS[depth]
        self.depth = depth
        self.stem = nn.Sequential(_conv3x3(3, 16), nn.BatchNorm2d(16), nn.ReLU())
        self.layer1 = _stage(16, 16, 1, n)
        self.layer2 = _stage(16, 32, 2, n)
        self.layer3 = _stage(32, 64, 2, n)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight)  # the reference's init

    def conv_bn_pairs(self) -> list[tuple[str, str]]:
        """``(conv name, following BatchNorm name)`` for every conv, for BN folding."""
        pairs = [("stem.0", "stem.1")]
        for stage in ("layer1", "layer2", "layer3"):
            for i in range(len(getattr(self, stage))):
                pairs += [(f"{stage}.{i}.conv{k}", f"{stage}.{i}.bn{k}") for k in (1, 2)]
        return pairs


def _stage(in_channels: int, planes: int, stride: int, n_blocks: int) -> nn.Sequential:
    blocks = [CifarBasicBlock(in_channels, planes, stride)]
    blocks += [CifarBasicBlock(planes, planes) for _ in range(n_blocks - 1)]
    return nn.Sequential(*blocks)


def akamaster_state_dict(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """An akamaster checkpoint's state dict (``module.`` already dropped) in this module's
    names: ``conv1``/``bn1`` -> ``stem.0``/``stem.1``; the CIFAR-10 ``linear`` head dropped."""
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        if key.startswith("linear."):
            continue
        if key.startswith("conv1."):
            key = "stem.0." + key.removeprefix("conv1.")
        elif key.startswith("bn1."):
            key = "stem.1." + key.removeprefix("bn1.")
        out[key] = value
    return out


def read_checkpoint(path: Path) -> dict[str, Tensor]:
    """A checkpoint's flat state dict; ``.th`` (akamaster's torch.save of ``{"best_prec1",
    "state_dict"}``) is read here with ``weights_only=True``, other formats by
    :func:`edgecl.backbones.weights.read_state_dict`."""
    if path.suffix.lower() != ".th":
        return read_state_dict(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickle refused, ...
        raise WeightsError(f"could not read weights file {path}: {exc}") from exc
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise WeightsError(f"{path} holds no state dict")
    return {k.removeprefix("module."): v for k, v in sd.items() if isinstance(v, Tensor)}


def build_cifar_resnet(depth: int, weights: Path | None, img_size: int | None) -> CifarResNet:
    """A CIFAR ResNet, loaded strictly from an akamaster-layout (or edgecl-saved) checkpoint."""
    del img_size  # fully convolutional
    net = CifarResNet(depth)
    if weights is not None:
        load_strict(net, akamaster_state_dict(read_checkpoint(weights)), f"resnet{depth}_cifar")
    return net
