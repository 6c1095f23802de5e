"""Finetune: train the network on each task in turn (the lower bound), and its on-device
training variants that update only part of it.

``trainable`` selects what trains (the on-device training baselines CsKO is judged against):

- ``all``: every parameter (plain finetune; the default, unchanged behaviour);
- ``head``: the linear classifier only (last-layer finetune); the frozen backbone runs in
  eval mode, so its BatchNorm statistics stay those of the pretrained weights;
- ``bias``: the classifier plus every bias of the backbone (BatchNorm shifts, conv/linear
  biases), weights frozen: TinyTL's bias-only update (Cai et al., 2020, without its lite
  residual modules). BatchNorm layers stay in train mode, as plain finetune.
"""

from __future__ import annotations

from typing import Literal

from torch import nn

from edgecl.methods.base import Batch, BenchmarkInfo, ClassifierMethod, MethodParams, StepStats


class FinetuneParams(MethodParams):
    trainable: Literal["all", "head", "bias"] = "all"


class Finetune(ClassifierMethod):
    name = "finetune"
    Params = FinetuneParams
    params: FinetuneParams

    def setup(self, backbone: nn.Module, info: BenchmarkInfo) -> None:
        super().setup(backbone, info)
        mode = self.params.trainable
        if mode == "all":
            return
        for name, p in self.net.backbone.named_parameters():
            p.requires_grad_(mode == "bias" and name.rsplit(".", 1)[-1] == "bias")

    def observe(self, batch: Batch) -> StepStats:
        self.net.train()
        if self.params.trainable == "head":
            self.net.backbone.eval()
        with self.meter.phase("forward"):
            loss, _ = self.forward_loss(batch)
        self.optimize(loss)
        return StepStats(float(loss.detach()), len(batch.y))
