"""DER++: dark experience replay (Buzzega et al., NeurIPS 2020).

The reservoir buffer (:class:`~edgecl.methods.rehearsal.RehearsalMethod`) keeps raw uint8
images, their labels and the logits the network produced for them *when they were
inserted* (the training forward pass of that step, so no extra forward is needed). Each step

    L = CE(f(x), y) + alpha * MSE(f(x'), z') + beta * CE(f(x''), y'')

with ``(x', z')`` and ``(x'', y'')`` two independent draws from the buffer, augmented on
retrieval. Defaults follow the spec / SparCL script for Split CIFAR-10 with buffer 500:
alpha = 0.1, beta = 0.5, buffer batch 32.

Choices (reference: mammoth ``models/derpp.py``):

- the MSE is over all ``num_classes`` logits, as stored (mammoth);
- both cross-entropies are over the classes seen so far (edgecl's class-IL convention: future
  classes are masked); mammoth uses every output, which ``ce_classes="all"`` selects.
  ``current_task_logit_mask=True`` restricts the current batch's CE to the current task's
  classes (SparCL's ``--use_cl_mask``);
- replay starts as soon as the buffer is non-empty, i.e. in the first task (mammoth);
  ``replay_in_first_task=False`` waits for task 1 (the SparCL reference, ``t > 0``);
- the three terms are back-propagated together (one backward), as mammoth's current
  ``models/derpp.py``; older mammoth versions called backward per term, which frees each
  graph earlier (same gradient, lower peak activation memory);
- ``alpha = 0`` skips the MSE forward and stores no logits (ER with a separate replay
  forward, as in the SparCL reference's ER).
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from edgecl.methods.base import Batch, StepStats, mask_logits
from edgecl.methods.rehearsal import RehearsalMethod, RehearsalParams


class DERppParams(RehearsalParams):
    alpha: float = Field(0.1, ge=0.0)  # weight of the logit MSE on x'
    beta: float = Field(0.5, ge=0.0)  # weight of the label CE on x''
    replay_batch_size: int = Field(32, ge=1)  # size of each of the two buffer draws
    replay_in_first_task: bool = True
    current_task_logit_mask: bool = False
    # classes the two cross-entropies run over: those seen so far, or every output (mammoth)
    ce_classes: Literal["seen", "all"] = "seen"


class DERpp(RehearsalMethod):
    name = "derpp"
    Params = DERppParams
    params: DERppParams

    @property
    def stores_logits(self) -> bool:
        return self.params.alpha > 0

    # ---- losses --------------------------------------------------------------------------
    def classification_loss(self, logits: Tensor, y: Tensor) -> Tensor:
        """CE over the seen classes, or over every output with ``ce_classes="all"``."""
        if self.params.ce_classes == "all":
            return F.cross_entropy(logits, y)
        return super().classification_loss(logits, y)

    def forward_loss(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """The current batch's CE (over the current task's classes with the task mask)."""
        if not self.params.current_task_logit_mask:
            return super().forward_loss(batch)
        logits = self.net(batch.x)
        return F.cross_entropy(mask_logits(logits, self.current_classes), batch.y), logits

    def replays(self) -> bool:
        if len(self.buffer) == 0:
            return False
        return self.params.replay_in_first_task or self.task_index > 0

    def replay_loss(self, terms: dict[str, float]) -> tuple[Tensor | None, int]:
        """alpha * MSE on logits + beta * CE on labels (two independent draws)."""
        if not self.replays():
            return None, 0
        total: Tensor | None = None
        n = 0
        if self.params.alpha > 0:
            first = self.draw(self.params.replay_batch_size)
            with self.meter.phase("forward"):
                mse = F.mse_loss(self.net(first.x), first.logits)
            terms["mse"] = float(mse.detach())
            total, n = self.params.alpha * mse, n + len(first)
        if self.params.beta > 0:
            second = self.draw(self.params.replay_batch_size)
            with self.meter.phase("forward"):
                ce = self.classification_loss(self.net(second.x), second.y)
            terms["buffer_ce"] = float(ce.detach())
            term = self.params.beta * ce
            total, n = (term if total is None else total + term), n + len(second)
        return total, n

    # ---- the step ------------------------------------------------------------------------
    def observe(self, batch: Batch) -> StepStats:
        self.net.train()
        with self.meter.phase("forward"):
            loss, logits = self.forward_loss(batch)
        terms = {"ce": float(loss.detach())}
        self.after_forward(batch, logits.detach())
        replay, n_replay = self.replay_loss(terms)
        if replay is not None:
            loss = loss + replay
        self.optimize(loss)
        self.remember(batch, logits.detach() if self.stores_logits else None)
        return StepStats(float(loss.detach()), len(batch.y) + n_replay, terms)

    def after_forward(self, batch: Batch, logits: Tensor) -> None:
        """Hook with the current batch's logits (before the update); SparCL's DDR uses it."""
