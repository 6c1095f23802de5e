"""ViT-Ti training-step throughput at 224 px, batch 16, against this machine's matmul peak.

Achieved GFLOP/s = FLOPs executed by one training step (counted by edgecl's cost meter in a
separate, untimed pass) / median wall time of the step (timed with every counter off).
Writes results/vit_throughput.json. Run: python benchmarks/vit_throughput.py
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from benchmarks.common import matmul_peak_flops, median_seconds, write_result
from edgecl.backbones.vit import VisionTransformer
from edgecl.metrics.cost import CostMeter


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.manual_seed(0)
    vit = VisionTransformer()
    head = torch.nn.Linear(vit.embed_dim, 100)
    params = list(vit.parameters()) + list(head.parameters())
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    x = torch.randn(args.batch, 3, 224, 224)
    y = torch.randint(0, 100, (args.batch,))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(head(vit(x)), y).backward()
        opt.step()

    meter = CostMeter()
    with meter.active(), meter.phase("forward"):
        step()
    step_flops = meter.train_flops()["total"]
    peak = matmul_peak_flops()
    seconds = median_seconds(step, args.repeats, warmup=2)
    achieved = step_flops / seconds
    result = {
        "batch": args.batch,
        "resolution": 224,
        "step_flops": step_flops,
        "step_seconds_median": seconds,
        "images_per_second": args.batch / seconds,
        "achieved_gflops": achieved / 1e9,
        "matmul_peak_gflops": peak / 1e9,
        "fraction_of_peak": achieved / peak,
        "target_fraction": 0.5,
    }
    path = write_result("vit_throughput", result)
    print({k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
