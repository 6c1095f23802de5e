"""Online EWC (Schwarz et al., 2018): a running diagonal Fisher anchors important weights.

At the end of every task the diagonal empirical Fisher ``F_new`` of the task is computed from
squared per-example gradients of ``log p(y|x)`` at the final weights, and folded into a
running estimate ``F <- gamma * F + F_new``; the weights are remembered as the anchor
``theta*``. Later tasks add the penalty

    penalty_form="reference":  lambda * sum_i F_i (theta_i - theta*_i)^2     (mammoth ewc_on)
    penalty_form="half":       lambda / 2 * sum_i F_i (theta_i - theta*_i)^2  (the spec's / EWC
                                                                              paper's form)

Defaults are mammoth's for Split CIFAR-10 (``e_lambda`` 10, ``gamma`` 1). Reference details
kept: per-example gradients (batch size 1), each squared gradient weighted by ``p(y|x)``
(``fisher_weight_by_prob``), the sum divided by the number of examples, training augmentation
on the Fisher inputs, all trainable parameters (backbone, BatchNorm affine, head).

Deviations: the method sees its data only through ``observe``, so the examples of the task
are kept (raw uint8, first epoch, reservoir of ``fisher_samples``; ``None`` keeps the whole
task, as mammoth's pass over the train loader) and counted in the buffer bytes until the next
task starts. The Fisher pass runs BatchNorm in eval mode (mammoth leaves the network in train
mode, which with batch size 1 normalises by single-example statistics and moves the running
statistics); ``fisher_bn_train_mode=True`` restores that. The log-probability is over the
classes seen so far (the training loss's classes). The Fisher pass is training cost: its
forward and backward run in the meter's forward/backward phases and are counted.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from edgecl.efficiency.replay_buffer import ReservoirBuffer
from edgecl.methods.base import (
    Batch,
    ClassifierMethod,
    MethodParams,
    StepStats,
    TaskInfo,
    mask_logits,
)

# Elementwise FLOPs per parameter of the penalty: forward (sub, square, mul, sum) and its
# gradient (sub, 2 multiplies); booked with the meter because elementwise ops are not hooked.
PENALTY_FORWARD_FLOPS = 4
PENALTY_BACKWARD_FLOPS = 3


class OnlineEWCParams(MethodParams):
    ewc_lambda: float = Field(10.0, ge=0.0)
    gamma: float = Field(1.0, ge=0.0, le=1.0)
    penalty_form: Literal["reference", "half"] = "reference"
    fisher_samples: int | None = Field(None, ge=1)
    fisher_weight_by_prob: bool = True
    fisher_bn_train_mode: bool = False


def ewc_penalty(
    params: dict[str, Tensor],
    anchor: dict[str, Tensor],
    fisher: dict[str, Tensor],
    coefficient: float,
) -> Tensor:
    """``coefficient * sum_i F_i (theta_i - theta*_i)^2`` over the named tensors."""
    terms = [(fisher[n] * (p - anchor[n]) ** 2).sum() for n, p in params.items()]
    return coefficient * torch.stack(terms).sum()


def online_fisher_update(
    running: dict[str, Tensor] | None, new: dict[str, Tensor], gamma: float
) -> dict[str, Tensor]:
    """``F <- gamma * F + F_new`` (``F_new`` alone for the first task)."""
    if running is None:
        return {n: f.clone() for n, f in new.items()}
    return {n: gamma * running[n] + new[n] for n in new}


class OnlineEWC(ClassifierMethod):
    name = "ewc"
    Params = OnlineEWCParams
    params: OnlineEWCParams

    # set at the end of the first task / the start of every task
    fisher: dict[str, Tensor] | None = None
    anchor: dict[str, Tensor] | None = None
    cache: ReservoirBuffer | None = None

    @property
    def coefficient(self) -> float:
        lam = self.params.ewc_lambda
        return lam if self.params.penalty_form == "reference" else lam / 2

    def named_trainable(self) -> dict[str, Tensor]:
        return {n: p for n, p in self.net.named_parameters() if p.requires_grad}

    def begin_task(self, task: TaskInfo) -> None:
        super().begin_task(task)
        capacity = min(self.params.fisher_samples or task.n_train, task.n_train)
        self.cache = ReservoirBuffer(max(1, capacity), self.rng)

    def buffer_bytes(self) -> int:
        stored = [*(self.fisher or {}).values(), *(self.anchor or {}).values()]
        cache = self.cache.nbytes() if self.cache is not None else 0
        return cache + sum(t.numel() * t.element_size() for t in stored)

    # ---- training ------------------------------------------------------------------------
    def penalty(self) -> Tensor | None:
        if self.fisher is None or self.anchor is None or not self.params.ewc_lambda:
            return None
        params = self.named_trainable()
        n = sum(p.numel() for p in params.values())
        self.meter.add_flops("forward", PENALTY_FORWARD_FLOPS * n)
        self.meter.add_flops("backward", PENALTY_BACKWARD_FLOPS * n)
        return ewc_penalty(params, self.anchor, self.fisher, self.coefficient)

    def observe(self, batch: Batch) -> StepStats:
        self.net.train()
        with self.meter.phase("forward"):
            loss, _ = self.forward_loss(batch)
            extra = {"ce": float(loss.detach())}
            penalty = self.penalty()
            if penalty is not None:
                extra["penalty"] = float(penalty.detach())
                loss = loss + penalty
        self.optimize(loss)
        if batch.epoch == 0 and self.cache is not None:
            self.cache.add(batch.raw, batch.y, task_id=batch.task_id)
        return StepStats(float(loss.detach()), len(batch.y), extra)

    # ---- consolidation -------------------------------------------------------------------
    def end_task(self, task: TaskInfo) -> None:
        new = self.task_fisher()
        self.fisher = online_fisher_update(self.fisher, new, self.params.gamma)
        self.anchor = {n: p.detach().clone() for n, p in self.named_trainable().items()}

    def task_fisher(self) -> dict[str, Tensor]:
        """Mean over the cached examples of ``p(y|x) * (d log p(y|x) / d theta)^2``."""
        params = self.named_trainable()
        fisher = {n: torch.zeros_like(p) for n, p in params.items()}
        count = len(self.cache) if self.cache is not None else 0
        if count == 0:
            return fisher
        was_training = self.net.training
        self.net.train(self.params.fisher_bn_train_mode)
        for i in range(count):
            self._accumulate_example(i, params, fisher)
        self.net.train(was_training)
        return {n: f / count for n, f in fisher.items()}

    def _accumulate_example(
        self, i: int, params: dict[str, Tensor], fisher: dict[str, Tensor]
    ) -> None:
        assert self.cache is not None
        with self.meter.phase("data"):
            example = self.cache.take(slice(i, i + 1), self.info.train_transform, self.device)
        with self.meter.phase("forward"):
            log_probs = F.log_softmax(mask_logits(self.net(example.x), self.seen_classes), dim=1)
            log_p = log_probs.gather(1, example.y[:, None]).sum()
        with self.meter.phase("backward"):
            grads = torch.autograd.grad(log_p, list(params.values()), allow_unused=True)
        weight = float(log_p.detach().exp()) if self.params.fisher_weight_by_prob else 1.0
        for (name, _), g in zip(params.items(), grads, strict=True):
            if g is not None:
                fisher[name] += weight * g.detach() ** 2

    # ---- resume --------------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        return {
            "fisher": self.fisher,
            "anchor": self.anchor,
            "cache": self.cache.state_dict() if self.cache is not None else None,
            "cache_capacity": self.cache.capacity if self.cache is not None else None,
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.fisher, self.anchor = state["fisher"], state["anchor"]
        if state["cache"] is not None:
            self.cache = ReservoirBuffer(state["cache_capacity"], self.rng)
            self.cache.load_state_dict(state["cache"])
