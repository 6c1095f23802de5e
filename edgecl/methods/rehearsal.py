"""Shared base of the rehearsal methods (ER, DER++, SparCL): a classifier and a reservoir buffer.

The buffer (:class:`~edgecl.efficiency.replay_buffer.ReservoirBuffer`) keeps raw uint8 images
and labels (and logits where a method stores them), shares the method's random generator, and
hands out replay minibatches augmented with the training transform, on the device.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field
from torch import Tensor, nn

from edgecl.efficiency.replay_buffer import ReplayBatch, ReservoirBuffer
from edgecl.methods.base import Batch, BenchmarkInfo, ClassifierMethod, MethodParams


class RehearsalParams(MethodParams):
    buffer_size: int = Field(500, ge=1)


class RehearsalMethod(ClassifierMethod):
    params: RehearsalParams

    def setup(self, backbone: nn.Module, info: BenchmarkInfo) -> None:
        super().setup(backbone, info)
        self.buffer = ReservoirBuffer(self.params.buffer_size, self.rng)

    def draw(self, n: int) -> ReplayBatch:
        """``n`` distinct buffer examples (fewer if it holds fewer), ready for the model."""
        with self.meter.phase("data"):
            return self.buffer.draw(n, self.info.train_transform, self.device)

    def remember(self, batch: Batch, logits: Tensor | None = None) -> None:
        """Offer the batch's raw examples (and their logits) to the reservoir."""
        self.buffer.add(batch.raw, batch.y, logits=logits, task_id=batch.task_id)

    def buffer_bytes(self) -> int:
        return self.buffer.nbytes()

    def extra_state(self) -> dict[str, Any]:
        return {"buffer": self.buffer.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.buffer.load_state_dict(state["buffer"])
