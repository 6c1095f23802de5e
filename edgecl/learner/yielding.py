"""Predictions first: the training thread yields the CPU while a prediction runs.

On a device with two cores, a training step and a prediction running side by side contend
for the cores, the caches and the memory bus, and the prediction's latency doubles. A
:class:`PredictionGate` counts the predictions in flight; :func:`yield_to_predictions` hooks
every leaf module of the training engine, so before each layer it runs the training thread
waits while any prediction is in flight (at most ``max_wait_s`` per layer, so training is
never starved). The backward pass yields too: each leaf's output gets a gradient hook, which
autograd calls (on the CPU, in the thread that called ``backward()``) just before that
layer's backward runs. A prediction therefore waits at most for the one layer, forward or
backward, in progress.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from torch import Tensor, nn


class PredictionGate:
    def __init__(self, max_wait_s: float = 1.0) -> None:
        self.max_wait_s = max_wait_s
        self._in_flight = 0
        self._idle = threading.Condition()
        self.waits = 0  # times the training thread waited (for tests and metrics)

    @contextlib.contextmanager
    def predicting(self) -> Iterator[None]:
        with self._idle:
            self._in_flight += 1
        try:
            yield
        finally:
            with self._idle:
                self._in_flight -= 1
                if not self._in_flight:
                    self._idle.notify_all()

    def wait_idle(self) -> None:
        if not self._in_flight:  # the common case: no lock taken
            return
        with self._idle:
            if self._in_flight:
                self.waits += 1
                self._idle.wait_for(lambda: not self._in_flight, timeout=self.max_wait_s)


def yield_to_predictions(module: nn.Module, gate: PredictionGate) -> list:
    """Hook every leaf module of ``module``; the handles (to remove the hooks)."""
    def before(_module: nn.Module, _args: tuple) -> None:
        gate.wait_idle()

    def before_backward(grad: Tensor) -> None:
        gate.wait_idle()

    def after(_module: nn.Module, _args: tuple, output: object) -> None:
        if isinstance(output, Tensor) and output.requires_grad:
            output.register_hook(before_backward)

    leaves = [m for m in {id(m): m for m in module.modules()}.values()
              if not any(True for _ in m.children())]
    return ([m.register_forward_pre_hook(before) for m in leaves]
            + [m.register_forward_hook(after) for m in leaves])
