"""Cost measurement: executed FLOPs, training memory, wall time per phase, energy.

FLOPs are counted on the operations actually executed, module by module: every call of an
``nn.Linear``, ``nn.Conv2d`` or the ViT's ``AttentionCore`` records its real input shapes, and
its backward cost is booked when its output joins the autograd graph (weight gradient only
for trainable weights, input gradient only when the input needs one). Skipped layers, merged
tokens and frozen prefixes therefore show as savings. The per-op formulas are torch's own
(``torch.utils.flop_counter``) and a test checks the totals against ``FlopCounterMode``.
Counting per module rather than per dispatched op keeps the overhead far below the 3 % budget
(``benchmarks/cost_overhead.py`` measures it); elementwise ops are not counted, as in
``FlopCounterMode``. Optimizer FLOPs are counted per updated parameter element.

Training memory = peak bytes saved for backward (``saved_tensors_hooks``, parameters
excluded, storages deduplicated) + parameters + gradients + optimizer state + method buffers.
"""

from __future__ import annotations

import contextlib
import math
import resource
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import (
    conv_flop_count,
    mm_flop,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

from edgecl.backbones.attention_kernels import resolve_kernel
from edgecl.backbones.vit import AttentionCore

PHASES = ("data", "selection", "prefix", "forward", "backward", "step", "eval")
# Training FLOPs by part: every FLOP booked outside evaluation lands in exactly one of them
# ("other": module calls a method makes while preparing data or inside its update step).
TRAIN_FLOP_PARTS = ("forward", "backward", "optimizer", "selection", "prefix", "other")

# Elementwise FLOPs per updated parameter element (update rule arithmetic, incl. decay).
OPTIMIZER_FLOPS_PER_ELEMENT = {"sgd": 2, "sgd_momentum": 4, "adam": 12, "adamw": 14}


def _linear_cost(m: nn.Linear, x: Tensor, out: Tensor) -> tuple[int, int]:
    rows = x.numel() // m.in_features
    fwd = mm_flop((rows, m.in_features), (m.in_features, m.out_features))
    bwd = 0
    if out.requires_grad:
        bwd += fwd if x.requires_grad else 0
        bwd += fwd if m.weight.requires_grad else 0
    return fwd, bwd


def _conv_cost(m: nn.Conv2d, x: Tensor, out: Tensor) -> tuple[int, int]:
    xs, ws, os_ = list(x.shape), list(m.weight.shape), list(out.shape)
    if len(xs) == 3:  # unbatched
        xs, os_ = [1, *xs], [1, *os_]
    fwd = conv_flop_count(xs, ws, os_, transposed=False)
    bwd = 0
    if out.requires_grad:
        if x.requires_grad:
            bwd += conv_flop_count(os_, ws, xs, transposed=True)
        if m.weight.requires_grad:
            bwd += conv_flop_count([xs[1], xs[0], *xs[2:]], [os_[1], os_[0], *os_[2:]], ws, False)
    return fwd, bwd


def _attention_cost(m: AttentionCore, q: Tensor, k: Tensor, v: Tensor,
                    out: Tensor) -> tuple[int, int]:
    qs, ks, vs = (tuple(t.shape) for t in (q, k, v))
    fwd = sdpa_flop_count(qs, ks, vs)
    bwd = 0
    if out.requires_grad:
        # torch's formula includes recomputing q kᵀ in backward, as the fused kernels and
        # ``recompute`` do; ``explicit`` keeps the probabilities and skips that matmul
        bwd = sdpa_backward_flop_count(tuple(out.shape), qs, ks, vs)
        if resolve_kernel(m.kernel, q) == "explicit":
            *batch, n, d = qs
            bwd -= 2 * math.prod(batch) * n * ks[-2] * d
    return fwd, bwd


DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def dtype_name(dtype: torch.dtype) -> str:
    """``fp32``/``bf16``/``fp16`` (the names of ``train.precision``), else torch's name."""
    return DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))


def _unpack(t: Tensor) -> Tensor:
    return t


@dataclass
class StepMemory:
    """Bytes saved for backward in one step; ``excluded`` are parameter/buffer storages."""

    excluded: set[int] = field(default_factory=set)
    saved_bytes: int = 0
    seen: set[int] = field(default_factory=set)

    def pack(self, t: Tensor) -> Tensor:
        """The saved-tensor pack hook: count each new non-parameter storage once."""
        if t.layout == torch.strided and not t.is_meta:
            ptr = t.untyped_storage().data_ptr()
            if ptr not in self.seen and ptr not in self.excluded:
                self.seen.add(ptr)
                self.saved_bytes += t.untyped_storage().nbytes()
        return t


class CostMeter:
    """Collects FLOPs (by phase), per-step saved-for-backward bytes and phase wall times."""

    def __init__(self, device: torch.device | str = "cpu", count_flops: bool = True) -> None:
        self.device = torch.device(device)
        self.count_flops = count_flops
        self.flops: dict[str, int] = defaultdict(int)
        self.flops_by_dtype: dict[str, int] = defaultdict(int)  # training FLOPs by compute dtype
        self.seconds: dict[str, float] = defaultdict(float)
        self.saved_bytes_per_step: list[int] = []
        self._phase = "forward"
        self._inner: list[float] = []  # seconds of phases nested in each open phase
        self.param_storages: set[int] = set()
        self._hook_handle = None

    # ---- FLOPs ---------------------------------------------------------------------------
    def _on_forward(self, module: nn.Module, args: tuple, out: object) -> None:
        if isinstance(module, nn.Linear):
            fwd, bwd = _linear_cost(module, args[0], out)  # type: ignore[arg-type]
        elif isinstance(module, nn.Conv2d):
            fwd, bwd = _conv_cost(module, args[0], out)  # type: ignore[arg-type]
        elif isinstance(module, AttentionCore):
            fwd, bwd = _attention_cost(module, args[0], args[1], args[2], out)  # type: ignore[arg-type]
        else:
            return
        self.flops[self._phase] += fwd
        if bwd:
            self.flops["backward"] += bwd
        if self._phase != "eval" and isinstance(out, Tensor):
            # the output's dtype is the one the op computed in (autocast casts the inputs)
            self.flops_by_dtype[dtype_name(out.dtype)] += fwd + bwd

    @contextlib.contextmanager
    def active(self) -> Iterator[CostMeter]:
        """Install the global module hook for the duration of a run."""
        if self.count_flops and self._hook_handle is None:
            self._hook_handle = nn.modules.module.register_module_forward_hook(self._on_forward)
        try:
            yield self
        finally:
            if self._hook_handle is not None:
                self._hook_handle.remove()
                self._hook_handle = None

    def add_flops(self, phase: str, n: int) -> None:
        """For work outside counted modules (e.g. a custom matmul a method does itself)."""
        self.flops[phase] += int(n)

    def add_optimizer_flops(self, optimizer_kind: str, n_elements: int) -> None:
        self.flops["optimizer"] += OPTIMIZER_FLOPS_PER_ELEMENT[optimizer_kind] * int(n_elements)

    # ---- time ----------------------------------------------------------------------------
    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time a phase (device-synchronized) and attribute the FLOPs run inside it to it.

        Phases are exclusive: a phase opened inside another (a frozen-prefix pass inside a
        method's forward) takes its seconds out of the outer one, so the phases add up to
        the time spent, never more.
        """
        if name not in PHASES:
            raise ValueError(f"unknown phase {name!r}; phases are {PHASES}")
        previous = self._phase
        self._sync()
        start = time.perf_counter()
        self._phase = name
        self._inner.append(0.0)
        try:
            yield
        finally:
            self._sync()
            spent = time.perf_counter() - start
            self.seconds[name] += spent - self._inner.pop()
            if self._inner:
                self._inner[-1] += spent
            self._phase = previous

    # ---- memory --------------------------------------------------------------------------
    def watch_parameters(self, modules: list[nn.Module]) -> None:
        """Parameters saved for backward are not activation memory: remember their storages."""
        self.param_storages = {
            p.untyped_storage().data_ptr() for m in modules for p in m.parameters()
        } | {b.untyped_storage().data_ptr() for m in modules for b in m.buffers()}

    @contextlib.contextmanager
    def training_step(self) -> Iterator[StepMemory]:
        """Measure the bytes autograd saves for backward during one step."""
        mem = StepMemory(self.param_storages)
        with torch.autograd.graph.saved_tensors_hooks(mem.pack, _unpack):
            yield mem
        self.saved_bytes_per_step.append(mem.saved_bytes)

    # ---- summaries -----------------------------------------------------------------------
    def train_flops(self) -> dict[str, int]:
        """Every training-time FLOP, by part, and their ``total``."""
        parts = {p: self.flops[p] for p in TRAIN_FLOP_PARTS if p != "other"}
        parts["other"] = sum(v for k, v in self.flops.items() if k not in (*parts, "eval"))
        return {**parts, "total": sum(parts.values())}

    def state_dict(self) -> dict:
        return {"flops": dict(self.flops), "seconds": dict(self.seconds),
                "saved": list(self.saved_bytes_per_step),
                "flops_by_dtype": dict(self.flops_by_dtype)}

    def load_state_dict(self, state: dict) -> None:
        self.flops.update(state["flops"])
        self.flops_by_dtype.update(state.get("flops_by_dtype", {}))
        self.seconds.update(state["seconds"])
        self.saved_bytes_per_step = list(state["saved"])

    def time_summary(self, wall_total: float) -> dict:
        out = {p: self.seconds[p] for p in PHASES}
        out["train_total"] = sum(self.seconds[p] for p in PHASES if p != "eval")
        out["wall_total"] = wall_total
        return out


def tensor_bytes(tensors: list[Tensor] | Iterator[Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer | None) -> int:
    if optimizer is None:
        return 0
    return sum(
        v.numel() * v.element_size()
        for state in optimizer.state.values()
        for v in state.values()
        if isinstance(v, Tensor) and v.dim() > 0
    )


def proc_status_bytes(key: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in bytes; None without
    /proc (not Linux)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(f"{key}:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_rss_bytes() -> int:
    """This process's resident high-water mark: ``VmHWM`` where /proc has it (``ru_maxrss``
    carries a parent's peak over ``execve``), else ``ru_maxrss``."""
    hwm = proc_status_bytes("VmHWM")
    if hwm:
        return hwm
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


class NvmlEnergy:
    """Measured GPU energy via NVML (total energy counter), when available."""

    def __init__(self, device: torch.device) -> None:
        self.handle = None
        self.start_mj = 0
        if device.type != "cuda":
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
            self.start_mj = pynvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)
            self._nvml = pynvml
        except Exception:  # no NVML library, no permission, unsupported GPU
            self.handle = None

    def joules(self) -> float | None:
        if self.handle is None:
            return None
        return (self._nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle) - self.start_mj) / 1e3
