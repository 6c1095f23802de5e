"""Frozen-prefix outputs cached per dataset index, with fp32/fp16/bf16/int8 storage.

When the inputs are not augmented, a frozen prefix is a fixed function of each training
sample: computing it once per sample and reading it back in later epochs skips the prefix
entirely (no FLOPs, no time). :class:`FeatureCache` holds those outputs keyed by the
dataset index the runner puts in ``batch.index``. It must not be used with augmented inputs
(each epoch sees a different crop); :func:`require_unaugmented` turns that mistake into a
clear config error.

:class:`TensorStore` is the fixed-capacity quantised row storage underneath; latent replay
uses it for its latent buffer too. Storage kinds:

- ``fp32``: exact;
- ``fp16``: half precision (2 bytes/value; 10 mantissa bits, overflows above 65504);
- ``bf16``: bfloat16 (2 bytes/value; fp32's range, 7 mantissa bits);
- ``int8``: symmetric per-slice quantisation, one fp32 scale per slice along the first axis
  of each sample (a ViT token, a CNN channel): ``q = round(x / s)``, ``s = max|x| / 127``.

All bytes (values and scales) are counted by ``nbytes()``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor

from edgecl.data.transforms import BatchTransform
from edgecl.errors import ConfigError

Storage = Literal["fp32", "fp16", "bf16", "int8"]
STORAGE_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "int8": torch.int8,
}


class FeatureCacheConfigError(ConfigError):
    """``cache_features`` was asked for where cached features would be wrong."""


def transform_is_deterministic(transform: BatchTransform) -> bool:
    """True for the plain resize + normalise transform (``train.augment: false``).

    Subclasses of :class:`BatchTransform` add random augmentation (see
    ``edgecl.data.transforms``), so only the base class itself is deterministic.
    """
    return type(transform) is BatchTransform


def require_unaugmented(transform: BatchTransform, method: str) -> None:
    if not transform_is_deterministic(transform):
        raise FeatureCacheConfigError(
            f"{method}: cache_features=true needs un-augmented training inputs, but the "
            f"training transform is {type(transform).__name__} (augmenting). Set "
            "`train: {augment: false}` (globally or in this method's entry), or set "
            "cache_features: false."
        )


# ---- quantisation ----------------------------------------------------------------------------
def quantize_int8(x: Tensor) -> tuple[Tensor, Tensor]:
    """(B, S, ...) → int8 values and fp32 scales (B, S): symmetric, one scale per slice."""
    flat = x.detach().float().reshape(x.shape[0], x.shape[1], -1)
    scale = flat.abs().amax(dim=2).clamp_min(1e-12) / 127.0
    q = torch.round(flat / scale.unsqueeze(2)).clamp_(-127, 127).to(torch.int8)
    return q.reshape(x.shape), scale


def dequantize_int8(q: Tensor, scale: Tensor) -> Tensor:
    flat = q.float().reshape(q.shape[0], q.shape[1], -1) * scale.unsqueeze(2)
    return flat.reshape(q.shape)


class TensorStore:
    """``capacity`` rows of one sample shape, stored as fp32, fp16, bf16 or int8 (+ scales).

    Rows are allocated on the first write (the sample shape is known then).
    """

    def __init__(self, capacity: int, storage: Storage = "fp32") -> None:
        if storage not in STORAGE_DTYPES:
            raise ValueError(f"storage must be one of {sorted(STORAGE_DTYPES)}, got {storage!r}")
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self.storage = storage
        self.values: Tensor | None = None
        self.scales: Tensor | None = None

    def _allocate(self, sample_shape: torch.Size) -> None:
        self.values = torch.zeros((self.capacity, *sample_shape),
                                  dtype=STORAGE_DTYPES[self.storage])
        if self.storage == "int8":
            if len(sample_shape) == 0:
                raise ValueError("int8 storage needs samples with at least one axis")
            self.scales = torch.zeros((self.capacity, sample_shape[0]), dtype=torch.float32)

    def grow(self, capacity: int) -> None:
        """Enlarge to ``capacity`` rows, keeping the stored ones."""
        if capacity <= self.capacity:
            return
        extra = capacity - self.capacity
        if self.values is not None:
            self.values = torch.cat([self.values, self.values.new_zeros(
                (extra, *self.values.shape[1:]))])
        if self.scales is not None:
            self.scales = torch.cat([self.scales, self.scales.new_zeros(
                (extra, *self.scales.shape[1:]))])
        self.capacity = capacity

    def write(self, slots: Tensor, x: Tensor) -> None:
        x = x.detach().cpu()
        if self.values is None:
            self._allocate(x.shape[1:])
        assert self.values is not None
        if self.storage == "int8":
            q, scale = quantize_int8(x)
            self.values[slots] = q
            assert self.scales is not None
            self.scales[slots] = scale
        else:
            self.values[slots] = x.to(self.values.dtype)

    def read(self, slots: Tensor) -> Tensor:
        """fp32 copies of the rows at ``slots``."""
        if self.values is None:
            raise RuntimeError("read from an empty TensorStore")
        if self.storage == "int8":
            assert self.scales is not None
            return dequantize_int8(self.values[slots], self.scales[slots])
        return self.values[slots].float()

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.values, self.scales)
                   if t is not None)

    def state_dict(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "storage": self.storage,
                "values": self.values, "scales": self.scales}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.capacity, self.storage = state["capacity"], state["storage"]
        self.values, self.scales = state["values"], state["scales"]


# ---- the cache --------------------------------------------------------------------------------
class FeatureCache:
    """Frozen-prefix outputs keyed by dataset index (``batch.index``).

    Grows by doubling (``reserve`` pre-sizes it, e.g. to the task's training-set size); the
    counted bytes are the allocated rows. Misses are computed, stored, and returned *as
    stored* (fp16/int8 rounding included), so every epoch trains on identical values.
    """

    def __init__(self, storage: Storage = "fp32") -> None:
        self.store = TensorStore(0, storage)
        self.slot_of: dict[int, int] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self.slot_of)

    def reserve(self, n: int) -> None:
        self.store.grow(max(n, len(self.slot_of)))

    def clear(self) -> None:
        self.store = TensorStore(0, self.store.storage)
        self.slot_of = {}

    def reset(self, n: int) -> None:
        """Empty, then pre-sized for ``n`` samples (e.g. a new task's training set)."""
        self.clear()
        self.reserve(n)

    def nbytes(self) -> int:
        # Values + scales + the index → slot map (two int64 per entry).
        return self.store.nbytes() + 16 * len(self.slot_of)

    def contains(self, index: Tensor) -> Tensor:
        return torch.tensor([int(i) in self.slot_of for i in index.tolist()], dtype=torch.bool)

    def _slots(self, index: Tensor) -> Tensor:
        return torch.tensor([self.slot_of[int(i)] for i in index.tolist()], dtype=torch.long)

    def put(self, index: Tensor, x: Tensor) -> None:
        new = [int(i) for i in index.tolist() if int(i) not in self.slot_of]
        needed = len(self.slot_of) + len(new)
        if needed > self.store.capacity:
            self.store.grow(max(needed, 2 * self.store.capacity))
        for i in new:
            self.slot_of[i] = len(self.slot_of)
        self.store.write(self._slots(index), x)

    def get(self, index: Tensor) -> Tensor:
        return self.store.read(self._slots(index))

    def fetch(self, index: Tensor, x: Tensor, compute: Callable[[Tensor], Tensor]) -> Tensor:
        """Prefix outputs for the batch: cached rows, ``compute(x[misses])`` for the rest."""
        miss = ~self.contains(index)
        n_miss = int(miss.sum())
        self.misses += n_miss
        self.hits += len(index) - n_miss
        if n_miss:
            self.put(index[miss], compute(x[miss]))
        return self.get(index).to(x.device)

    def state_dict(self) -> dict[str, Any]:
        return {"store": self.store.state_dict(), "slot_of": dict(self.slot_of),
                "hits": self.hits, "misses": self.misses}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.store.load_state_dict(state["store"])
        self.slot_of = dict(state["slot_of"])
        self.hits, self.misses = state["hits"], state["misses"]
