"""bf16 against fp32 for every method family, in one run: the accuracy delta and the time and
memory ratios.

Each family runs twice on the same images, order and seed, once with ``train.precision`` and
``eval.precision`` fp32 and once bf16 (autocast, fp32 master weights: see
``edgecl/efficiency/precision.py``), so the accuracy delta is paired. Families and their
representative method:

- prompting: L2P on the pretrained ViT-Ti/16;
- REP: L2P + REP on the same ViT (selector at half the input resolution);
- rehearsal: ER on the pretrained CIFAR ResNet-20;
- SparCL: SparCL (over DER++) on the same ResNet-20;
- frozen prefix: latent replay on the ViT (blocks 9-11 train, prefix outputs cached).

The default profile is small on purpose: on a CPU without native bf16, autocast emulates
bf16 and runs tens of times slower than fp32, which this benchmark measures and reports rather
than hides. The ViT runs at ``--vit-size`` px (default 64: 16 patches + CLS) so the emulated
runs finish in minutes; the CNN at CIFAR's 32 px. With native bf16, run the ViT at 224 px and
a larger profile (the committed results: ``--vit-size 224 --tasks 5 --classes-per-task 10
--train-per-class 20 --test-per-class 20``).

    EDGECL_DATA=../shared/data python -m benchmarks.precision_families

Writes results/precision_families.json and .md; run directories go to
runs/precision_families/.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    RESULTS,
    class_il_summary,
    split_cifar100,
    table_lines,
    table_row,
    targets_section,
    write_result,
)
from edgecl.config import RunConfig
from edgecl.efficiency.precision import cpu_has_native_bf16
from edgecl.io import atomic_write_text
from edgecl.runner import run
from edgecl.schema import RunResults

MIB = 2**20
ADAM_CLIP = {"name": "adam", "lr": 0.03 * 16 / 256, "betas": [0.9, 0.999], "grad_clip": 1.0,
             "reset_each_task": True}
SGD = {"name": "sgd", "lr": 0.01, "momentum": 0.9}
VIT, CNN = "vit_tiny_patch16_224", "resnet20_cifar10"


def families(vit_size: int) -> dict[str, tuple[str, dict[str, Any]]]:
    """family -> (backbone, method entry)."""
    return {
        "prompting": (VIT, {"name": "l2p", "optim": ADAM_CLIP}),
        "rep": (VIT, {"name": "l2p_rep", "optim": ADAM_CLIP,
                      "selector": {"resolution": vit_size // 2}}),
        "rehearsal": (CNN, {"name": "er", "buffer_size": 100, "optim": SGD}),
        "sparcl": (CNN, {"name": "sparcl", "buffer_size": 100, "replay_batch_size": 16,
                         "sparsity": 0.75, "optim": SGD}),
        "frozen_prefix": (VIT, {"name": "latent_replay", "split_layer": 9, "rm_sz": 100,
                                "mb_size": 100, "head": "cwr_star", "cache_features": True,
                                "lr_init": 0.001, "lr_inc": 0.001}),
    }


def build_config(args: argparse.Namespace, backbone: str, entries: list[dict[str, Any]],
                 ) -> RunConfig:
    runs = []
    for entry in entries:
        for precision in ("fp32", "bf16"):
            method = {k: v for k, v in entry.items() if k != "family"}
            runs.append({**method, "label": f"{entry['family']}_{precision}",
                         "train": {"precision": precision}})
    return RunConfig.model_validate({
        "name": f"precision_{backbone}", "seed": 42, "threads": args.threads,
        "data": split_cifar100(args.tasks, args.train_per_class, args.test_per_class,
                               args.classes_per_task),
        "backbone": {"name": backbone, "img_size": args.vit_size if backbone == VIT else None},
        "train": {"epochs": 1, "batch_size": 16, "eval_batch_size": 50, "augment": "none"},
        "optim": SGD, "cost": {"step_peak_every": 5},
        "methods": runs,
    })


def summary(res: RunResults) -> dict[str, Any]:
    mem = res.cost.memory
    return {
        "run": res.run_name,
        "precision": res.cost.flops.precision,
        **class_il_summary(res),
        "train_seconds": res.cost.time_s.train_total,
        "eval_seconds": res.cost.time_s.eval,
        "step_peak_bytes": mem.step_peak_bytes,
        "accounting_peak_bytes": mem.training_footprint_bytes,
        "flops_by_dtype": res.cost.flops.by_dtype,
    }


def compare(rows: dict[str, dict[str, Any]], family: str) -> dict[str, Any]:
    a, b = rows[f"{family}_fp32"], rows[f"{family}_bf16"]

    def ratio(key: str) -> float | None:
        return b[key] / a[key] if a[key] and b[key] else None

    # accuracies arrive as float32 percentages: rounding keeps a delta of exactly one test
    # image from reading as 1.0000001 points
    delta = round(b["class_il_final"] - a["class_il_final"], 6)
    return {"family": family, "accuracy_delta": delta,
            "train_time_ratio": ratio("train_seconds"), "eval_time_ratio": ratio("eval_seconds"),
            "step_peak_ratio": ratio("step_peak_bytes"),
            "accounting_ratio": ratio("accounting_peak_bytes")}


def targets(pairs: list[dict[str, Any]], native: bool) -> list[dict[str, Any]]:
    out = []
    for p in pairs:
        f = p["family"]
        out.append({"name": f"{f}: bf16 - fp32 class-IL final (pts)",
                    "measured": p["accuracy_delta"], "goal": ">= -1",
                    "met": p["accuracy_delta"] >= -1})
        t = p["train_time_ratio"]
        out.append({"name": f"{f}: bf16 / fp32 training time"
                            + ("" if native else " (bf16 emulated on this CPU)"),
                    "measured": t, "goal": "< 1", "met": t is not None and t < 1})
    return out


def fmt(x: float | None, spec: str = ".2f") -> str:
    return "n/a" if x is None else format(x, spec)


def markdown(res: dict[str, Any]) -> str:
    lines = ["# bf16 against fp32, per method family", "", f"Command: `{res['command']}`.", "",
             res["profile"], "", res["hardware"], "",
             f"Wall time {res['timing']['wall_seconds_total'] / 60:.1f} min; 1-min load average "
             f"before/after {res['timing']['load_average_before'][0]:.1f}/"
             f"{res['timing']['load_average_after'][0]:.1f} on {os.cpu_count()} cores (above "
             "the core count, the time ratios carry the other work's noise too).", "",
             *table_lines(["run", "class-IL final (%)", "forgetting (pts)", "train s",
                           "eval s", "step peak MiB", "accounting MiB"])]
    for r in res["runs"].values():
        lines.append(table_row([
            r["run"], f"{r['class_il_final']:.1f} ± {r['class_il_final_ci95']:.1f}",
            f"{r['forgetting']:.1f}", f"{r['train_seconds']:.1f}", f"{r['eval_seconds']:.1f}",
            fmt(r["step_peak_bytes"] and r["step_peak_bytes"] / MIB, ".0f"),
            f"{r['accounting_peak_bytes'] / MIB:.0f}"]))
    lines += ["", "bf16 relative to fp32 (same process, same images):", "",
              *table_lines(["family", "Δ class-IL (pts)", "train time", "eval time",
                            "step peak", "accounting memory"])]
    for p in res["pairs"]:
        lines.append(table_row([p["family"], f"{p['accuracy_delta']:+.1f}",
                                fmt(p["train_time_ratio"]), fmt(p["eval_time_ratio"]),
                                fmt(p["step_peak_ratio"]), fmt(p["accounting_ratio"])]))
    lines += targets_section(res["targets"])
    lines += ["", *res["notes"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", nargs="+", default=list(families(64)),
                        choices=list(families(64)))
    parser.add_argument("--tasks", type=int, default=2)
    parser.add_argument("--classes-per-task", type=int, default=5)
    parser.add_argument("--train-per-class", type=int, default=16)
    parser.add_argument("--test-per-class", type=int, default=20)
    parser.add_argument("--vit-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("runs/precision_families"))
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    chosen = {f: v for f, v in families(args.vit_size).items() if f in args.families}
    load_before, start = os.getloadavg(), time.perf_counter()
    rows: dict[str, dict[str, Any]] = {}
    for backbone in (VIT, CNN):
        entries = [{**entry, "family": f} for f, (b, entry) in chosen.items() if b == backbone]
        if entries:
            cfg = build_config(args, backbone, entries)
            rows |= {r.run_name: summary(r) for r in run(cfg, args.out / backbone,
                                                         resume=args.resume)}
    pairs = [compare(rows, f) for f in chosen]
    native = cpu_has_native_bf16()
    res = {
        "command": "python -m benchmarks.precision_families " + " ".join(sys.argv[1:]),
        "profile": (f"Split CIFAR-100, {args.tasks} tasks x {args.classes_per_task} classes, "
                    f"{args.train_per_class} training and {args.test_per_class} test images "
                    "per class (the first in file order), 1 epoch, batch 16, no augmentation; "
                    f"pretrained ViT-Ti/16 at {args.vit_size} px, pretrained CIFAR ResNet-20 "
                    "at 32 px."),
        "hardware": ("This CPU reports native bf16 (AVX512-BF16 or AMX)." if native else
                     "This CPU has no native bf16 (no AVX512-BF16, no AMX): autocast emulates "
                     "bf16 in software, so bf16 time ratios here measure the emulation, not "
                     "the format; `train.precision: auto` resolves to fp32 on it."),
        "runs": rows, "pairs": pairs, "targets": targets(pairs, native),
        "timing": {"wall_seconds_total": time.perf_counter() - start,
                   "load_average_before": load_before, "load_average_after": os.getloadavg()},
        "notes": [
            "The two runs of a family differ only in precision, so the accuracy delta is "
            "paired; the ± column is each accuracy's own 95 % interval.",
            "Step peak: the allocator-measured per-step peak (cost.step_peak_every = 5); "
            "accounting: saved activations at their stored dtype + parameters, gradients, "
            "optimizer state (fp32 master copies) and buffers of the largest step.",
        ],
    }
    write_result("precision_families", res)
    atomic_write_text(RESULTS / "precision_families.md", markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
