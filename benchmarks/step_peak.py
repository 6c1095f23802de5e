"""The real per-step memory peak (edgecl.metrics.step_peak) against the accounting figure, and
what probing a step costs, on a ViT-Ti/16 training step (112 px, batch 16, Adam, every weight
trained: the default run's finetune step).

Each round runs the step plain and probed, in a random order; the probe's cost is the median
over rounds of the paired time ratio probed/plain (25-75 % range beside it). A run probes one
step in ``cost.step_peak_every`` (25), so its reported training time grows by (ratio - 1) / 25.
The memory side: the probed step's real peak (allocator events + resident bytes) and its
accounting footprint (saved for backward + parameters + gradients + optimizer state).

Run: python -m benchmarks.step_peak [--rounds 8]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.common import RESULTS, table_lines, table_row, write_result
from edgecl.backbones.registry import create_backbone
from edgecl.io import atomic_write_text
from edgecl.metrics.cost import CostMeter, optimizer_state_bytes, tensor_bytes
from edgecl.metrics.step_peak import AllocatorPeak

EVERY = 25  # cost.step_peak_every's default
BUDGET = 0.03  # the reported training time may grow by at most 3 %


def build(batch: int, size: int) -> tuple[Any, ...]:
    torch.manual_seed(0)
    model = create_backbone("vit_tiny_patch16_224", weights="random", img_size=size).module
    head = torch.nn.Linear(model.embed_dim, 20)
    params = [*model.parameters(), *head.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-4)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 20, (batch,))
    meter = CostMeter()
    meter.watch_parameters([model, head])
    return model, head, params, optimizer, x, y, meter


def step(model: Any, head: Any, optimizer: Any, x: torch.Tensor, y: torch.Tensor) -> None:
    loss = F.cross_entropy(head(model.forward_features(x).cls), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=112)
    args = parser.parse_args()
    torch.set_num_threads(2)
    model, head, params, optimizer, x, y, meter = build(args.batch, args.size)
    step(model, head, optimizer, x, y)  # Adam state exists from here on, as in a run
    load_before = os.getloadavg()

    def resident() -> int:
        grads = [p.grad for p in params if p.grad is not None]
        return (tensor_bytes(params) + tensor_bytes(grads) + optimizer_state_bytes(optimizer)
                + tensor_bytes([x, y]))

    with AllocatorPeak(torch.device("cpu"), resident()) as reading, meter.training_step():
        step(model, head, optimizer, x, y)
    state = tensor_bytes(params) * 2 + optimizer_state_bytes(optimizer)  # + gradients
    accounting = meter.saved_bytes_per_step[-1] + state

    rng = random.Random(0)
    ratios, plain_s = [], []
    for _ in range(args.rounds):
        times = {}
        for variant in rng.sample(["plain", "probed"], 2):
            start = time.perf_counter()
            if variant == "probed":
                with AllocatorPeak(torch.device("cpu"), resident()):
                    step(model, head, optimizer, x, y)
            else:
                step(model, head, optimizer, x, y)
            times[variant] = time.perf_counter() - start
        ratios.append(times["probed"] / times["plain"])
        plain_s.append(times["plain"])
    ratios.sort()
    median = statistics.median(ratios)
    quart = (ratios[len(ratios) // 4], ratios[(3 * len(ratios)) // 4])
    run_overhead = (median - 1) / EVERY
    payload = {
        "setup": {"backbone": "vit_tiny_patch16_224 (random init)", "img_size": args.size,
                  "batch": args.batch, "optimizer": "adam", "rounds": args.rounds,
                  "threads": torch.get_num_threads(), "step_peak_every": EVERY,
                  "load_average_before": load_before, "load_average_after": os.getloadavg()},
        "memory": {"step_peak_bytes": reading.peak_bytes, "accounting_bytes": accounting,
                   "saved_for_backward_bytes": meter.saved_bytes_per_step[-1],
                   "peak_over_accounting": reading.peak_bytes / accounting},
        "time": {"plain_step_s_median": statistics.median(plain_s),
                 "probed_over_plain_median": median, "probed_over_plain_iqr": list(quart),
                 "reported_time_overhead_at_every_25": run_overhead},
        "targets": [
            {"name": "real step peak >= accounting footprint (bytes)",
             "measured": reading.peak_bytes, "goal": f">= {accounting}",
             "met": reading.peak_bytes >= accounting},
            {"name": "training-time overhead of probing 1 step in 25",
             "measured": round(run_overhead, 4), "goal": f"<= {BUDGET}",
             "met": run_overhead <= BUDGET},
        ],
    }
    write_result("step_peak", payload)
    mib = 1024**2
    lines = [
        "# Real per-step memory peak vs the accounting figure", "",
        f"ViT-Ti/16 training step, {args.size} px, batch {args.batch}, Adam, every weight "
        f"trained; {torch.get_num_threads()} threads; load average before "
        f"{load_before[0]:.1f} (other jobs share the 2 cores). `python -m benchmarks.step_peak`.",
        "", *table_lines(["figure", "value"]),
        table_row(["real step peak (allocator + resident)", f"{reading.peak_bytes / mib:.1f} MiB"]),
        table_row(["accounting footprint (saved + params + grads + Adam state)",
                   f"{accounting / mib:.1f} MiB"]),
        table_row(["real / accounting", f"{reading.peak_bytes / accounting:.2f}"]),
        table_row(["plain step (median)", f"{statistics.median(plain_s):.3f} s"]),
        table_row(["probed / plain step time (median, IQR)",
                   f"{median:.2f} ({quart[0]:.2f}-{quart[1]:.2f})"]),
        table_row([f"overhead on reported training time, 1 step in {EVERY} probed",
                   f"{100 * run_overhead:.2f} %"]),
        "", "Targets:", "",
        *[f"- {t['name']}: {t['measured']} (goal {t['goal']}): {'met' if t['met'] else 'MISSED'}"
          for t in payload["targets"]], "",
    ]
    atomic_write_text(RESULTS / "step_peak.md", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
