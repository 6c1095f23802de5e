"""CPS-Prompt with REP (registry: ``cps_prompt_rep``): both papers' savings on CODA-Prompt.

REP's swift selection and ALD cut the query pass and the depth; CPS cuts the patch tokens of
the prompt-update forward and, with DPCT, back-propagation in the head phase. The class is
:class:`~edgecl.methods.rep.REPMixin` over :class:`~edgecl.methods.cps_prompt.CpsPrompt`, so
every flag of both keeps its meaning (docs/methods/cps_prompt.md, "Combined with REP"):

- ``swift_selection``: one pass of the selection model (by default the update model's own
  weights at 112 px) gives both the query and CPS's patch significance (its last block's CLS
  attention x value norm). Its coarse significance map (7 x 7 at 112 px) is mapped to the
  update model's grid (14 x 14) by :func:`~edgecl.efficiency.patch_sampling.
  resize_significance` (``significance_resize``: nearest, mass-preserving). Off: CPS's own
  dense pass of the update model at full resolution.
- ``atom`` (on: with it the sparse step measured lower peak memory, FLOPs and time on
  ViT-Ti, at no measured accuracy cost) and ``ald`` (off: on the 50/50 profile of
  benchmarks/prompt_efficiency.py it cost the combination 0.8 points at phase_ratio 0.1 and
  2.6 at 0.4 for about 0.05x of its time; docs/methods/cps_prompt.md): act on the sparse
  prompt-phase forward (REP's ``vit_hooks``); the head phase's dense features stay
  un-merged and un-dropped, as at inference. ALD's clock counts every training step,
  head-phase steps included; its τ counts AToM's merges only, not the patches CPS left out
  before block 0.
- ``cache_queries`` (off: one epoch per task never hits it, and protocols augment): with
  critical-score sampling the cache holds each image's query *and*
  coarse significance, both from the un-augmented view; that is only right when the
  training inputs are not augmented (the significance must describe the patches the sparse
  forward samples from), so it is refused otherwise.
- ``decoupled``: DPCT's head phase on dense prompted features, as CPS-Prompt (queries from
  the selection model, through the cache when it is on).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn

from edgecl.backbones.vit import ViTHooks
from edgecl.efficiency.feature_cache import transform_is_deterministic
from edgecl.efficiency.patch_sampling import SignificanceResize, resize_significance
from edgecl.errors import ConfigError
from edgecl.methods.base import Batch, BenchmarkInfo
from edgecl.methods.cps_prompt import CpsPrompt, CpsPromptParams
from edgecl.methods.rep import REPMixin, REPParams, resize_input


class CpsPromptREPParams(REPParams, CpsPromptParams):
    """CPS-Prompt + REP; REP's CODA/DualPrompt CIFAR values (r_max 6, τ 12)."""

    r_max: int = Field(6, ge=0)
    ald_tau: int = Field(12, ge=0)
    # per-sample query + significance of the un-augmented view; pays from the second epoch
    cache_queries: bool = False
    atom: bool = True  # measured on ViT-Ti: lower peak memory, FLOPs and step time
    ald: bool = False  # measured on the 50/50 profile: -0.8 to -2.6 points for little time
    significance_resize: SignificanceResize = "nearest"


class CpsPromptREP(REPMixin, CpsPrompt):
    name = "cps_prompt_rep"
    Params = CpsPromptREPParams
    params: CpsPromptREPParams

    def setup(self, backbone: nn.Module, info: BenchmarkInfo) -> None:
        tf = info.train_transform
        if (self.params.cache_queries and self.needs_significance() and tf is not None
                and not transform_is_deterministic(tf)):
            raise ConfigError(
                f"{self.name}: cache_queries with critical_score sampling caches each "
                "image's patch significance, which needs un-augmented training inputs (the "
                f"training transform is {type(tf).__name__}). Set cache_queries: false or "
                "train.augment: false."
            )
        super().setup(backbone, info)

    # ---- the selection pass: query and significance ------------------------------------
    @torch.no_grad()
    def selector_pass(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Query (B, D) and significance on the selector's patch grid, in one pass."""
        vit = self.query_model.vit
        out = vit.forward_features(resize_input(x, vit.cfg.img_size),
                                   ViTHooks(significance_layer=vit.depth - 1))
        assert out.significance is not None
        return out.cls, out.significance

    def raw_selection(self, raw: Tensor) -> Tensor:
        """Cache rows for un-augmented uint8 images: ``[query ‖ coarse significance]``."""
        x = self.query_transform(raw).to(self.device)
        return torch.cat(self.selector_pass(x), dim=1)

    def selection(self, batch: Batch) -> tuple[Tensor, Tensor]:
        if not self.params.cache_queries:
            return self.selector_pass(batch.x)
        if batch.raw is None or batch.index is None:
            raise ValueError(f"{self.name}: cache_queries needs batch.raw and batch.index")
        rows = self.query_cache.fetch(batch.index, batch.raw, self.raw_selection)
        rows = rows.to(self.device)
        d = self.query_model.feature_dim
        return rows[:, :d], rows[:, d:]

    def training_query(self, batch: Batch) -> Tensor:
        if self.params.cache_queries and self.needs_significance():
            return self.selection(batch)[0]  # the cache's rows hold the significance too
        return super().training_query(batch)

    @torch.no_grad()
    def query_with_significance(self, batch: Batch) -> tuple[Tensor, Tensor | None]:
        if not self.needs_significance():
            return self.training_query(batch), None
        query, coarse = self.selection(batch)
        return query, resize_significance(coarse, self.n_patches,
                                          self.params.significance_resize)
