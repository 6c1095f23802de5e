"""Overhead of edgecl's cost instrumentation on a ViT-Ti training step (224 px, batch 16).

Times the same step with instrumentation off and on (FLOP hooks + saved-tensor memory hooks +
phase timers), interleaved to cancel drift, and reports the median overhead. The budget is 3 %.
Writes results/cost_overhead.json. Run: python benchmarks/cost_overhead.py
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import write_result
from edgecl.backbones.vit import VisionTransformer
from edgecl.metrics.cost import CostMeter


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)
    vit = VisionTransformer()
    head = torch.nn.Linear(vit.embed_dim, 100)
    opt = torch.optim.SGD(list(vit.parameters()) + list(head.parameters()), lr=1e-3)
    x = torch.randn(args.batch, 3, 224, 224)
    y = torch.randint(0, 100, (args.batch,))
    meter = CostMeter()
    meter.watch_parameters([vit, head])

    def plain() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(head(vit(x)), y).backward()
        opt.step()

    def instrumented() -> None:
        with meter.training_step():
            opt.zero_grad(set_to_none=True)
            with meter.phase("forward"):
                loss = F.cross_entropy(head(vit(x)), y)
            with meter.phase("backward"):
                loss.backward()
            with meter.phase("step"):
                opt.step()

    def flop_counter_mode() -> None:
        with FlopCounterMode(display=False):
            plain()

    def timed(fn) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    plain()  # warm-up
    with meter.active():
        instrumented()
    samples: dict[str, list[float]] = {"plain": [], "edgecl": [], "flop_counter_mode": []}
    for _ in range(args.rounds):
        samples["plain"].append(timed(plain))
        with meter.active():
            samples["edgecl"].append(timed(instrumented))
        samples["flop_counter_mode"].append(timed(flop_counter_mode))
    med = {k: sorted(v)[len(v) // 2] for k, v in samples.items()}
    result = {
        "batch": args.batch,
        "rounds": args.rounds,
        "median_step_seconds": med,
        "edgecl_overhead": med["edgecl"] / med["plain"] - 1,
        "flop_counter_mode_overhead": med["flop_counter_mode"] / med["plain"] - 1,
        "budget": 0.03,
        "samples": samples,
    }
    path = write_result("cost_overhead", result)
    print({k: v for k, v in result.items() if k != "samples"})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
