"""Pretrained ViT weights: local files first (checksummed), canonical download when online.

Accepted files hold timm key names: ``.npz`` (numpy archive of arrays), ``.pth``/``.pt``
(loaded with ``weights_only=True``; ``model``/``state_dict`` nesting and ``module.`` prefixes are
unwrapped) and ``.safetensors``. ``head.*`` is dropped; position embeddings are interpolated to
the requested resolution.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from edgecl.backbones.vit import VIT_PRESETS, VisionTransformer, ViTConfig, interpolate_pos_embed
from edgecl.data.base import DataError, cache_dir
from edgecl.data.download import download_file
from edgecl.io import sha256sum

# Local folder name under the data root -> (file, sha256). The folder is the shared copy of a
# real ViT-Ti/16 (AugReg in21k→in1k, fine-tuned on Tiny-ImageNet; see its SOURCE.md).
LOCAL_WEIGHTS: dict[str, tuple[str, str, str]] = {
    "vit_tiny_patch16_224": (
        "vit_tiny_patch16_224_tinyimagenet_ft",
        "vit_tiny_patch16_224_tinyimagenet_ft.npz",
        "cd6d519695a6f5a6b7f641cafe965447bf2d481b86a1ef4dc41680761a910c60",
    ),
}

# Canonical public checkpoints (timm on the Hugging Face hub), used only when no local file
# exists and a network is available. No published checksum is known to edgecl for them: the
# sha256 of the first download is recorded next to the file and enforced on every later load.
CANONICAL_URLS: dict[str, str] = {
    "vit_tiny_patch16_224": (
        "https://huggingface.co/timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k/"
        "resolve/main/model.safetensors"
    ),
    "vit_small_patch16_224": (
        "https://huggingface.co/timm/vit_small_patch16_224.augreg_in21k_ft_in1k/"
        "resolve/main/model.safetensors"
    ),
    "vit_base_patch16_224": (
        "https://huggingface.co/timm/vit_base_patch16_224.augreg2_in21k_ft_in1k/"
        "resolve/main/model.safetensors"
    ),
}


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a checkpoint file into a flat ``{timm key: tensor}`` dict."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
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
            raise DataError(
                f"unsupported weights format {suffix!r} ({path}); use .npz, .pth or .safetensors"
            )
    except DataError:
        raise
    except Exception as exc:  # corrupt archive, truncated file, pickle refused, ...
        raise DataError(
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
        raise DataError(
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
        raise DataError(
            f"weights do not match the ViT: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )


def verify_sha256(path: Path, expected: str) -> None:
    actual = sha256sum(path)
    if actual != expected:
        raise DataError(
            f"checksum mismatch for {path}: expected sha256 {expected}, got {actual}. "
            "The file is corrupt or not the expected checkpoint; delete it and fetch it again."
        )


def _local_copy(name: str, data_root: Path | None) -> Path | None:
    if data_root is None or name not in LOCAL_WEIGHTS:
        return None
    folder, filename, sha = LOCAL_WEIGHTS[name]
    path = data_root / folder / filename
    if not path.is_file():
        return None
    verify_sha256(path, sha)
    return path


def _downloaded_copy(name: str, cache: Path) -> Path:
    if name not in CANONICAL_URLS:
        raise DataError(f"no canonical download known for {name!r}; pass weights=PATH")
    dest = cache / "weights" / f"{name}.safetensors"
    stamp = dest.with_suffix(".sha256")
    if dest.is_file() and stamp.is_file():
        verify_sha256(dest, stamp.read_text().split()[0])
        return dest
    try:
        download_file(CANONICAL_URLS[name], dest)
    except Exception as exc:
        raise DataError(
            f"pretrained weights {name!r} are not available locally and could not be downloaded "
            f"from {CANONICAL_URLS[name]} ({exc}). Either point --data-root / EDGECL_DATA at a "
            f"folder containing {LOCAL_WEIGHTS.get(name, ('<folder>', '<file>'))[0]}/, or pass "
            "backbone.weights=/path/to/checkpoint (.npz, .pth or .safetensors, timm keys)."
        ) from exc
    stamp.write_text(f"{sha256sum(dest)}  {dest.name}\n")
    return dest


def resolve_weights(
    name: str, weights: str | None, data_root: Path | None, cache: Path
) -> Path | None:
    """Where the weights of ``name`` come from: explicit path > local data root > download.

    ``weights`` may be a path, ``"random"`` (no pretrained weights) or None (auto).
    """
    if weights == "random":
        return None
    if weights:
        return Path(os.path.expanduser(weights))
    return _local_copy(name, data_root) or _downloaded_copy(name, cache)


def build_vit(
    name: str = "vit_tiny_patch16_224",
    *,
    weights: str | None = None,
    img_size: int | None = None,
    num_heads: int | None = None,
    data_root: Path | None = None,
    cache: Path | None = None,
) -> VisionTransformer:
    """A ViT from a preset name, with pretrained weights unless ``weights="random"``."""
    path = resolve_weights(name, weights, data_root, cache or cache_dir())
    if path is None:
        if name not in VIT_PRESETS:
            raise ValueError(f"unknown ViT {name!r}; known: {sorted(VIT_PRESETS)}")
        cfg = VIT_PRESETS[name]
        return VisionTransformer(replace(cfg, img_size=img_size or cfg.img_size))
    sd = read_state_dict(path)
    model = VisionTransformer(config_from_state_dict(sd, img_size, num_heads))
    load_into_vit(model, sd)
    return model
