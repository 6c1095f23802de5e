"""Freeze a prefix of a ViT or a staged CNN and run it without autograd.

A backbone is seen as an ordered list of *layers*: the ViT's transformer blocks
(``block0`` … ``block{depth-1}``; the patch/position embedding belongs to any non-empty
frozen prefix) or a CNN's stages (``stem``, ``layer1`` … for ResNet-18; ``stem``,
``stage1`` … ``stage7``, ``head`` for EfficientNet-Lite0). Freezing ``k`` layers means:

- their parameters get ``requires_grad=False`` (the optimizer never sees them);
- they run under ``torch.no_grad()`` (nothing is saved for backward, no backward FLOPs);
- their normalisation layers follow a policy: ``"eval"`` (default: frozen BatchNorm uses and
  keeps its running statistics, so the prefix is a fixed function of its input and its
  output can be cached) or ``"train"`` (LightCL's released code: frozen BN normalises with
  batch statistics and its running statistics keep moving).

:class:`FrozenPrefix` splits a forward pass at layer ``k``: :meth:`FrozenPrefix.prefix`
returns the cacheable tensor after the frozen layers (ViT tokens / CNN feature map) and
:meth:`FrozenPrefix.suffix` continues from it to the pooled features. :class:`TapRecorder`
captures the outputs of trainable units (blocks) with forward hooks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgecl.backbones.vit import VisionTransformer

FrozenBN = Literal["eval", "train"]
FreezeSpec = int | str | None


def is_vit(backbone: nn.Module) -> bool:
    return isinstance(backbone, VisionTransformer)


def layer_names(backbone: nn.Module) -> list[str]:
    """The backbone's layers in execution order (ViT blocks or CNN stages)."""
    if is_vit(backbone):
        return [f"block{i}" for i in range(backbone.depth)]
    if hasattr(backbone, "stage_names"):
        return list(backbone.stage_names)
    raise TypeError(
        f"{type(backbone).__name__} is neither the edgecl ViT nor a staged CNN "
        "(edgecl.backbones.cnn); it has no layers to freeze"
    )


def resolve_freeze_point(backbone: nn.Module, spec: FreezeSpec, default: int) -> int:
    """Number of frozen layers for ``spec``.

    ``None`` → ``default``; an int → that many leading layers; a layer name (``"layer3"``,
    ``"block9"``) → every layer up to *and including* it.
    """
    names = layer_names(backbone)
    if spec is None:
        k = default
    elif isinstance(spec, int):
        k = spec
    elif spec in names:
        k = names.index(spec) + 1
    else:
        raise ValueError(f"unknown layer {spec!r}; layers are {names} (or give a count)")
    if not 0 <= k <= len(names):
        raise ValueError(f"freeze point {k} outside [0, {len(names)}] for layers {names}")
    return k


def reference_cnn_split(backbone: nn.Module) -> int | None:
    """Frozen layers of LightCL's and AR1*'s reference CNN splits: through ResNet-18's
    ``layer3`` (``layer4`` trains) or EfficientNet-Lite0's ``stage6`` (``stage7`` and the 1x1
    head train); None for a backbone without those layers (a ViT)."""
    names = layer_names(backbone)
    for stage in ("layer3", "stage6"):
        if stage in names:
            return names.index(stage) + 1
    return None


def prefix_modules(backbone: nn.Module, k: int) -> list[nn.Module]:
    """Modules that make up the first ``k`` layers (ViT: with the embedding)."""
    if k == 0:
        return []
    if is_vit(backbone):
        return [backbone.patch_embed, *backbone.blocks[:k]]
    return [module for _, module in backbone.stage_modules()[:k]]


def prefix_parameters(backbone: nn.Module, k: int) -> list[nn.Parameter]:
    params = [p for m in prefix_modules(backbone, k) for p in m.parameters()]
    if k > 0 and is_vit(backbone):
        params += [backbone.cls_token, backbone.pos_embed]
    return params


def freeze_prefix(backbone: nn.Module, k: int) -> None:
    """``requires_grad`` off for the first ``k`` layers, on for everything after them."""
    frozen = {id(p) for p in prefix_parameters(backbone, k)}
    for p in backbone.parameters():
        p.requires_grad_(id(p) not in frozen)


def set_frozen_mode(backbone: nn.Module, k: int, frozen_bn: FrozenBN = "eval") -> None:
    """``backbone.train()``, then the frozen layers to eval mode unless ``frozen_bn='train'``."""
    backbone.train()
    if frozen_bn == "eval":
        for module in prefix_modules(backbone, k):
            module.eval()


def has_batchnorm(modules: list[nn.Module]) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for mod in modules
               for m in mod.modules())


class FrozenPrefix:
    """A backbone split after its first ``k`` layers, the prefix frozen and run without grad."""

    def __init__(self, backbone: nn.Module, k: int, frozen_bn: FrozenBN = "eval") -> None:
        self.backbone = backbone
        self.names = layer_names(backbone)
        if not 0 <= k <= len(self.names):
            raise ValueError(f"freeze point {k} outside [0, {len(self.names)}]")
        self.k = k
        self.frozen_bn = frozen_bn
        freeze_prefix(backbone, k)

    @property
    def n_layers(self) -> int:
        return len(self.names)

    @property
    def deterministic(self) -> bool:
        """True when the prefix output depends only on the input (cacheable)."""
        return self.frozen_bn == "eval" or not has_batchnorm(prefix_modules(self.backbone, self.k))

    def train_mode(self) -> None:
        set_frozen_mode(self.backbone, self.k, self.frozen_bn)

    def eval_mode(self) -> None:
        self.backbone.eval()

    @torch.no_grad()
    def prefix(self, x: Tensor) -> Tensor:
        """The frozen layers' output for images ``x`` (ViT tokens, CNN feature map)."""
        if self.k == 0:
            return x
        if is_vit(self.backbone):
            return self.backbone.frozen_prefix(x, self.k)
        for _, module in self.backbone.stage_modules()[: self.k]:
            x = module(x)
        return x

    def suffix(self, h: Tensor) -> Tensor:
        """Pooled features (ViT: CLS after the final norm) from a prefix output ``h``."""
        bb = self.backbone
        if is_vit(bb):
            if self.k == 0:
                return bb.forward_features(h).cls
            return bb.forward_from(h, self.k).cls
        if self.k == len(self.names):
            return bb.pool(h)
        start = None if self.k == 0 else self.names[self.k]
        return bb.forward_features(h, start=start)[0]

    def features(self, x: Tensor) -> Tensor:
        return self.suffix(self.prefix(x))

    def trainable_units(self) -> dict[str, TapPoint]:
        return tap_points(self.backbone, self.k)


# ---- taps ------------------------------------------------------------------------------------
TapPoint = tuple[nn.Module, Callable[[Tensor], Tensor] | None]


def _basic_block_cls() -> type[nn.Module] | None:
    try:
        from edgecl.backbones.cnn import BasicBlock
    except ImportError:  # pragma: no cover - cnn.py always ships BasicBlock
        return None
    return BasicBlock


def tap_points(backbone: nn.Module, start: int = 0) -> dict[str, TapPoint]:
    """Named units of layers ``[start, n)`` whose outputs can be tapped.

    ViT: every block (``block{i}``, tokens before the final norm). ResNet stages: per
    residual block the first conv's activation ``relu(bn1(conv1 x))`` (``{stage}.{j}.conv1``)
    and the block output (``{stage}.{j}.conv2``), as LightCL's reference taps them.
    EfficientNet MBConv stages: every block output (``{stage}.{j}``); other stages (stems,
    heads): the stage output.
    """
    if is_vit(backbone):
        return {f"block{i}": (backbone.blocks[i], None) for i in range(start, backbone.depth)}
    basic = _basic_block_cls()
    points: dict[str, TapPoint] = {}
    for name, stage in backbone.stage_modules()[start:]:
        blocks = getattr(stage, "blocks", None)
        if basic is not None and isinstance(stage, nn.Sequential) and all(
            isinstance(b, basic) for b in stage
        ):
            for j, block in enumerate(stage):
                points[f"{name}.{j}.conv1"] = (block.bn1, F.relu)
                points[f"{name}.{j}.conv2"] = (block, None)
        elif isinstance(blocks, nn.ModuleList):
            for j, block in enumerate(blocks):
                points[f"{name}.{j}"] = (block, None)
        else:
            points[name] = (stage, None)
    return points


class TapRecorder:
    """Records the outputs of the given units during forward passes inside ``with``.

    ``post`` functions are applied when reading (e.g. the ReLU that follows a tapped BN;
    ResNet applies it in place, and ReLU is idempotent, so reading is correct either way).
    """

    def __init__(self, points: dict[str, TapPoint]) -> None:
        self.points = points
        self.raw: dict[str, Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _hook(self, name: str) -> Callable:
        def record(module: nn.Module, args: tuple, out: object) -> None:
            self.raw[name] = out[0] if isinstance(out, tuple) else out  # type: ignore[index]

        return record

    def __enter__(self) -> TapRecorder:
        self.raw = {}
        self._handles = [m.register_forward_hook(self._hook(n)) for n, (m, _) in
                         self.points.items()]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def outputs(self) -> dict[str, Tensor]:
        out = {}
        for name, (_, post) in self.points.items():
            if name in self.raw:
                value = self.raw[name]
                out[name] = post(value) if post is not None else value
        return out


def channel_dim(t: Tensor, vit: bool) -> int:
    """Channel axis of a tap: the last for ViT tokens (B, N, D), 1 for CNN maps (B, C, H, W)."""
    return t.dim() - 1 if vit else 1
