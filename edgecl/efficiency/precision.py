"""Mixed precision: which dtype the matmuls and convolutions run in, and the autocast that does it.

``fp32``: everything in float32. ``bf16`` / ``fp16``: ``torch.autocast`` runs the ops on its
lower-precision list (linear, matmul, convolution, bmm, ...) in that dtype, while parameters,
gradients and optimizer state stay float32 (master weights), and the ops on autocast's fp32
list (softmax, layer norm, losses, ...) stay float32. So prompts, keys, heads and norm
parameters are never stored in 16 bits, and every update is applied in float32: small
updates to prompts and keys are not lost to bf16's 8-bit mantissa. fp16 on a GPU scales the
loss (:class:`LossScaler`) so small gradients do not underflow; bf16 has fp32's range and
needs no scaling.

``auto`` picks bf16 only where the hardware computes it natively and it is measured to be
faster: a CUDA GPU with bf16 support (else fp16), or a CPU whose flags report AVX512-BF16 or
AMX *and* on which a bf16 matmul runs at least :data:`MIN_SPEEDUP` times faster than fp32
(measured once per process). Elsewhere (a CPU without them emulates bf16, far slower than
fp32) it picks fp32.
"""

from __future__ import annotations

import contextlib
import functools
import time
from typing import Literal

import torch
from torch import Tensor

Precision = Literal["fp32", "bf16", "fp16", "auto"]
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16,
                                  "fp16": torch.float16}
MIN_SPEEDUP = 1.3  # bf16 over fp32 matmul, for ``auto`` to choose bf16 on a CPU
PROBE_N = 512


def cpu_has_native_bf16() -> bool:
    """The CPU reports bf16 instructions (AVX512-BF16 or AMX tiles), as torch detects them."""
    cpu = torch.cpu
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(cpu, name, lambda: False)() for name in checks)


def _matmul_seconds(dtype: torch.dtype, n: int = PROBE_N, repeats: int = 5) -> float:
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return best


@functools.cache
def measured_bf16_speedup() -> float:
    """fp32 / bf16 time of an ``n x n`` matmul on this CPU (best of a few)."""
    return _matmul_seconds(torch.float32) / _matmul_seconds(torch.bfloat16)


def auto_precision(device: torch.device) -> str:
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and cpu_has_native_bf16() and measured_bf16_speedup() >= MIN_SPEEDUP:
        return "bf16"
    return "fp32"


def resolve(precision: str, device: torch.device | str) -> str:
    """The precision that runs: ``auto`` resolved on ``device``; the others as given."""
    device = torch.device(device)
    if precision == "auto":
        return auto_precision(device)
    if precision not in DTYPES:
        raise ValueError(f"unknown precision {precision!r}; one of fp32, bf16, fp16, auto")
    return precision


def autocast(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """The context a forward pass runs in at ``precision`` (resolved); fp32: no autocast."""
    device = torch.device(device)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


class LossScaler:
    """Loss scaling for fp16 on a GPU (``torch.amp.GradScaler``); a pass-through otherwise."""

    def __init__(self, precision: str, device: torch.device) -> None:
        self.scaler = (torch.amp.GradScaler(device.type)
                       if precision == "fp16" and device.type == "cuda" else None)

    @property
    def enabled(self) -> bool:
        return self.scaler is not None

    def backward(self, loss: Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Gradients back to their true scale before clipping or masking them."""
        if self.scaler:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """The optimizer step (skipped by the scaler when a gradient overflowed)."""
        if self.scaler:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.scaler else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler and state:
            self.scaler.load_state_dict(state)
