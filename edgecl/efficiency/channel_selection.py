"""DCES: dynamic channel element selection from one gradient pass (CsKO).

The reference sums the 1x1 branch's gradient over one pass through the new task's data
(``param.grad`` accumulates over the batches), takes its absolute value, averages it over
the output channels and keeps the ``fraction`` of *input* channels with the largest score
(``torch.topk`` with ``k = int(fraction * C)``). Its ``channel_sparsity=0.75`` is that
kept fraction: 75 % of the input channels are updated, 25 % stay frozen. (The spec's
"25 % updated" reads it the other way round; ``fraction=0.25`` gives that reading.)
"""

from __future__ import annotations

import torch
from torch import Tensor


class GradientSum:
    """The running sum of a parameter's gradient over the selection pass."""

    def __init__(self) -> None:
        self.total: Tensor | None = None

    def add(self, grad: Tensor) -> None:
        g = grad.detach()
        self.total = g.clone() if self.total is None else self.total + g

    def channel_scores(self) -> Tensor:
        """Per input channel: ``|sum of gradients|`` averaged over the other dimensions."""
        if self.total is None:
            raise ValueError("no gradient was accumulated")
        score = self.total.abs()
        return score.transpose(0, 1).reshape(score.shape[1], -1).mean(dim=1)


def top_channels(scores: Tensor, fraction: float) -> Tensor:
    """The sorted indices of the ``int(fraction * C)`` (at least 1) highest scores."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"channel fraction must be in (0, 1], got {fraction}")
    k = max(1, int(fraction * scores.numel()))
    return torch.sort(torch.topk(scores, k).indices).values
