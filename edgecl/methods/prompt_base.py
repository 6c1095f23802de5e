"""Shared base of the prompt methods (L2P, DualPrompt, CODA-Prompt).

The pretrained ViT is frozen (``requires_grad=False``, eval mode) and only prompts, keys and a
linear head over all classes train. Every step first computes the query features with the
frozen :class:`~edgecl.efficiency.prompts.QueryModel` under ``no_grad`` (the ``selection``
phase), then runs the prompted ViT (the ``forward`` phase). A subclass only says which prompts
a batch gets (:meth:`PromptMethod.prompt_batch`); every prompted ViT call goes through
:meth:`PromptMethod.vit_hooks`, the single place that builds the :class:`ViTHooks`.

Common options (``PromptParams``):

- ``tuning``: ``prompt`` (tokens inserted after CLS, before block 0) or ``prefix`` (per-layer
  extra keys/values; each prompt split into a key half and a value half);
- ``prompt_layers``: where prompts go (``[0]`` for prompt tuning);
- ``prefix_mode``: ``per_kv`` (the configured length is the number of key *and* of value
  tokens, as dualprompt-pytorch stores them) or ``split`` (a prompt of that length is split in
  halves, as CODA-Prompt does);
- ``prompt_pos_embed``: ``cls`` adds the CLS token's (frozen) position embedding to prompt
  tokens, which is what l2p-pytorch's resized position table amounts to; ``none`` adds nothing;
- ``head_input``: ``cls``, ``prompt_mean`` (mean of the outputs at the prompt positions) or
  ``cls_prompt_mean`` (mean over CLS and prompts);
- ``train_mask``: during training, logits outside the current task are set to -inf
  (``false``: no mask at all, as the reference codes do without it).

The head is initialised as timm does (trunc-normal σ = 0.02, zero bias), as in l2p-pytorch and
dualprompt-pytorch (CODA-Prompt's reference keeps ``nn.Linear``'s default).

Blocks before the first prefix layer cannot influence any gradient, so they run under
``no_grad`` (``ViTHooks.frozen_until``): the same result with fewer saved activations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import model_validator
from torch import Tensor, nn

from edgecl.backbones.vit import VisionTransformer, ViTHooks, ViTOutput
from edgecl.efficiency.prompts import Prefix, QueryModel, Tuning
from edgecl.efficiency.query_cache import QueryCache
from edgecl.methods.base import Batch, BenchmarkInfo, Method, MethodParams, StepStats, mask_logits

HeadInput = Literal["cls", "prompt_mean", "cls_prompt_mean"]
PrefixMode = Literal["per_kv", "split"]
PosEmbed = Literal["cls", "none"]


class PromptParams(MethodParams):
    tuning: Tuning = "prefix"
    prompt_layers: list[int] = [0]
    prefix_mode: PrefixMode = "split"
    prompt_pos_embed: PosEmbed = "none"
    head_input: HeadInput = "cls"
    train_mask: bool = True
    # evaluation: memoize each test image's query (the query model is frozen), so after the
    # first evaluation an image costs a hash instead of a query pass (efficiency/query_cache.py)
    cache_eval_queries: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> PromptParams:
        layers = self.prompt_layers
        if not layers or min(layers) < 0 or len(set(layers)) != len(layers):
            raise ValueError(f"prompt_layers must be distinct block indices, got {layers}")
        if self.tuning == "prompt" and layers != [0]:
            raise ValueError(
                "tuning=prompt inserts tokens before block 0 only, so prompt_layers must be "
                "[0] (mid-network token insertion is not a ViTHooks feature)"
            )
        if self.head_input != "cls" and self.tuning != "prompt":
            raise ValueError(f"head_input={self.head_input} needs prompt tokens (tuning=prompt)")
        return self


@dataclass
class PromptBatch:
    """What a batch gets: prompt tokens and/or per-layer prefixes, plus an auxiliary loss."""

    prompts: Tensor | None  # (B, N, D) tokens inserted after CLS, or None
    prefix: Prefix
    aux_loss: Tensor  # added to the cross-entropy (e.g. -λ · pull similarity)
    stats: dict[str, float] = field(default_factory=dict)


class PromptMethod(Method):
    """Frozen ViT + trainable prompts + linear head over all classes."""

    params: PromptParams

    def setup(self, backbone: nn.Module, info: BenchmarkInfo) -> None:
        super().setup(backbone, info)
        if not isinstance(backbone, VisionTransformer):
            raise TypeError(
                f"{self.name} needs the edgecl ViT (backbone.name: vit_*), "
                f"got {type(backbone).__name__}"
            )
        if max(self.params.prompt_layers) >= backbone.depth:
            raise ValueError(
                f"{self.name}: prompt_layers {self.params.prompt_layers} exceed the ViT's "
                f"{backbone.depth} blocks"
            )
        self.vit = backbone.to(self.device).requires_grad_(False).eval()
        self.modules["backbone"] = self.vit
        self.query_model = self.build_query_model()
        self.eval_queries = QueryCache()
        self.head = nn.Linear(self.vit.embed_dim, info.num_classes).to(self.device)
        nn.init.trunc_normal_(self.head.weight, std=0.02, generator=self.rng)
        nn.init.zeros_(self.head.bias)
        self.modules["head"] = self.head
        self.build_prompts()

    def build_query_model(self) -> QueryModel:
        """The frozen selection model; by default it shares the update model's weights."""
        return QueryModel(self.vit)

    def build_prompts(self) -> None:
        raise NotImplementedError

    def prompt_batch(self, query: Tensor, training: bool) -> PromptBatch:
        raise NotImplementedError

    # ---- the prompted forward ------------------------------------------------------------
    def vit_hooks(self, prompts: Tensor | None, prefix: Prefix, training: bool) -> ViTHooks:
        """The hooks of every prompted ViT call (the place to add merging / layer skipping)."""
        frozen_until = min(prefix) if prefix and prompts is None else 0
        return ViTHooks(prompts=prompts, prefix=prefix, frozen_until=frozen_until)

    def query(self, x: Tensor) -> Tensor:
        return self.query_model(x)

    def training_query(self, batch: Batch) -> Tensor:
        """The query of a training batch (a method may serve it from a per-sample cache)."""
        return self.query(batch.x)

    def head_features(self, out: ViTOutput) -> Tensor:
        if self.params.head_input == "cls":
            return out.cls
        if self.params.head_input == "prompt_mean":
            return out.prompt_tokens.mean(dim=1)
        return out.tokens[:, : 1 + out.n_prompts].mean(dim=1)

    def prompted_hooks(self, query: Tensor, training: bool) -> tuple[ViTHooks, PromptBatch]:
        """The prompts ``query`` selects, as the hooks of the prompted ViT pass."""
        batch = self.prompt_batch(query, training)
        prompts = batch.prompts
        if prompts is not None and self.params.prompt_pos_embed == "cls":
            prompts = prompts + self.vit.pos_embed[:, :1]
        return self.vit_hooks(prompts, batch.prefix, training), batch

    def forward_logits(
        self, x: Tensor, query: Tensor, training: bool
    ) -> tuple[Tensor, PromptBatch]:
        hooks, batch = self.prompted_hooks(query, training)
        out = self.vit.forward_features(x, hooks)
        return self.head(self.head_features(out)), batch

    def count_flops(self, n: int, training: bool) -> None:
        """Book FLOPs of custom tensor work (forward, and ~2x for its backward when training)."""
        if training:
            self.meter.add_flops("forward", n)
            self.meter.add_flops("backward", 2 * n)
        else:
            self.meter.add_flops("eval", n)

    # ---- the contract --------------------------------------------------------------------
    def train_logits(self, logits: Tensor) -> Tensor:
        return mask_logits(logits, self.current_classes) if self.params.train_mask else logits

    def observe(self, batch: Batch) -> StepStats:
        with self.meter.phase("selection"):
            query = self.training_query(batch)
        with self.meter.phase("forward"):
            logits, prompted = self.forward_logits(batch.x, query, training=True)
            loss = F.cross_entropy(self.train_logits(logits), batch.y) + prompted.aux_loss
        self.optimize(loss)
        return StepStats(float(loss.detach()), len(batch.y), prompted.stats)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "eval_queries": self.eval_queries.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.eval_queries.load_state_dict(state.get("eval_queries", {}))

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        # At evaluation the query pass stays in the runner's ``eval`` phase.
        tracing = torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
        query = (self.eval_queries.features(x, self.query)
                 if self.params.cache_eval_queries and not tracing else self.query(x))
        logits, _ = self.forward_logits(x, query, training=False)
        return logits
