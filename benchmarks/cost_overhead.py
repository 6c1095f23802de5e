"""Overhead of edgecl's cost instrumentation on a ViT-Ti training step (224 px, batch 16).

Two independent measurements, written to results/cost_overhead.json:

1. End to end: the same training step is timed plain, with the FLOP hooks only, with the
   saved-tensor memory hooks only, with the whole meter (FLOP + memory hooks + phase timers)
   and under torch's ``FlopCounterMode``. Each round runs every variant once in a random
   order; the overhead is the median over rounds of the paired ratio variant/plain, with the
   25-75 % range of those ratios (the round-to-round noise).
2. Accounting: the instrumentation is Python work done per module call and per saved tensor,
   so its cost is (calls per step) x (seconds per call). Both factors are measured directly:
   the calls are counted in one step, the per-call cost by timing the hooks in a tight loop on
   the step's real modules and tensors, plus the extra cost torch's module-call path pays when
   a global hook is installed. This estimate does not suffer from the step-to-step noise.

The budget is 3 %. Run: python -m benchmarks.cost_overhead [--rounds 20]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import write_result
from edgecl.backbones.vit import VisionTransformer
from edgecl.metrics.cost import CostMeter, StepMemory

BUDGET = 0.03


class Step:
    """One SGD training step of ViT-Ti + linear head, runnable under each instrumentation."""

    def __init__(self, batch: int) -> None:
        torch.manual_seed(0)
        self.vit = VisionTransformer()
        self.head = nn.Linear(self.vit.embed_dim, 100)
        params = list(self.vit.parameters()) + list(self.head.parameters())
        self.opt = torch.optim.SGD(params, lr=1e-3)
        self.x = torch.randn(batch, 3, 224, 224)
        self.y = torch.randint(0, 100, (batch,))
        self.meter = CostMeter()
        self.meter.watch_parameters([self.vit, self.head])

    def plain(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        F.cross_entropy(self.head(self.vit(self.x)), self.y).backward()
        self.opt.step()

    def with_phases(self) -> None:
        meter = self.meter
        self.opt.zero_grad(set_to_none=True)
        with meter.phase("forward"):
            loss = F.cross_entropy(self.head(self.vit(self.x)), self.y)
        with meter.phase("backward"):
            loss.backward()
        with meter.phase("step"):
            self.opt.step()

    def flop_hooks(self) -> None:
        with self.meter.active():
            self.plain()

    def memory_hooks(self) -> None:
        with self.meter.training_step():
            self.plain()

    def edgecl(self) -> None:
        with self.meter.active(), self.meter.training_step():
            self.with_phases()

    def flop_counter_mode(self) -> None:
        with FlopCounterMode(display=False):
            self.plain()


def timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def end_to_end(step: Step, rounds: int, seed: int) -> dict[str, Any]:
    variants = {
        "plain": step.plain,
        "flop_hooks": step.flop_hooks,
        "memory_hooks": step.memory_hooks,
        "edgecl": step.edgecl,
        "flop_counter_mode": step.flop_counter_mode,
    }
    for fn in variants.values():  # warm-up (allocator, one-time hook set-up)
        fn()
    order_rng = random.Random(seed)
    samples: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(rounds):
        names = list(variants)
        order_rng.shuffle(names)
        for name in names:
            samples[name].append(timed(variants[name]))
    overhead = {}
    for name in variants:
        if name == "plain":
            continue
        ratios = [v / p - 1 for v, p in zip(samples[name], samples["plain"], strict=True)]
        q1, median, q3 = quartiles(ratios)
        overhead[name] = {"median": median, "q1": q1, "q3": q3}
    return {
        "rounds": rounds,
        "median_step_seconds": {k: statistics.median(v) for k, v in samples.items()},
        "overhead": overhead,
        "samples": samples,
    }


def seconds_per_call(fn: Callable[[], None], calls: int, repeats: int = 5) -> float:
    """Best-of-repeats time of ``calls`` invocations of ``fn``, per invocation."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, time.perf_counter() - start)
    return best / calls


def module_call_path_cost() -> float:
    """Extra seconds per module call when a global forward hook is installed.

    With any global hook, ``nn.Module.__call__`` leaves its fast path; measured on a tiny
    module whose own work is negligible, with a hook that does nothing.
    """
    module, x = nn.Identity(), torch.zeros(1)
    fast = seconds_per_call(lambda: module(x), 20000)
    handle = nn.modules.module.register_module_forward_hook(lambda m, a, o: None)
    try:
        slow = seconds_per_call(lambda: module(x), 20000)
    finally:
        handle.remove()
    return max(slow - fast, 0.0)


def accounting(step: Step, plain_seconds: float) -> dict[str, Any]:
    meter = step.meter
    calls: list[tuple[nn.Module, tuple, Any]] = []
    handle = nn.modules.module.register_module_forward_hook(
        lambda m, a, o: calls.append((m, a, o)))
    saved: list[torch.Tensor] = []

    def record(t: torch.Tensor) -> torch.Tensor:
        saved.append(t)
        return t

    try:
        with torch.autograd.graph.saved_tensors_hooks(record, lambda t: t):
            step.plain()
    finally:
        handle.remove()

    def run_forward_hooks() -> None:
        for module, args, out in calls:
            meter._on_forward(module, args, out)

    def run_pack_hooks() -> None:
        mem = StepMemory(meter.param_storages)
        for t in saved:
            mem.pack(t)

    def run_phase_timers() -> None:
        for name in ("forward", "backward", "step"):
            with meter.phase(name):
                pass

    forward_hook_s = seconds_per_call(run_forward_hooks, 20)
    call_path_s = module_call_path_cost() * len(calls)
    pack_s = seconds_per_call(run_pack_hooks, 20)
    phases_s = seconds_per_call(run_phase_timers, 2000)
    total = forward_hook_s + call_path_s + pack_s + phases_s
    return {
        "module_calls_per_step": len(calls),
        "saved_tensors_per_step": len(saved),
        "seconds_per_step": {
            "flop_hook_callbacks": forward_hook_s,
            "module_call_slow_path": call_path_s,
            "saved_tensor_hooks": pack_s,
            "phase_timers": phases_s,
            "total": total,
        },
        "plain_step_seconds": plain_seconds,
        "overhead": total / plain_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    step = Step(args.batch)
    measured = end_to_end(step, args.rounds, args.seed)
    counted = accounting(step, measured["median_step_seconds"]["plain"])
    result = {"batch": args.batch, "budget": BUDGET, "end_to_end": measured,
              "accounting": counted}
    path = write_result("cost_overhead", result)
    print(f"plain step {measured['median_step_seconds']['plain']:.3f} s (median of "
          f"{args.rounds} rounds)")
    for name, o in measured["overhead"].items():
        print(f"  {name:18s} {o['median']:+.2%}  (IQR {o['q1']:+.2%} .. {o['q3']:+.2%})")
    parts = ", ".join(f"{k} {v * 1e3:.2f} ms"
                      for k, v in counted["seconds_per_step"].items())
    print(f"accounting: {counted['module_calls_per_step']} module calls, "
          f"{counted['saved_tensors_per_step']} saved tensors per step; {parts}; "
          f"overhead {counted['overhead']:.2%} (budget {BUDGET:.0%})")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
