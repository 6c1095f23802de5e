"""Latent replay's buffer stored at fp32, fp16, bf16 and int8: the memory saved and the
accuracy it costs, in one run on the same images.

Profile (default): Split CIFAR-100, the first ``tasks x 10`` classes in the fixed order,
``train_per_class`` training and ``test_per_class`` test images per class (the first in file
order), the local pretrained ViT-Ti/16 at 224 px, no augmentation, ViT-LR's latent replay with
``split_layer`` 9 (blocks 9-11 train on replayed 197 x 192 token latents), a buffer of
``rm_sz`` latents, CWR* head, frozen-prefix outputs cached (``cache_storage`` follows
``storage``, so new samples are rounded exactly as replayed ones). Only the storage differs
between the runs, so the accuracy deltas are paired: the same images, order and seed.

    EDGECL_DATA=../shared/data python -m benchmarks.latent_storage

Writes results/latent_storage.json and .md; run directories go to runs/latent_storage/.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import (
    RESULTS,
    class_il_summary,
    split_cifar100,
    table_lines,
    table_row,
    targets_section,
    timed_run,
    write_result,
)
from edgecl.config import RunConfig
from edgecl.io import atomic_write_text
from edgecl.schema import RunResults

MIB = 2**20
STORAGES = ("fp32", "fp16", "bf16", "int8")


def build_config(args: argparse.Namespace) -> RunConfig:
    method = {"name": "latent_replay", "split_layer": args.split_layer, "rm_sz": args.rm_sz,
              "mb_size": 100, "grow_buffer": True, "head": "cwr_star", "lr_init": 0.001,
              "lr_inc": 0.001, "momentum": 0.9, "weight_decay": 0.0005,
              "cache_features": True}
    return RunConfig.model_validate({
        "name": "latent_storage", "seed": 42, "threads": args.threads,
        "data": split_cifar100(args.tasks, args.train_per_class, args.test_per_class),
        "backbone": {"name": "vit_tiny_patch16_224"},
        "train": {"epochs": args.epochs, "batch_size": 16, "eval_batch_size": 50,
                  "augment": False},
        "optim": {"name": "sgd", "lr": 0.001, "momentum": 0.9, "weight_decay": 0.0005},
        "methods": [{**method, "label": f"latent_replay_{s}", "storage": s,
                     "cache_storage": s} for s in STORAGES],
    })


def summary(res: RunResults) -> dict[str, Any]:
    mem = res.cost.memory
    return {
        "method": res.run_name, **class_il_summary(res),
        "buffer_bytes": mem.buffer_bytes,
        "accounting_peak_bytes": mem.training_footprint_bytes,
        "train_seconds": res.cost.time_s.train_total,
    }


def targets(rows: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    base = rows["latent_replay_fp32"]
    out = []
    for s in STORAGES[1:]:
        r = rows[f"latent_replay_{s}"]
        saving = base["buffer_bytes"] / r["buffer_bytes"]
        goal = 3.5 if s == "int8" else 1.9
        delta = r["class_il_final"] - base["class_il_final"]
        out += [
            {"name": f"{s}: fp32 / {s} buffer bytes", "measured": saving,
             "goal": f">= {goal}", "met": saving >= goal},
            {"name": f"{s} - fp32 class-IL final (pts)", "measured": delta,
             "goal": ">= -1", "met": delta >= -1},
        ]
    return out


def markdown(res: dict[str, Any]) -> str:
    lines = ["# Latent buffer storage precision", "", f"Command: `{res['command']}`.", "",
             res["profile"], "",
             *table_lines(["storage", "class-IL final (%)", "Δ vs fp32 (pts)",
                           "forgetting (pts)", "buffer MiB", "fp32 / this buffer",
                           "accounting MiB"])]
    base = res["methods"]["latent_replay_fp32"]
    for r in res["methods"].values():
        lines.append(table_row([
            r["method"].removeprefix("latent_replay_"),
            f"{r['class_il_final']:.1f} ± {r['class_il_final_ci95']:.1f}",
            f"{r['class_il_final'] - base['class_il_final']:+.1f}", f"{r['forgetting']:.1f}",
            f"{r['buffer_bytes'] / MIB:.1f}", f"{base['buffer_bytes'] / r['buffer_bytes']:.2f}x",
            f"{r['accounting_peak_bytes'] / MIB:.0f}"]))
    lines += targets_section(res["targets"])
    lines += ["", *res["notes"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=5)
    parser.add_argument("--train-per-class", type=int, default=30)
    parser.add_argument("--test-per-class", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--split-layer", type=int, default=9)
    parser.add_argument("--rm-sz", type=int, default=500)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("runs/latent_storage"))
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    results, timing = timed_run(build_config(args), args.out, args.resume)
    rows = {r.run_name: summary(r) for r in results}
    res = {
        "command": "python -m benchmarks.latent_storage " + " ".join(sys.argv[1:]),
        "profile": (f"Split CIFAR-100, {args.tasks} tasks x 10 classes, {args.train_per_class}"
                    f" training and {args.test_per_class} test images per class (the first in "
                    f"file order), {args.epochs} epochs, batch 16, ViT-Ti/16 at 224 px, no "
                    f"augmentation; latent replay at split_layer {args.split_layer}, rm_sz "
                    f"{args.rm_sz}, mb_size 100, CWR* head, prefix outputs cached at the "
                    "same storage."),
        "methods": rows, "timing": timing, "targets": targets(rows),
        "notes": [
            "Buffer MiB: the latent buffer plus the prefix-output cache, values and int8 "
            "scales, at their stored size (the runner's buffer bytes at the peak step).",
            "The runs differ only in storage, so a delta is paired (same images, order, "
            "seed); the ± column is each accuracy's own 95 % interval from its number of "
            "test images, wider than the noise of a paired delta.",
            "Training seconds are in the JSON only: this benchmark measures memory and "
            "accuracy, and ran beside other work.",
            "fp16 and bf16 take the same bytes; bf16 keeps fp32's range with 3 fewer mantissa "
            "bits than fp16. int8 stores one fp32 scale per token (symmetric, max-abs / 127).",
        ],
    }
    write_result("latent_storage", res)
    atomic_write_text(RESULTS / "latent_storage.md", markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
