"""CWR* (Lomonaco et al.; AR1*, ViT-LR): a linear head consolidated class by class.

Before an incremental batch the head is zeroed and the consolidated weights of the batch's
classes (its own ∪ those in the replay buffer) are loaded; after it, the scalar mean of those
rows is subtracted and ``w̄_c ← (w̄_c·√(past_c/cur_c) + w_c) / (√(past_c/cur_c) + 1)``
(``w̄_c = w_c`` for a new class); evaluation uses ``w̄``. ``cur_c`` counts the batch's and the
buffer's examples of class c, ``past_c`` accumulates them (``vlomonaco/ar1-pytorch``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


@torch.no_grad()
def cwr_reset(weight: Tensor, saved: Tensor, has_saved: Tensor, cur: Tensor) -> None:
    """Zero the head, then load the consolidated rows of the current classes."""
    weight.zero_()
    load = cur & has_saved
    weight[load] = saved[load].to(weight.dtype)


@torch.no_grad()
def cwr_consolidate(
    weight: Tensor, saved: Tensor, has_saved: Tensor, cur: Tensor, past_j: Tensor,
    cur_j: Tensor,
) -> None:
    """CWR* consolidation of the current classes' rows into ``saved`` (in place)."""
    classes = torch.nonzero(cur).squeeze(1)
    if len(classes) == 0:
        return
    rows = weight[classes].detach().float()
    centred = rows - rows.mean()  # the reference subtracts one scalar: the mean of all rows
    for row, c in zip(centred, classes.tolist(), strict=True):
        if has_saved[c] and cur_j[c] > 0:
            wp = float(torch.sqrt(past_j[c].double() / cur_j[c].double()))
            saved[c] = (saved[c] * wp + row) / (wp + 1)
        elif not has_saved[c]:
            saved[c] = row
            has_saved[c] = True


@torch.no_grad()
def cwr_apply(weight: Tensor, saved: Tensor, has_saved: Tensor) -> None:
    weight[has_saved] = saved[has_saved].to(weight.dtype)


class CWRStar:
    """The consolidated rows of a ``num_classes x dim`` head and the counts that weigh them."""

    STATE = ("saved", "has_saved", "past_j", "task_counts", "buffer_counts", "cur_class")

    def __init__(self, num_classes: int, dim: int) -> None:
        self.num_classes = num_classes
        self.saved = torch.zeros(num_classes, dim)
        self.has_saved = torch.zeros(num_classes, dtype=torch.bool)
        self.past_j = torch.zeros(num_classes, dtype=torch.long)
        self.task_counts = torch.zeros(num_classes, dtype=torch.long)  # this batch's examples
        self.buffer_counts = torch.zeros(num_classes, dtype=torch.long)
        self.cur_class = torch.zeros(num_classes, dtype=torch.bool)

    def begin_batch(self, weight: Tensor, classes: Tensor, buffer_labels: Tensor) -> None:
        """The batch's classes are its own and the buffer's; load their consolidated rows."""
        self.task_counts.zero_()
        self.buffer_counts = torch.bincount(buffer_labels, minlength=self.num_classes)
        self.cur_class.zero_()
        self.cur_class[classes.long()] = True
        self.cur_class[buffer_labels] = True
        cwr_reset(weight, self.saved, self.has_saved, self.cur_class)

    def count(self, labels: Tensor) -> None:
        self.task_counts += torch.bincount(labels.cpu(), minlength=self.num_classes)

    def end_batch(self, weight: Tensor) -> None:
        """Consolidate the batch's rows and put every consolidated row into the head."""
        cur_j = self.task_counts + self.buffer_counts
        cwr_consolidate(weight, self.saved, self.has_saved, self.cur_class, self.past_j, cur_j)
        cwr_apply(weight, self.saved, self.has_saved)
        self.past_j += cur_j

    def nbytes(self) -> int:
        """The state kept across batches: consolidated rows, their flags and past counts."""
        return sum(t.numel() * t.element_size() for t in (self.saved, self.has_saved,
                                                          self.past_j))

    def state_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.STATE}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in self.STATE:
            setattr(self, name, state[name])
