"""Nearest class mean on frozen features: no gradient step at all (a cheap reference).

Each observed batch adds its features to running
per-class sums; prediction is the negative squared distance to each class mean, with classes
not seen yet at -inf.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from edgecl.methods.base import (
    Batch,
    BenchmarkInfo,
    Method,
    MethodParams,
    StepStats,
    feature_dim_of,
)


class NCMParams(MethodParams):
    normalize: bool = True  # L2-normalise features (cosine-like geometry)


class NCM(Method):
    name = "ncm"
    Params = NCMParams
    params: NCMParams

    def setup(self, backbone, info: BenchmarkInfo) -> None:
        super().setup(backbone, info)
        self.backbone = backbone.to(self.device).eval().requires_grad_(False)
        self.modules["backbone"] = self.backbone
        dim = feature_dim_of(backbone)
        self.sums = torch.zeros(info.num_classes, dim, dtype=torch.float64)
        self.counts = torch.zeros(info.num_classes, dtype=torch.float64)

    def begin_task(self, task) -> None:
        self.task_index = task.index
        self.seen_classes = max(self.seen_classes, int(task.classes.max()) + 1)

    def features(self, x: Tensor) -> Tensor:
        f = self.backbone(x)
        return torch.nn.functional.normalize(f, dim=1) if self.params.normalize else f

    @torch.no_grad()
    def observe(self, batch: Batch) -> StepStats:
        with self.meter.phase("forward"):
            f = self.features(batch.x).double().cpu()
        self.sums.index_add_(0, batch.y.cpu(), f)
        self.counts.index_add_(0, batch.y.cpu(), torch.ones(len(batch.y), dtype=torch.float64))
        return StepStats(0.0, len(batch.y))

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        f = self.features(x).double().cpu()
        means = self.sums / self.counts.clamp(min=1)[:, None]
        logits = -torch.cdist(f, means).pow(2)
        logits[:, self.counts == 0] = float("-inf")
        return logits.float().to(x.device)

    def trainable_parameters(self) -> list:
        return []

    def buffer_bytes(self) -> int:
        return self.sums.numel() * 8 + self.counts.numel() * 8

    def extra_state(self) -> dict[str, Any]:
        return {"sums": self.sums, "counts": self.counts}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.sums, self.counts = state["sums"], state["counts"]
