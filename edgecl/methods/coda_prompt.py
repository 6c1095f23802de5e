"""CODA-Prompt (Smith et al., CVPR 2023): attention-weighted prompt components.

Each prompted layer ``l`` has components ``P_m`` (``prompt_length`` tokens), keys ``K_m`` and
attention vectors ``A_m``. An input's prompt is ``Σ_m α_m P_m`` with
``α_m = cos(q ⊙ A_m, K_m)`` (``q``: the frozen query feature), used as prefix keys/values.
The ``pool_size`` components are split evenly over the tasks: task ``t`` adds a new slice,
initialised orthonormal to the span of the old slices (Gram-Schmidt), trains only that slice
(and the head) and keeps every earlier slice frozen. Inference uses all slices learned so far.

Choices (reference: GT-RIPL/CODA-Prompt; spec: specs/prompting.md):

- ``prefix_mode`` = ``split``: a prompt of length 8 gives 4 key and 4 value tokens, as in the
  reference.
- Slices are created when their task begins (the reference allocates all up front and
  re-initialises the new slice at each task; values are the same, memory grows per task).
- Gram-Schmidt works against an orthonormal basis of the old slices' span, so new components
  are orthogonal to trained (no longer orthogonal) old ones too; see
  :func:`edgecl.efficiency.prompts.gram_schmidt_new`.
- ``ortho_mu`` (orthogonality penalty) = 0, the reference's current default.
- The optimizer must be re-created each task (its trainable slice changes); the protocol's
  cosine schedule is per step over the task (``optim.lr_schedule: cosine``), the
  reference's is per epoch.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field
from torch import Tensor

from edgecl.efficiency.prompts import CodaComponents, layer_inputs, stored_length
from edgecl.methods.base import BenchmarkInfo, TaskInfo
from edgecl.methods.prompt_base import PromptBatch, PromptMethod, PromptParams


class CodaPromptParams(PromptParams):
    pool_size: int = Field(100, ge=1)
    prompt_length: int = Field(8, ge=1)
    ortho_mu: float = Field(0.0, ge=0.0)
    prompt_layers: list[int] = [0, 1, 2, 3, 4]
    # tuning prefix, prefix_mode split and head_input cls: PromptParams' defaults


class CodaPrompt(PromptMethod):
    name = "coda_prompt"
    Params = CodaPromptParams
    params: CodaPromptParams

    def setup(self, backbone, info: BenchmarkInfo) -> None:
        if not self.optim_cfg.reset_each_task:
            raise ValueError(
                "coda_prompt trains a new component slice per task, so its optimizer must be "
                "re-created each task: set optim.reset_each_task: true"
            )
        super().setup(backbone, info)

    def build_prompts(self) -> None:
        p = self.params
        per_task = p.pool_size // self.info.n_tasks
        if per_task < 1:
            raise ValueError(f"pool_size={p.pool_size} gives no component to each of "
                             f"{self.info.n_tasks} tasks")
        self.components = CodaComponents(
            len(p.prompt_layers),
            per_task,
            stored_length(p.prompt_length, p.tuning, p.prefix_mode),
            self.vit.embed_dim,
            self.query_model.feature_dim,
        )
        self.modules["components"] = self.components

    def begin_task(self, task: TaskInfo) -> None:
        while len(self.components) <= task.index:
            self.components.add_slice(self.rng, self.device)
        self.components.train_only_last()
        super().begin_task(task)

    def prompt_batch(self, query: Tensor, training: bool) -> PromptBatch:
        p = self.params
        self.count_flops(self.components.flops(query.shape[0]), training)
        prompts, prefix = layer_inputs(self.components(query), p.prompt_layers, p.tuning)
        aux = query.new_zeros(())
        if training and p.ortho_mu > 0:
            aux = p.ortho_mu * self.components.ortho_penalty()
        return PromptBatch(prompts, prefix, aux)

    def extra_state(self) -> dict[str, Any]:
        return {"slices": len(self.components)}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        while len(self.components) < state["slices"]:
            self.components.add_slice(None, self.device)
        self.components.train_only_last()
