"""Checkpoint files, and ViTs built from them (timm's key layout).

Accepted files: ``.npz`` (numpy archive of arrays), ``.pth``/``.pt`` (loaded with
``weights_only=True``; ``model``/``state_dict`` nesting and ``module.`` prefixes are unwrapped)
and ``.safetensors``. For a ViT, ``head.*`` is dropped and position embeddings are interpolated
to the requested resolution. Where a checkpoint comes from (local copy, download) is decided in
:mod:`edgecl.backbones.registry`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from edgecl.backbones.vit import VIT_PRESETS, VisionTransformer, ViTConfig, interpolate_pos_embed
from edgecl.errors import WeightsError


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a checkpoint file into a flat ``{key: tensor}`` dict."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(
            f"weights file {path} does not exist; pass an existing .npz/.pth/.safetensors"
        )
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                sd = {k: torch.from_numpy(np.array(archive[k])) for k in archive.files}
        elif suffix in (".pth", ".pt", ".bin"):
            sd = torch.load(path, map_location="cpu", weights_only=True)
            for nest in ("model", "state_dict", "model_state"):
                if isinstance(sd, dict) and nest in sd and isinstance(sd[nest], dict):
                    sd = sd[nest]
        elif suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            raise WeightsError(
                f"unsupported weights format {suffix!r} ({path}); use .npz, .pth or .safetensors"
            )
    except WeightsError:
        raise
    except Exception as exc:  # corrupt archive, truncated file, pickle refused, ...
        raise WeightsError(
            f"could not read weights file {path}: {exc}. Re-download or re-export it."
        ) from exc
    return {k.removeprefix("module."): v for k, v in sd.items() if isinstance(v, Tensor)}


def config_from_state_dict(
    sd: dict[str, Tensor], img_size: int | None = None, num_heads: int | None = None
) -> ViTConfig:
    """Infer depth, width and patch size from tensor shapes.

    The head count is not visible in the weights: it comes from ``num_heads``, else from the
    standard ViT of the same width (Ti 3, S 6, B 12, L 16), else width / 64.
    """
    if "patch_embed.proj.weight" not in sd or "pos_embed" not in sd:
        raise WeightsError(
            "weights are not in timm ViT layout (no 'patch_embed.proj.weight'/'pos_embed'); "
            f"first keys: {sorted(sd)[:5]}"
        )
    embed_dim, in_chans, patch, _ = sd["patch_embed.proj.weight"].shape
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    mlp_hidden = sd["blocks.0.mlp.fc1.weight"].shape[0]
    n_patches = sd["pos_embed"].shape[1] - 1
    native = int(round(n_patches**0.5)) * patch
    heads = num_heads or next(
        (p.num_heads for p in VIT_PRESETS.values() if p.embed_dim == embed_dim),
        max(1, embed_dim // 64),
    )
    return ViTConfig(
        img_size=img_size or native,
        patch_size=patch,
        in_chans=in_chans,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=heads,
        mlp_ratio=mlp_hidden / embed_dim,
        qkv_bias="blocks.0.attn.qkv.bias" in sd,
    )


def load_into_vit(model: VisionTransformer, sd: dict[str, Tensor]) -> None:
    """Load timm-keyed weights strictly (after dropping the classifier head)."""
    sd = {k: v for k, v in sd.items() if not k.startswith(("head.", "fc_norm.", "head_drop."))}
    sd["pos_embed"] = interpolate_pos_embed(sd["pos_embed"], model.cfg.grid_size)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise WeightsError(
            f"weights do not match the ViT: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )


def vit_from_weights(
    preset: ViTConfig, path: Path | None, img_size: int | None = None, num_heads: int | None = None
) -> VisionTransformer:
    """The ViT of checkpoint ``path`` (its shape inferred from the tensors), or a random
    ``preset`` when ``path`` is None; ``img_size`` overrides the native resolution."""
    if path is None:
        return VisionTransformer(replace(preset, img_size=img_size or preset.img_size))
    sd = read_state_dict(path)
    model = VisionTransformer(config_from_state_dict(sd, img_size, num_heads))
    load_into_vit(model, sd)
    return model
