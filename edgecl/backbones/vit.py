"""One hookable Vision Transformer, timm-weight compatible.

Every method in edgecl runs on this single implementation; what differs between methods is
passed per call in a :class:`ViTHooks` object:

- ``prompts``: tokens prepended right after the CLS token (L2P-style prompt tuning);
- ``prefix``: per-layer extra keys/values (prefix tuning, DualPrompt / CODA-Prompt);
- ``merge``: per-layer token-merge callback (ToMe / AToM) with token sizes, which switches the
  attention to proportional attention (``+ log(size)`` on the logits of every key);
- ``skip``: per-layer skip decision (layer dropping);
- ``taps``: block outputs to return;
- ``frozen_until``: run the embedding and blocks ``[0, k)`` under ``no_grad``.

Token layout is ``[CLS, prompts..., patches...]``; the first ``1 + n_prompts`` tokens are
*protected* (never merged).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgecl.backbones.attention_kernels import attention, check_kernel
from edgecl.backbones.recompute import recomputed

# merge(layer, x, keys, sizes, n_protected) -> (x, sizes); keys are the layer's attention keys
# averaged over heads, (B, N, head_dim), as ToMe uses for similarity.
MergeFn = Callable[[int, Tensor, Tensor, Tensor, int], tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class ViTConfig:
    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 192
    depth: int = 12
    num_heads: int = 3
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    norm_eps: float = 1e-6
    attention_kernel: str = "auto"  # attention_kernels.KERNELS

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2


VIT_PRESETS: dict[str, ViTConfig] = {
    "vit_tiny_patch16_224": ViTConfig(embed_dim=192, depth=12, num_heads=3),
    "vit_small_patch16_224": ViTConfig(embed_dim=384, depth=12, num_heads=6),
    "vit_base_patch16_224": ViTConfig(embed_dim=768, depth=12, num_heads=12),
    "vit_large_patch16_224": ViTConfig(embed_dim=1024, depth=24, num_heads=16),
}


RecomputeMode = Literal["none", "mlp", "all"]  # VisionTransformer.set_recompute
RECOMPUTE_MODES: tuple[str, ...] = get_args(RecomputeMode)


@dataclass
class ViTHooks:
    prompts: Tensor | None = None
    prefix: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)
    merge: MergeFn | None = None
    skip: Collection[int] = ()
    taps: Collection[int] = ()
    frozen_until: int = 0
    # a layer whose CLS-attention x value-norm token significance the pass returns (CPS-Prompt)
    significance_layer: int | None = None


@dataclass
class ViTOutput:
    tokens: Tensor  # (B, N, D) after the final norm
    n_prompts: int
    taps: dict[int, Tensor]
    sizes: Tensor | None  # (B, N) token sizes when merging happened, else None
    layers_run: tuple[int, ...]
    significance: Tensor | None = None  # (B, N - 1) per patch token, with significance_layer

    @property
    def cls(self) -> Tensor:
        return self.tokens[:, 0]

    @property
    def prompt_tokens(self) -> Tensor:
        return self.tokens[:, 1 : 1 + self.n_prompts]


class PatchEmbed(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(
            cfg.in_chans, cfg.embed_dim, kernel_size=cfg.patch_size, stride=cfg.patch_size
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class AttentionCore(nn.Module):
    """softmax(q kᵀ/√d + bias) v. A module so cost meters can see every attention call;
    ``kernel``: how it is computed (edgecl/backbones/attention_kernels.py)."""

    def __init__(self, kernel: str = "auto") -> None:
        super().__init__()
        self.kernel = check_kernel(kernel)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None) -> Tensor:
        return attention(q, k, v, bias, self.kernel)


class Attention(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.embed_dim // cfg.num_heads
        self.qkv = nn.Linear(cfg.embed_dim, 3 * cfg.embed_dim, bias=cfg.qkv_bias)
        self.core = AttentionCore(cfg.attention_kernel)
        self.proj = nn.Linear(cfg.embed_dim, cfg.embed_dim)

    def split_heads(self, t: Tensor) -> Tensor:
        b, n, _ = t.shape
        return t.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        x: Tensor,
        prefix: tuple[Tensor, Tensor] | None = None,
        sizes: Tensor | None = None,
        significance: list[Tensor] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Returns the attention output and the keys (B, heads, N, head_dim) of x's tokens.
        With a ``significance`` list, appends each token's significance to it (below)."""
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        own_keys = k
        if significance is not None:
            significance.append(token_significance(q, k, v))
        bias = None
        if sizes is not None:
            bias = sizes.log()[:, None, None, :].to(q.dtype)  # proportional attention
        if prefix is not None:
            # the dtype the projection computed in (bf16 under autocast, where x, a layer
            # norm's output, stays fp32)
            pk, pv = (self.split_heads(p.to(k.dtype)) for p in prefix)
            k = torch.cat([pk, k], dim=2)
            v = torch.cat([pv, v], dim=2)
            if bias is not None:  # prefix tokens have size 1: log 1 = 0
                bias = F.pad(bias, (pk.shape[2], 0))
        out = self.core(q, k, v, bias).transpose(1, 2).reshape(b, n, d)
        return self.proj(out), own_keys


def token_significance(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """CPS-Prompt's patch significance: the CLS token's attention to each token, summed over
    heads, times the L2 norm of the token's value vector (all heads concatenated); CLS
    itself dropped. ``q, k, v``: (B, heads, N, head_dim) of x's own tokens."""
    scale = q.shape[-1] ** -0.5
    cls_attn = ((q[:, :, :1] @ k.transpose(-2, -1)) * scale).softmax(dim=-1)[:, :, 0]  # (B,H,N)
    b, _, n, _ = v.shape
    value_norm = v.transpose(1, 2).reshape(b, n, -1).norm(dim=-1)  # (B, N)
    return (cls_attn.sum(dim=1) * value_norm)[:, 1:]


class Mlp(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        hidden = int(cfg.embed_dim * cfg.mlp_ratio)
        self.fc1 = nn.Linear(cfg.embed_dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, cfg.embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.mlp = Mlp(cfg)
        self.recompute = "none"  # VisionTransformer.set_recompute

    def attention_branch(self, x: Tensor, pk: Tensor | None, pv: Tensor | None,
                         sizes: Tensor | None) -> tuple[Tensor, Tensor]:
        """The attention output and the head-averaged keys token merging matches on."""
        prefix = None if pk is None or pv is None else (pk, pv)
        out, keys = self.attn(self.norm1(x), prefix=prefix, sizes=sizes)
        return out, keys.mean(dim=1)

    def mlp_hidden(self, x: Tensor) -> Tensor:
        return self.mlp.act(self.mlp.fc1(self.norm2(x)))

    def forward(
        self,
        x: Tensor,
        *,
        layer: int = 0,
        prefix: tuple[Tensor, Tensor] | None = None,
        sizes: Tensor | None = None,
        merge: MergeFn | None = None,
        n_protected: int = 1,
        significance: list[Tensor] | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        # a trainable prefix counts: block 0 of CODA/DualPrompt has a frozen input and weights
        recompute = self.recompute != "none" and torch.is_grad_enabled() and (
            x.requires_grad or any(p.requires_grad for p in self.parameters())
            or (prefix is not None and any(t.requires_grad for t in prefix)))
        if recompute and self.recompute == "all" and significance is None:
            pk, pv = prefix or (None, None)
            params = [*self.norm1.parameters(), *self.attn.parameters()]
            attn_out, mean_keys = recomputed(self.attention_branch, (x, pk, pv, sizes), params)
        else:
            attn_out, keys = self.attn(self.norm1(x), prefix=prefix, sizes=sizes,
                                       significance=significance)
            mean_keys = keys.mean(dim=1) if merge is not None else None
        x = x + attn_out
        if merge is not None and mean_keys is not None:
            if sizes is None:
                sizes = x.new_ones(x.shape[:2])
            x, sizes = merge(layer, x, mean_keys, sizes, n_protected)
        if recompute:
            params = [*self.norm2.parameters(), *self.mlp.fc1.parameters()]
            return x + self.mlp.fc2(recomputed(self.mlp_hidden, (x,), params)), sizes
        return x + self.mlp(self.norm2(x)), sizes


class VisionTransformer(nn.Module):
    """timm ``VisionTransformer`` parameter layout (class token, learned absolute positions)."""

    def __init__(self, cfg: ViTConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or ViTConfig()
        c = self.cfg
        self.patch_embed = PatchEmbed(c)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, c.num_patches + 1, c.embed_dim))
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.depth))
        self.norm = nn.LayerNorm(c.embed_dim, eps=c.norm_eps)
        self._init_weights()

    @property
    def embed_dim(self) -> int:
        return self.cfg.embed_dim

    def set_recompute(self, mode: RecomputeMode) -> None:
        """``mlp``: every block keeps only its residual for the MLP branch's backward and
        recomputes layer norm, fc1 and GELU there (edgecl/backbones/recompute.py); ``all``:
        the attention branch too (layer norm, qkv, attention and projection; not in a block
        that reports CPS significance); ``none``: autograd keeps what each op saves."""
        if mode not in RECOMPUTE_MODES:
            raise ValueError(f"recompute must be one of {RECOMPUTE_MODES}, got {mode!r}")
        for block in self.blocks:
            block.recompute = mode

    @property
    def depth(self) -> int:
        return self.cfg.depth

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def embed(self, x: Tensor) -> Tensor:
        """Images (B, C, H, W) → tokens [CLS, patches] with position embeddings."""
        _, _, h, w = x.shape
        if h != self.cfg.img_size or w != self.cfg.img_size:
            raise ValueError(
                f"expected {self.cfg.img_size}x{self.cfg.img_size} input, got {h}x{w}; "
                "resize the batch (eval_transform) or build the ViT at this resolution"
            )
        tokens = self.patch_embed(x)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        return torch.cat([cls, tokens], dim=1) + self.pos_embed

    def forward_from(
        self, x: Tensor, start: int, hooks: ViTHooks | None = None, n_prompts: int = 0
    ) -> ViTOutput:
        """Run blocks ``[start, depth)`` and the final norm on tokens ``x``.

        ``x`` is either the output of :meth:`embed` (``start=0``) or a cached block output.
        Prompts are inserted only when ``start == 0``; for a cached input that already holds
        prompts pass their count as ``n_prompts``.
        """
        hooks = hooks or ViTHooks()
        if hooks.prompts is not None:
            if start != 0:
                raise ValueError("prompts can only be inserted before block 0")
            x = torch.cat([x[:, :1], hooks.prompts.to(x.dtype), x[:, 1:]], dim=1)
            n_prompts = hooks.prompts.shape[1]
        skip = set(hooks.skip)
        taps: dict[int, Tensor] = {}
        sizes: Tensor | None = None
        layers_run: list[int] = []
        scores: list[Tensor] = []
        grad = torch.is_grad_enabled()
        for layer in range(start, self.depth):
            if layer not in skip:
                with torch.set_grad_enabled(grad and layer >= hooks.frozen_until):
                    x, sizes = self.blocks[layer](
                        x,
                        layer=layer,
                        prefix=hooks.prefix.get(layer),
                        sizes=sizes,
                        merge=hooks.merge,
                        n_protected=1 + n_prompts,
                        significance=scores if layer == hooks.significance_layer else None,
                    )
                layers_run.append(layer)
            if layer in hooks.taps:
                taps[layer] = x
        return ViTOutput(self.norm(x), n_prompts, taps, sizes, tuple(layers_run),
                         scores[0][:, n_prompts:] if scores else None)

    def forward_features(self, x: Tensor, hooks: ViTHooks | None = None) -> ViTOutput:
        hooks = hooks or ViTHooks()
        with torch.set_grad_enabled(torch.is_grad_enabled() and hooks.frozen_until <= 0):
            tokens = self.embed(x)
        return self.forward_from(tokens, 0, hooks)

    @torch.no_grad()
    def frozen_prefix(self, x: Tensor, k: int) -> Tensor:
        """Tokens after blocks ``[0, k)`` under no_grad: the cacheable part of a frozen prefix."""
        tokens = self.embed(x)
        for layer in range(k):
            tokens, _ = self.blocks[layer](tokens, layer=layer)
        return tokens

    def forward(self, x: Tensor) -> Tensor:
        """Pre-logits: the CLS token after the final norm."""
        return self.forward_features(x).cls


def interpolate_pos_embed(pos_embed: Tensor, new_grid: int, n_prefix: int = 1) -> Tensor:
    """Bicubic resize of the patch position grid, keeping the class-token position."""
    prefix, grid = pos_embed[:, :n_prefix], pos_embed[:, n_prefix:]
    old_grid = int(math.isqrt(grid.shape[1]))
    if old_grid * old_grid != grid.shape[1]:
        raise ValueError(f"position embedding of {grid.shape[1]} patches is not a square grid")
    if old_grid == new_grid:
        return pos_embed
    d = grid.shape[-1]
    grid = grid.reshape(1, old_grid, old_grid, d).permute(0, 3, 1, 2)
    grid = F.interpolate(
        grid.float(), size=(new_grid, new_grid), mode="bicubic", align_corners=False
    )
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid * new_grid, d).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)
