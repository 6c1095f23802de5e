"""Deterministic, resumable mini-batch iteration with background prefetching.

The sample order is a pure function of ``seed`` and batch ``b`` is augmented with a
``torch.Generator`` seeded from ``(seed, b)``; hence starting at ``start_batch=k`` yields exactly
batches k, k+1, ... of the uninterrupted iteration, whichever thread prepared them.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from edgecl.data.base import ArrayDataset
from edgecl.data.transforms import BatchTransform
from edgecl.errors import DataError

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]

# How often a blocked producer re-checks whether the consumer has gone away.
_PUT_POLL_S = 0.1


def num_batches(n: int, batch_size: int, drop_last: bool) -> int:
    """Number of batches an epoch over ``n`` samples has."""
    if batch_size < 1:
        raise DataError(f"batch_size must be at least 1, got {batch_size}.")
    return n // batch_size if drop_last else -(-n // batch_size)


def batch_seed(seed: int, batch: int) -> int:
    """A 63-bit seed for batch ``batch`` derived from ``(seed, batch)`` (well mixed)."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, int(batch)]).generate_state(
        1, np.uint64
    )
    return int(state[0]) & 0x7FFFFFFFFFFFFFFF


def epoch_order(indices: np.ndarray, shuffle: bool, seed: int) -> np.ndarray:
    """The sample order of one pass: ``indices`` as given, or permuted by ``seed``."""
    if not shuffle:
        return indices
    permutation = np.random.default_rng(int(seed) & 0xFFFFFFFFFFFFFFFF).permutation(len(indices))
    return indices[permutation]


def make_batch(
    dataset: ArrayDataset,
    batch_indices: np.ndarray,
    transform: BatchTransform,
    seed: int,
    batch: int,
) -> Batch:
    """Gather, transform and label one batch; deterministic given (seed, batch)."""
    images = torch.from_numpy(np.ascontiguousarray(dataset.images[batch_indices]))
    generator = torch.Generator().manual_seed(batch_seed(seed, batch))
    x = transform(images, generator)
    y = torch.from_numpy(np.ascontiguousarray(dataset.labels[batch_indices], dtype=np.int64))
    idx = torch.from_numpy(batch_indices.astype(np.int64, copy=True))
    return x, y, idx


def iterate_batches(
    dataset: ArrayDataset,
    indices: np.ndarray,
    batch_size: int,
    *,
    transform: BatchTransform,
    shuffle: bool,
    seed: int,
    start_batch: int = 0,
    drop_last: bool = False,
    prefetch: int = 2,
) -> Iterator[Batch]:
    """Yield ``(x, y, idx)`` batches of ``dataset[indices]``: x float32 NCHW, y/idx int64.

    With ``prefetch > 0`` a background thread prepares up to ``prefetch`` batches ahead (torch
    kernels release the GIL, so this overlaps with training); its exceptions are re-raised
    here, and it stops as soon as this generator is closed or garbage-collected.
    """
    indices = _checked_indices(indices, len(dataset))
    total = num_batches(len(indices), batch_size, drop_last)
    if start_batch < 0:
        raise DataError(f"start_batch must be >= 0, got {start_batch}.")
    order = epoch_order(indices, shuffle, seed)

    def produce(batch: int) -> Batch:
        chunk = order[batch * batch_size : (batch + 1) * batch_size]
        return make_batch(dataset, chunk, transform, seed, batch)

    batches = range(start_batch, total)
    if prefetch <= 0:
        return (produce(b) for b in batches)
    return _prefetched(produce, batches, prefetch)


def _checked_indices(indices: np.ndarray, n: int) -> np.ndarray:
    indices = np.asarray(indices)
    if indices.ndim != 1 or not (indices.size == 0 or np.issubdtype(indices.dtype, np.integer)):
        raise DataError(
            f"indices must be a 1-D integer array, got {indices.dtype} {indices.shape}."
        )
    if indices.size and (indices.min() < 0 or indices.max() >= n):
        raise DataError(
            f"indices must lie in [0, {n}) for this data set, got values from {indices.min()} "
            f"to {indices.max()}."
        )
    return indices.astype(np.int64, copy=False)


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


_DONE = object()


def _prefetched(produce: Any, batches: range, prefetch: int) -> Iterator[Batch]:
    # A generator, so the thread starts on the first next() and the `finally` below always
    # runs once it has started (on exhaustion, error, close() or garbage collection).
    ready: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()

    def offer(item: object) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=_PUT_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for batch in batches:
                if stop.is_set() or not offer(produce(batch)):
                    return
        except BaseException as error:  # handed to the consumer, which re-raises it
            offer(_Failure(error))
            return
        offer(_DONE)

    thread = threading.Thread(target=work, name="edgecl-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join()
