"""CPS-Prompt (Lim, Lee, Kim; CVPR 2026): CODA-Prompt made cheap to train on the edge.

Two parts over CODA-Prompt's prompt components (reference: ``laymond1/cps-prompt``, built on
Mammoth; read to understand, written here anew), each a flag for ablations:

- **Critical Patch Sampling** (``critical_patches``): the prompt-update forward runs on
  ``int(196 · (1 − reduction_ratio))`` patch tokens plus CLS, drawn by
  :mod:`edgecl.efficiency.patch_sampling` from the significance of the prompt-free query
  pass's last block (CLS attention × value norm, softmax at ``temperature``). The query pass
  itself and inference stay dense.
- **Decoupled Prompt and Classifier Training** (``decoupled``): in each task, epochs
  ``< int(epochs · phase_ratio)`` train on the sparse forward; the rest train the head alone
  on frozen dense prompted features (query and prompted pass under ``no_grad``, so no
  backward through the ViT).

Defaults are the reference's CIFAR-100 command (README): Adam lr 1e-3, batch 16 (the
config's), ``temperature`` 0.1 and ``phase_ratio`` 0.4 (the code's argparse defaults are 1.0
and 0.8), ``reduction_ratio`` 0.5, CODA's pool of 100 components of length 8 at blocks 0-4,
``ortho_mu`` 0, gradient clipping at 1.0 (``optim.grad_clip``).

Choices, following the code where it and the paper differ:

- In the prompt phase the head trains too (the reference's optimizer holds prompts and head,
  and the sparse forward's loss reaches both); in the head phase only the head has gradients.
- ``phase_split: epochs`` is the reference's rule. With 1 epoch per task it leaves no prompt
  epoch (``int(1 · 0.4) = 0``), so ``phase_split: steps`` (a named deviation for short
  profiles) applies the ratio to the task's steps instead.
- ``cache_head_features`` (off, as the reference): keep each training image's dense feature
  from the first head epoch and reuse it in later head epochs. Exact without augmentation;
  with augmentation the later epochs see the first head epoch's view.
- The significance is computed from the query pass's own tokens (no prompts), as the
  reference's query forward; sampling uses the method's generator, so resume is exact.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from edgecl.backbones.vit import ViTHooks
from edgecl.efficiency.patch_sampling import Sampling, keep_tokens, kept_patches, sample_patches
from edgecl.methods.base import Batch, BenchmarkInfo, StepStats, TaskInfo
from edgecl.methods.coda_prompt import CodaPrompt, CodaPromptParams


class CpsPromptParams(CodaPromptParams):
    critical_patches: bool = True
    reduction_ratio: float = Field(0.5, ge=0.0, lt=1.0)
    sampling: Sampling = "critical_score"
    temperature: float = Field(0.1, gt=0.0)
    decoupled: bool = True
    phase_ratio: float = Field(0.4, ge=0.0, le=1.0)
    phase_split: Literal["epochs", "steps"] = "epochs"
    cache_head_features: bool = False


class CpsPrompt(CodaPrompt):
    name = "cps_prompt"
    Params = CpsPromptParams
    params: CpsPromptParams

    def setup(self, backbone, info: BenchmarkInfo) -> None:
        super().setup(backbone, info)
        self.n_patches = self.vit.cfg.num_patches
        self.keep = kept_patches(self.n_patches, self.params.reduction_ratio)
        # steps done in the current task; not ``task_step``, which REP's mixin keeps for its
        # own clock (cps_prompt_rep composes both)
        self.phase_step = 0
        self.head_features_cache: dict[int, Tensor] = {}

    def begin_task(self, task: TaskInfo) -> None:
        super().begin_task(task)
        self.phase_step = 0
        self.head_features_cache.clear()

    # ---- the two phases ------------------------------------------------------------------
    def prompt_phase(self, batch: Batch) -> bool:
        p = self.params
        if not p.decoupled:
            return True
        if p.phase_split == "epochs":
            return batch.epoch < int(self.info.epochs * p.phase_ratio)
        n_steps = self.info.steps_per_task[self.task_index]
        return self.phase_step < int(n_steps * p.phase_ratio)

    def observe(self, batch: Batch) -> StepStats:
        prompt_phase = self.prompt_phase(batch)
        self.phase_step += 1
        if prompt_phase:
            return self.observe_prompts(batch)
        return self.observe_head(batch)

    def observe_prompts(self, batch: Batch) -> StepStats:
        with self.meter.phase("selection"):
            query, significance = self.query_with_significance(batch)
        with self.meter.phase("forward"):
            logits, prompted = self.sparse_logits(batch.x, query, significance)
            loss = F.cross_entropy(self.train_logits(logits), batch.y) + prompted.aux_loss
        self.optimize(loss)
        return StepStats(float(loss.detach()), len(batch.y),
                         {**prompted.stats, "prompt_phase": 1.0})

    def observe_head(self, batch: Batch) -> StepStats:
        with self.meter.phase("forward"):
            features = self.dense_features(batch)
            logits = self.head(features)
            loss = F.cross_entropy(self.train_logits(logits), batch.y)
        self.optimize(loss)
        return StepStats(float(loss.detach()), len(batch.y), {"prompt_phase": 0.0})

    # ---- forwards ------------------------------------------------------------------------
    def needs_significance(self) -> bool:
        return self.params.critical_patches and self.params.sampling == "critical_score"

    @torch.no_grad()
    def query_with_significance(self, batch: Batch) -> tuple[Tensor, Tensor | None]:
        """The query and (for critical-score sampling) the (B, n_patches) significance."""
        if not self.needs_significance():
            return self.training_query(batch), None
        out = self.vit.forward_features(batch.x,
                                        ViTHooks(significance_layer=self.vit.depth - 1))
        return out.cls, out.significance

    def sparse_logits(self, x: Tensor, query: Tensor, significance: Tensor | None):
        hooks, prompted = self.prompted_hooks(query, training=True)
        with torch.set_grad_enabled(torch.is_grad_enabled() and hooks.frozen_until <= 0):
            tokens = self.vit.embed(x)
        if self.params.critical_patches:
            idx = sample_patches(significance, self.n_patches, self.keep, self.params.sampling,
                                 self.params.temperature, self.rng)
            tokens = keep_tokens(tokens, idx)
        out = self.vit.forward_from(tokens, 0, hooks)
        return self.head(self.head_features(out)), prompted

    @torch.no_grad()
    def dense_features(self, batch: Batch) -> Tensor:
        """Head-phase inputs: the dense prompted forward, no gradient (optionally cached)."""
        cache = self.head_features_cache if self.params.cache_head_features else None
        keys = batch.index.tolist() if cache is not None and batch.index is not None else None
        if keys is not None and all(k in cache for k in keys):
            return torch.stack([cache[k] for k in keys]).to(self.device)
        hooks, _ = self.prompted_hooks(self.training_query(batch), training=False)
        out = self.vit.forward_features(batch.x, hooks)
        features = self.head_features(out)
        if keys is not None:
            for k, f in zip(keys, features, strict=True):
                cache[k] = f.detach().clone()
        return features

    # ---- memory and state ----------------------------------------------------------------
    def buffer_bytes(self) -> int:
        cached = sum(f.numel() * f.element_size() for f in self.head_features_cache.values())
        return super().buffer_bytes() + cached

    def extra_state(self) -> dict[str, Any]:
        state = {**super().extra_state(), "task_step": self.phase_step}
        if self.head_features_cache:
            keys = sorted(self.head_features_cache)
            state["head_cache_keys"] = torch.tensor(keys, dtype=torch.long)
            state["head_cache"] = torch.stack([self.head_features_cache[k] for k in keys])
        return state

    def load_extra_state(self, state: dict[str, Any]) -> None:
        super().load_extra_state(state)
        self.phase_step = state.get("task_step", 0)
        self.head_features_cache = {}
        if "head_cache" in state:
            self.head_features_cache = dict(zip(state["head_cache_keys"].tolist(),
                                                state["head_cache"], strict=True))
