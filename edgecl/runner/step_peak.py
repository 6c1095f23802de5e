"""Probing the real per-step memory peak on a few training steps (``cost.step_peak_every``).

Every ``every``-th training step of the run (the first included) runs inside an
:class:`~edgecl.metrics.step_peak.AllocatorPeak`. On a CPU the allocator events cover what is
allocated during the step; the bytes already resident when it starts are added: parameters,
the gradients that exist at that moment, optimizer state, the method's buffers and the input
batch. The largest probed peak is reported beside the accounting footprint of the same steps
(saved-for-backward bytes + parameters, gradients, optimizer state and buffers).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from edgecl.methods.base import Batch, Method, StepStats
from edgecl.metrics.cost import optimizer_state_bytes, tensor_bytes
from edgecl.metrics.step_peak import AllocatorPeak
from edgecl.runner.callbacks import STATE_FIELDS, Callback

if TYPE_CHECKING:
    from edgecl.runner.loop import TrainingLoop


def resident_bytes(method: Method, batch: Batch) -> int:
    """Bytes of the tensors alive when a step starts: parameters, existing gradients,
    optimizer state, the method's buffers and the batch's inputs and labels."""
    params = list(method.modules.parameters())
    grads = [p.grad for p in params if p.grad is not None]
    return (tensor_bytes(params) + tensor_bytes(grads) + optimizer_state_bytes(method.optimizer)
            + int(method.buffer_bytes()) + tensor_bytes([batch.x, batch.y]))


class StepPeakSampler(Callback):
    """Wraps the probed steps (:meth:`probe`) and keeps the largest reading."""

    key = "step_peak"

    def __init__(self, every: int) -> None:
        self.every = every
        self.peak = 0
        self.accounting = 0  # the accounting footprint of the same steps, at its largest
        self.steps = 0
        self.source: str | None = None
        self._pending = False

    def due(self, steps_done: int) -> bool:
        return self.every > 0 and steps_done % self.every == 0

    @contextlib.contextmanager
    def probe(self, loop: TrainingLoop, batch: Batch) -> Iterator[None]:
        """Measure this step if it is due (``steps_done`` counts the run's finished steps)."""
        if not self.due(len(loop.meter.saved_bytes_per_step)):
            yield
            return
        with AllocatorPeak(loop.run.device, resident_bytes(loop.method, batch)) as reading:
            yield
        self.peak = max(self.peak, reading.peak_bytes)
        self.source = reading.source
        self.steps += 1
        self._pending = True

    def on_step(self, loop: TrainingLoop, batch: Batch, stats: StepStats) -> None:
        if not self._pending:
            return
        self._pending = False
        now = loop.method.memory_breakdown()
        footprint = loop.meter.saved_bytes_per_step[-1] + sum(
            int(now.get(name, 0)) for name in STATE_FIELDS)
        self.accounting = max(self.accounting, footprint)

    def results(self) -> dict[str, Any]:
        if not self.steps:
            return {"step_peak_bytes": None, "step_peak_accounting_bytes": None,
                    "step_peak_steps": 0, "step_peak_source": None}
        return {"step_peak_bytes": self.peak, "step_peak_accounting_bytes": self.accounting,
                "step_peak_steps": self.steps, "step_peak_source": self.source}

    def state_dict(self) -> dict[str, Any]:
        return {"peak": self.peak, "accounting": self.accounting, "steps": self.steps,
                "source": self.source}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.peak, self.accounting = state["peak"], state["accounting"]
        self.steps, self.source = state["steps"], state["source"]
