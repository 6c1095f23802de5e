"""LwF: learning without forgetting (Li & Hoiem, 2016), class-incremental form.

A frozen copy of the network from the end of the previous task provides soft targets on the
current batch for the classes of earlier tasks:

    L = CE(f(x), y) + alpha * (-mean_b sum_c softmax(f_old(x)_c / T) log softmax(f(x)_c / T))

with the sum over old classes only (those seen before the current task) and T = 2. This is
mammoth's ``models/lwf.py`` (its ``smooth(softmax(z), T)`` equals ``softmax(z / T)``; no T^2
factor); alpha = 0.5 is mammoth's default. The CE is over the classes seen so far.

Deviations: mammoth precomputes the old model's logits once per task on the *un-augmented*
training images and first warms up the new classes' head rows for a full task's epochs; here
the method has no data at ``begin_task``, so the old model runs on the same augmented batch
(one no-grad forward per step, counted as training FLOPs; the usual LwF formulation) and
there is no head warm-up. The old model's parameters count in the parameter memory.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from edgecl.methods.base import Batch, ClassifierMethod, MethodParams, StepStats, TaskInfo


class LwFParams(MethodParams):
    alpha: float = Field(0.5, ge=0.0)
    temperature: float = Field(2.0, gt=0.0)


def soft_target_loss(logits: Tensor, old_logits: Tensor, temperature: float) -> Tensor:
    """``-mean_b sum_c softmax(old / T)_c * log softmax(new / T)_c``."""
    targets = F.softmax(old_logits / temperature, dim=1)
    return -(targets * F.log_softmax(logits / temperature, dim=1)).sum(dim=1).mean()


class LwF(ClassifierMethod):
    name = "lwf"
    Params = LwFParams
    params: LwFParams
    old_classes = 0  # classes the old model distils (those of earlier tasks)

    @property
    def old_net(self) -> nn.Module | None:
        # nn.ModuleDict has no .get()
        return self.modules["old_net"] if "old_net" in self.modules else None  # noqa: SIM401

    def _snapshot(self) -> None:
        old = copy.deepcopy(self.net)
        for p in old.parameters():
            p.requires_grad_(False)
        self.modules["old_net"] = old.eval()

    def observe(self, batch: Batch) -> StepStats:
        self.net.train()
        with self.meter.phase("forward"):
            loss, logits = self.forward_loss(batch)
            extra = {"ce": float(loss.detach())}
            old = self.old_net
            if old is not None and self.old_classes > 0 and self.params.alpha:
                with torch.no_grad():
                    old.eval()
                    targets = old(batch.x)[:, : self.old_classes]
                distil = soft_target_loss(
                    logits[:, : self.old_classes], targets, self.params.temperature
                )
                extra["distillation"] = float(distil.detach())
                loss = loss + self.params.alpha * distil
        self.optimize(loss)
        return StepStats(float(loss.detach()), len(batch.y), extra)

    def end_task(self, task: TaskInfo) -> None:
        self._snapshot()
        self.old_classes = self.seen_classes

    def extra_state(self) -> dict[str, Any]:
        return {"old_classes": self.old_classes}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.old_classes = state["old_classes"]
        if self.old_classes > 0 and self.old_net is None:
            self._snapshot()  # the module the saved state dict fills
