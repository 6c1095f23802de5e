"""Prompt methods against finetune and ER on Split CIFAR-100, reduced profile, one process.

Finetune, ER, L2P, DualPrompt and CODA-Prompt train through the same 10 tasks x 10 classes
(fixed class order, 224 px, the local pretrained ViT-Ti/16) with ``edgecl.runner.run``, each
on a fresh copy of the backbone and the same data order. Reduced profile (default): 8 training
and 5 test images per class, 1 epoch per task, batch 16 for every method (a task then has 5
steps). Each prompt method keeps its protocol optimizer, rescaled to batch 16 where its
reference scales lr with the batch (L2P, DualPrompt: 0.03 * 16 / 256); finetune and ER use
Adam at lr 1e-4 (the default comparison's optimizer), ER a 200-example buffer.

Writes results/prompting.json (per-method summary, accuracy matrices, the config) and
results/prompting.md (the table + edgecl's comparison table). Run directories go to
runs/prompting/ (``--resume`` reuses finished methods there).

    EDGECL_DATA=/work/shared/data python -m benchmarks.prompting
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, table_lines, table_row, timed_run, write_result
from edgecl.config import RunConfig
from edgecl.report import compare_markdown
from edgecl.schema import RunResults

MIB = 1024**2
ADAM_CLIP = {"name": "adam", "betas": [0.9, 0.999], "grad_clip": 1.0, "reset_each_task": True}


def build_config(args: argparse.Namespace) -> RunConfig:
    scaled_lr = 0.03 * args.batch_size / 256
    tree: dict[str, Any] = {
        "name": "prompting",
        "seed": 42,
        "threads": args.threads,
        "data": {
            "dataset": "cifar100", "n_tasks": 10, "class_order": "fixed",
            "train_per_class": args.train_per_class, "test_per_class": args.test_per_class,
        },
        "backbone": {"name": "vit_tiny_patch16_224"},
        "train": {"epochs": args.epochs, "batch_size": args.batch_size, "eval_batch_size": 50},
        "optim": {"name": "adam", "lr": 1e-4},
        "methods": [
            {"name": "finetune"},
            {"name": "er", "buffer_size": 200},
            {"name": "l2p", "optim": {**ADAM_CLIP, "lr": scaled_lr}},
            {"name": "dualprompt", "optim": {**ADAM_CLIP, "lr": scaled_lr}},
            {"name": "coda_prompt", "optim": {
                "name": "adam", "lr": 1e-3, "reset_each_task": True, "lr_schedule": "cosine"}},
        ],
    }
    cfg = RunConfig(**tree)
    return cfg


def summary(res: RunResults) -> dict[str, Any]:
    flops, mem, secs = res.cost.flops, res.cost.memory, res.cost.time_s
    cil, til = res.accuracy.class_il, res.accuracy.task_il
    train = flops.train
    return {
        "method": res.run_name,
        "class_il_final": cil.final_average,
        "class_il_forgetting": cil.forgetting,
        "task_il_final": til.final_average if til else None,
        "selection_flops": train.selection,
        "update_flops": train.total - train.selection,
        "selection_share": train.selection / train.total,
        "training_footprint_bytes": mem.training_footprint_bytes,
        "peak_saved_for_backward_bytes": mem.peak_saved_for_backward_bytes,
        "trainable_parameter_bytes": mem.trainable_parameter_bytes,
        "selection_seconds": secs.selection,
        "train_seconds": secs.train_total,
        "eval_seconds": secs.eval,
        "wall_seconds": secs.wall_total,
        "class_il_matrix": cil.matrix,
    }


def markdown_table(rows: list[dict[str, Any]]) -> str:
    headers = [
        "Method", "Class-IL acc (%)", "Forgetting (pts)", "Task-IL acc (%)",
        "Selection GFLOPs", "Update GFLOPs", "Selection share", "Train memory (MiB)",
        "Trainable (KiB)", "Train time (s)", "Wall time (s)",
    ]
    lines = table_lines(headers)
    for r in rows:
        cells = [
            r["method"], f"{r['class_il_final']:.1f}", f"{r['class_il_forgetting']:.1f}",
            f"{r['task_il_final']:.1f}", f"{r['selection_flops'] / 1e9:,.0f}",
            f"{r['update_flops'] / 1e9:,.0f}", f"{100 * r['selection_share']:.0f}%",
            f"{r['training_footprint_bytes'] / MIB:.1f}",
            f"{r['trainable_parameter_bytes'] / 1024:,.0f}", f"{r['train_seconds']:.0f}",
            f"{r['wall_seconds']:.0f}",
        ]
        lines.append(table_row(cells))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-per-class", type=int, default=8)
    parser.add_argument("--test-per-class", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--out", type=Path, default=Path("runs/prompting"))
    parser.add_argument("--resume", action="store_true", help="reuse finished methods in --out")
    args = parser.parse_args()
    cfg = build_config(args)
    results, timing = timed_run(cfg, args.out, args.resume)
    rows = [summary(r) for r in results]
    command = "python -m benchmarks.prompting " + " ".join(sys.argv[1:])
    path = write_result("prompting", {
        "command": command.strip(),
        "profile": {k: v for k, v in vars(args).items() if k not in ("out", "resume")},
        **timing,
        "config": cfg.model_dump(mode="json"),
        "methods": rows,
    })
    table = markdown_table(rows)
    note = (
        f"Split CIFAR-100, 10 tasks, ViT-Ti/16 at 224 px; {args.train_per_class} train / "
        f"{args.test_per_class} test images per class, {args.epochs} epoch(s), batch "
        f"{args.batch_size}. Selection = the frozen query pass of the prompt methods (training "
        "only); update = every other part of the training FLOPs (forward + backward + "
        "optimizer, and any frozen-prefix or other passes). Train memory = the largest step's "
        "saved activations + parameters + gradients + optimizer state + buffers. "
        f"Total wall time {timing['wall_seconds_total'] / 60:.1f} min; 1-min load average "
        f"before/after {timing['load_average_before'][0]:.1f}/"
        f"{timing['load_average_after'][0]:.1f} on {os.cpu_count()} cores."
    )
    md = f"# Prompt methods, reduced profile\n\n`{command.strip()}`\n\n{note}\n\n{table}\n\n"
    md += compare_markdown(results)
    (RESULTS / "prompting.md").write_text(md)
    print(table)
    minutes = timing["wall_seconds_total"] / 60
    print(f"wrote {path} and {RESULTS / 'prompting.md'} in {minutes:.1f} min")


if __name__ == "__main__":
    main()
