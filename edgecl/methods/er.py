"""ER: experience replay with a reservoir buffer of raw examples.

Each step concatenates a buffer minibatch (default: the same size as the current batch,
augmented on retrieval) to the current batch; then the current batch enters the buffer.
"""

from __future__ import annotations

import torch

from edgecl.methods.base import Batch, StepStats
from edgecl.methods.rehearsal import RehearsalMethod, RehearsalParams


class ERParams(RehearsalParams):
    replay_batch_size: int | None = None  # None: same as the current batch


class ER(RehearsalMethod):
    name = "er"
    Params = ERParams
    params: ERParams

    def observe(self, batch: Batch) -> StepStats:
        self.net.train()
        x, y = batch.x, batch.y
        if len(self.buffer):
            replay = self.draw(self.params.replay_batch_size or len(y))
            x, y = torch.cat([x, replay.x]), torch.cat([y, replay.y])
        with self.meter.phase("forward"):
            loss = self.classification_loss(self.net(x), y)
        self.optimize(loss)
        self.remember(batch)
        return StepStats(float(loss.detach()), len(y))
