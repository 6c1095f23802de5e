"""ER: experience replay with a reservoir buffer of raw examples.

Each step concatenates a buffer minibatch (default: the same size as the current batch,
augmented on retrieval) to the current batch; then the current batch enters the buffer.
"""

from __future__ import annotations

from typing import Any

import torch

from edgecl.efficiency.replay_buffer import ReservoirBuffer
from edgecl.methods.base import Batch, BenchmarkInfo, ClassifierMethod, MethodParams, StepStats


class ERParams(MethodParams):
    buffer_size: int = 500
    replay_batch_size: int | None = None  # None: same as the current batch


class ER(ClassifierMethod):
    name = "er"
    Params = ERParams
    params: ERParams

    def setup(self, backbone, info: BenchmarkInfo) -> None:
        super().setup(backbone, info)
        self.buffer = ReservoirBuffer(self.params.buffer_size, self.rng)

    def buffer_bytes(self) -> int:
        return self.buffer.nbytes()

    def replay_batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        if len(self.buffer) == 0:
            return None
        idx = self.buffer.sample(n)
        with self.meter.phase("data"):
            x = self.info.train_transform(self.buffer.images[idx], self.rng).to(self.device)
        return x, self.buffer.labels[idx].to(self.device)

    def observe(self, batch: Batch) -> StepStats:
        self.net.train()
        x, y = batch.x, batch.y
        replay = self.replay_batch(self.params.replay_batch_size or len(y))
        if replay is not None:
            x, y = torch.cat([x, replay[0]]), torch.cat([y, replay[1]])
        with self.meter.phase("forward"):
            loss = self.classification_loss(self.net(x), y)
        self.optimize(loss)
        self.buffer.add(batch.raw, batch.y, task_id=batch.task_id)
        return StepStats(float(loss.detach()), len(y))

    def extra_state(self) -> dict[str, Any]:
        return {"buffer": self.buffer.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.buffer.load_state_dict(state["buffer"])
