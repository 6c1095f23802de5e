"""The real memory peak of one training step, from the allocator, beside the accounting figure.

The accounting figure (:class:`~edgecl.runner.callbacks.MemorySampler`) adds the bytes autograd
saved for backward to parameters, gradients, optimizer state and buffers. It leaves out what
lives only for a moment: no-grad activations (query passes, frozen prefixes), activation
gradients during backward, temporaries inside ops, the input batch. :class:`AllocatorPeak`
measures them:

- on a GPU, ``torch.cuda.max_memory_allocated`` after resetting the peak counter: every byte
  the caching allocator handed out, the tensors alive before the step included;
- on a CPU, the allocation and free events torch's CPU allocator reports to the profiler
  (``torch.profiler`` with ``profile_memory=True``), in time order: the running sum's maximum
  is the step's high-water mark above what was alive when it began. The caller adds the bytes
  resident at the start (``resident_bytes``: parameters, gradients, optimizer state, buffers,
  the input batch), which existed before the window opened.

Profiling every op costs time, so the runner probes a few steps only (``cost.step_peak_every``).
Kineto prints a line to stderr when a profile starts and stops; it is silenced for the window.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch._C._autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

CPU_SOURCE = "cpu_profiler"
CUDA_SOURCE = "cuda_allocator"


def peak_of_events(events: list[tuple[int, int]]) -> int:
    """The largest running sum of ``(time, +bytes allocated / -bytes freed)`` events in time
    order, never below 0 (frees of memory allocated before the window come first)."""
    current = peak = 0
    for _, nbytes in sorted(events):
        current += nbytes
        peak = max(peak, current)
    return peak


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null for the block (C++ logging writes there)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (an embedded interpreter): nothing to hide
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@dataclass
class PeakReading:
    """One probed step: ``peak_bytes`` the step's real peak, ``source`` how it was measured."""

    peak_bytes: int = 0
    source: str = CPU_SOURCE


class AllocatorPeak:
    """``with AllocatorPeak(device, resident_bytes) as reading: step()`` fills ``reading``."""

    def __init__(self, device: torch.device, resident_bytes: int = 0) -> None:
        self.device = torch.device(device)
        self.resident_bytes = int(resident_bytes)
        self.reading = PeakReading()

    def __enter__(self) -> PeakReading:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.reading.source = CUDA_SOURCE
            return self.reading
        self._quiet = _quiet_stderr()
        self._quiet.__enter__()
        self._profile = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        self._profile.__enter__()
        return self.reading

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.reading.peak_bytes = int(torch.cuda.max_memory_allocated(self.device))
            return
        try:
            self._profile.__exit__(*exc)
        finally:
            self._quiet.__exit__(None, None, None)
        results = self._profile.profiler.kineto_results  # type: ignore[union-attr]
        events = [(e.start_ns(), e.nbytes()) for e in results.events()
                  if e.name() == "[memory]" and e.device_type() == DeviceType.CPU]
        self.reading.peak_bytes = self.resident_bytes + peak_of_events(events)
        # The profile refers to itself (its action map holds its bound methods), so its event
        # buffers (tens of MB for a ViT step) outlive it until a full collection; waiting for
        # one grew a run's peak RSS by about 20 MB per probe (1004 MiB against 874 unprobed).
        del results, events
        self._profile = None
        gc.collect()
