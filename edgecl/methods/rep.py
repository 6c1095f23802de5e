"""REP: resource-efficient prompting (Jeon, Ma, Kim, Jeon; arXiv 2406.04772, NeurIPS 2025).

REP is not a prompt method of its own: it makes L2P, DualPrompt and CODA-Prompt cheaper to
train. :class:`REPMixin` adds its three parts to any of them (registry: ``l2p_rep``,
``dualprompt_rep``, ``coda_prompt_rep``), each switchable by one flag for ablations:

- ``swift_selection``: queries come from a smaller frozen *selection model* (``selector``):
  by default the update model's own weights at a lower input resolution (112 px; position
  embeddings interpolated bicubically), optionally truncated to the first ``depth`` blocks,
  or a separate checkpoint (``selector.weights``). Keys live in the selector's feature space.
  Off: the host's query model (the update ViT at full resolution).
- ``cache_queries`` (an edgecl extension): the selector sees the *un-augmented* image
  (``batch.raw`` through the evaluation transform, then resized to the selector resolution,
  exactly what it sees at test time) and each training sample's query is computed once per
  task and reused in later epochs (keyed by ``batch.index``). Off: the selector sees the
  augmented batch, as the host methods do.
- ``atom``: adaptive token merging (:mod:`edgecl.efficiency.token_merging`) in the prompt
  update forward: ``n_l = min(floor(δ(l−1)), r_max)`` merges in block ``l``, CLS and prompt
  tokens protected, proportional attention.
- ``ald``: adaptive layer dropping (:mod:`edgecl.efficiency.layer_drop`): each block runs
  with probability ``θ_{t,l}``; blocks holding prefix prompts always run.

Merging and dropping act on training forwards only; evaluation runs every block on every
token. ALD's ``t`` counts training steps over the whole stream (``ald_clock: run``, as
progressive layer dropping does) or within the current task (``task``);
``ald_reference_steps`` stretches it so that a shortened run follows the decay of a protocol
with that many steps (an edgecl extension; docs/methods/rep.md discusses its accuracy cost).

Every cost is measured, not modelled: skipped blocks and merged tokens simply do not appear
in the executed FLOPs and saved-for-backward bytes; the similarity matmuls of the matching
are booked as forward FLOPs; the query cache counts as buffer memory.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from edgecl.backbones.vit import (
    VIT_PRESETS,
    VisionTransformer,
    ViTHooks,
    interpolate_pos_embed,
)
from edgecl.data.transforms import eval_transform
from edgecl.efficiency.feature_cache import FeatureCache
from edgecl.efficiency.layer_drop import ALDConfig, LayerDropper
from edgecl.efficiency.prompts import Prefix, QueryModel
from edgecl.efficiency.token_merging import TokenMerger
from edgecl.methods.base import Batch, BenchmarkInfo, MethodParams, StepStats, TaskInfo
from edgecl.methods.coda_prompt import CodaPrompt, CodaPromptParams
from edgecl.methods.dualprompt import DualPrompt, DualPromptParams
from edgecl.methods.l2p import L2P, L2PParams
from edgecl.methods.prompt_base import PromptMethod

# The ALD generator's seed is the run seed plus this offset, so it never replays self.rng.
ALD_SEED_OFFSET = 0x41D
VIT_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


class SelectorConfig(BaseModel):
    """The frozen selection model: resolution, depth and weights."""

    model_config = ConfigDict(extra="forbid")
    resolution: int | None = Field(112, ge=1)  # None: the selector's native resolution
    depth: int | None = Field(None, ge=1)  # None: every block
    # None: the update model's own weights; else a separate model: a checkpoint path or a
    # ViT preset name (vit_tiny_patch16_224, ...) with its pretrained weights
    weights: str | None = None


class REPParams(MethodParams):
    swift_selection: bool = True
    selector: SelectorConfig = SelectorConfig()
    cache_queries: bool = True
    atom: bool = True
    r_max: int = Field(8, ge=0)
    ald: bool = True
    ald_theta_bar: float = Field(0.5, ge=0.0, le=1.0)
    ald_gamma: float = Field(0.001, ge=0.0)
    ald_alpha: float = Field(0.9, ge=0.0, le=1.0)
    ald_tau: int = Field(16, ge=0)
    ald_reference_steps: int | None = Field(None, ge=1)
    ald_clock: Literal["run", "task"] = "run"  # t counts steps of the whole run / of the task


class L2PREPParams(REPParams, L2PParams):
    """L2P + REP; REP's CIFAR-100 L2P defaults (r_max 8, τ 16)."""


class DualPromptREPParams(REPParams, DualPromptParams):
    """DualPrompt + REP; REP's CIFAR-100 DualPrompt defaults (r_max 6, τ 12)."""

    r_max: int = Field(6, ge=0)
    ald_tau: int = Field(12, ge=0)


class CodaPromptREPParams(REPParams, CodaPromptParams):
    """CODA-Prompt + REP; DualPrompt's CIFAR defaults (prefix prompts in blocks 0-4 too)."""

    r_max: int = Field(6, ge=0)
    ald_tau: int = Field(12, ge=0)


# ---- the selection model ---------------------------------------------------------------------
def resize_input(x: Tensor, size: int) -> Tensor:
    """Images (B, C, H, W) resized to ``size`` px (bilinear, antialiased when shrinking)."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    with torch.no_grad():
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                             antialias=size < x.shape[-1])


class SwiftQueryModel(QueryModel):
    """A frozen selector that resizes its input to its own resolution first."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(resize_input(x, self.vit.cfg.img_size))


def shared_selector(vit: VisionTransformer, resolution: int, depth: int) -> VisionTransformer:
    """The update model's own (frozen) weights at ``resolution`` and truncated to ``depth``.

    Patch embedding, class token, blocks and final norm are the very same modules; only the
    position embedding is a new (interpolated) tensor.
    """
    cfg = replace(vit.cfg, img_size=resolution, depth=0)
    if resolution % cfg.patch_size:
        raise ValueError(
            f"selector.resolution={resolution} is not a multiple of the patch size "
            f"{cfg.patch_size}"
        )
    selector = VisionTransformer(cfg)
    selector.cfg = replace(cfg, depth=depth)
    selector.patch_embed = vit.patch_embed
    selector.cls_token = vit.cls_token
    selector.blocks = nn.ModuleList(vit.blocks[:depth])
    selector.norm = vit.norm
    pos = interpolate_pos_embed(vit.pos_embed.detach(), cfg.grid_size)
    selector.pos_embed = nn.Parameter(pos.clone(), requires_grad=False)
    return selector


def checkpoint_selector(
    weights: str, resolution: int | None, depth: int | None
) -> VisionTransformer:
    """A separate frozen ViT, optionally truncated.

    ``weights`` is a timm-keyed checkpoint path or a ViT preset name (``vit_tiny_patch16_224``,
    ...), whose pretrained weights are found like the backbone's (``$EDGECL_DATA``, then a
    download).
    """
    from edgecl.backbones.registry import build_vit
    from edgecl.data import resolve_data_root

    if weights in VIT_PRESETS:
        selector = build_vit(weights, img_size=resolution, data_root=resolve_data_root(None))
    else:
        selector = build_vit(weights=weights, img_size=resolution)
    if depth is not None:
        if depth > selector.depth:
            raise ValueError(f"selector.depth={depth} exceeds the checkpoint's {selector.depth}")
        selector.blocks = nn.ModuleList(selector.blocks[:depth])
        selector.cfg = replace(selector.cfg, depth=depth)
    return selector


def build_selector(vit: VisionTransformer, cfg: SelectorConfig) -> VisionTransformer:
    if cfg.weights is not None:
        return checkpoint_selector(cfg.weights, cfg.resolution, cfg.depth)
    depth = cfg.depth or vit.depth
    if depth > vit.depth:
        raise ValueError(f"selector.depth={depth} exceeds the update model's {vit.depth} blocks")
    return shared_selector(vit, cfg.resolution or vit.cfg.img_size, depth)


# ---- REP over a prompt method ----------------------------------------------------------------
class REPMixin(PromptMethod):
    """Swift selection, query caching, AToM and ALD on top of a :class:`PromptMethod`."""

    params: REPParams

    def setup(self, backbone: nn.Module, info: BenchmarkInfo) -> None:
        self.rep_step = 0
        self.task_step = 0
        self.query_cache = FeatureCache("fp32")
        super().setup(backbone, info)
        p = self.params
        self.merger = (
            TokenMerger.atom(self.vit.depth, p.r_max, self.book_matching_flops) if p.atom else None
        )
        self.dropper = None
        if p.ald:
            total_steps = max(1, sum(info.steps_per_task))
            scale = p.ald_reference_steps / total_steps if p.ald_reference_steps else 1.0
            merges = self.merger.merges if self.merger else None
            cfg = ALDConfig(p.ald_theta_bar, p.ald_gamma, p.ald_alpha, p.ald_tau)
            self.dropper = LayerDropper(
                self.vit.depth, merges, cfg, info.seed + ALD_SEED_OFFSET, time_scale=scale
            )
        tf = info.train_transform
        mean, std = (tf.mean, tf.std) if tf is not None else VIT_MEAN_STD
        self.query_transform = eval_transform(info.input_size, mean, std)
        self.last_skip: list[int] = []

    def build_query_model(self) -> QueryModel:
        if not self.params.swift_selection:
            return super().build_query_model()
        selector = build_selector(self.vit, self.params.selector).to(self.device)
        model = SwiftQueryModel(selector)
        self.modules["selector"] = model  # counted and saved; shared weights count once
        return model

    def book_matching_flops(self, n: int) -> None:
        self.meter.add_flops("forward", n)

    # ---- queries -----------------------------------------------------------------------------
    def training_query(self, batch: Batch) -> Tensor:
        if not self.params.cache_queries:
            return super().training_query(batch)
        if batch.raw is None or batch.index is None:
            raise ValueError(f"{self.name}: cache_queries needs batch.raw and batch.index")
        return self.query_cache.fetch(batch.index, batch.raw, self.raw_query).to(self.device)

    def raw_query(self, raw: Tensor) -> Tensor:
        """Query of un-augmented uint8 images: the test-time path (eval transform, resize)."""
        return self.query_model(self.query_transform(raw).to(self.device))

    # ---- the prompted forward ----------------------------------------------------------------
    def vit_hooks(self, prompts: Tensor | None, prefix: Prefix, training: bool) -> ViTHooks:
        hooks = super().vit_hooks(prompts, prefix, training)
        if not training:
            return hooks
        if self.merger is not None:
            self.merger.reset()
            hooks.merge = self.merger
        if self.dropper is not None:
            t = self.rep_step if self.params.ald_clock == "run" else self.task_step
            self.last_skip = self.dropper.sample(t, always_run=set(prefix))
            hooks.skip = self.last_skip
        return hooks

    def observe(self, batch: Batch) -> StepStats:
        self.last_skip = []
        if self.merger is not None:  # a step without a training forward merges nothing
            self.merger.reset()
        stats = super().observe(batch)
        self.rep_step += 1
        self.task_step += 1
        stats.extra["layers_run"] = float(self.vit.depth - len(self.last_skip))
        if self.merger is not None:
            stats.extra["tokens_merged"] = float(sum(self.merger.removed.values()))
        return stats

    # ---- lifecycle, memory, resume -----------------------------------------------------------
    def begin_task(self, task: TaskInfo) -> None:
        # Class-incremental: a task's samples never come back, so queries live for one task.
        self.query_cache.reset(task.n_train if self.params.cache_queries else 0)
        self.task_step = 0
        super().begin_task(task)

    def buffer_bytes(self) -> int:
        return super().buffer_bytes() + self.query_cache.nbytes()

    def extra_state(self) -> dict[str, Any]:
        return {
            **super().extra_state(),
            "rep": {
                "step": self.rep_step,
                "task_step": self.task_step,
                "dropper": self.dropper.state_dict() if self.dropper else None,
                "cache": self.query_cache.state_dict(),
            },
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        super().load_extra_state(state)
        rep = state["rep"]
        self.rep_step, self.task_step = rep["step"], rep["task_step"]
        if self.dropper is not None:
            self.dropper.load_state_dict(rep["dropper"])
        self.query_cache.load_state_dict(rep["cache"])


class L2PREP(REPMixin, L2P):
    name = "l2p_rep"
    Params = L2PREPParams
    params: L2PREPParams


class DualPromptREP(REPMixin, DualPrompt):
    name = "dualprompt_rep"
    Params = DualPromptREPParams
    params: DualPromptREPParams


class CodaPromptREP(REPMixin, CodaPrompt):
    name = "coda_prompt_rep"
    Params = CodaPromptREPParams
    params: CodaPromptREPParams

