"""Exemplar-free prototype augmentation for old classes (CsKO's reference, after PASS).

After each task the mean feature of every class of that task is stored (the reference keeps
the class means only, no Gaussian noise around them, unlike PASS). During a later task each
step draws ``n`` prototypes of uniformly random old classes, and the classifier is trained
on them: ``loss = weight * CE(head(prototypes) / temperature, labels)`` (reference weight 10,
temperature 0.1).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class PrototypeBank:
    """Class-mean features: accumulated per task, then frozen as prototypes."""

    def __init__(self) -> None:
        self.features = torch.zeros(0)
        self.labels = torch.zeros(0, dtype=torch.long)
        self._sum: dict[int, Tensor] = {}
        self._count: dict[int, int] = {}

    def accumulate(self, features: Tensor, labels: Tensor) -> None:
        """Add a batch of features to the running class sums of the current task."""
        for c in labels.unique().tolist():
            rows = features[labels == c].detach()
            self._sum[c] = self._sum.get(c, 0) + rows.sum(dim=0)
            self._count[c] = self._count.get(c, 0) + len(rows)

    def commit(self) -> None:
        """Turn the current task's sums into prototypes (kept after the earlier ones)."""
        if not self._sum:
            return
        classes = sorted(self._sum)
        means = torch.stack([self._sum[c] / self._count[c] for c in classes])
        labels = torch.tensor(classes, dtype=torch.long, device=means.device)
        if len(self.labels):
            means = torch.cat([self.features.to(means.device), means])
            labels = torch.cat([self.labels.to(means.device), labels])
        self.features, self.labels = means, labels
        self._sum, self._count = {}, {}

    def __len__(self) -> int:
        return len(self.labels)

    def sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``n`` prototypes of uniformly drawn stored classes (with replacement)."""
        if not len(self):
            raise ValueError("no prototypes stored yet")
        pick = torch.randint(len(self), (n,), generator=generator).to(self.labels.device)
        return self.features[pick], self.labels[pick]

    def nbytes(self) -> int:
        return self.features.numel() * self.features.element_size() + self.labels.numel() * 8

    def state_dict(self) -> dict[str, Any]:
        return {"features": self.features, "labels": self.labels,
                "sum": dict(self._sum), "count": dict(self._count)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.features, self.labels = state["features"], state["labels"]
        self._sum, self._count = dict(state["sum"]), dict(state["count"])
