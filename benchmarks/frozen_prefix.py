"""Frozen-prefix methods against full-network CL on Split CIFAR-100, reduced profile, one process.

Finetune (all layers), ER, DER++ (when ``edgecl.methods.derpp`` imports), LightCL and latent
replay (ViT-LR) at two split depths, LightCL and latent replay each with and without the
per-sample feature cache, all through ``edgecl.runner.run`` on the same 10 tasks x 10
classes (fixed order), the local pretrained ViT-Ti/16 at 224 px, the same data order and the
same un-augmented inputs (``train.augment: false``: the feature cache needs it, and one input
pipeline keeps the comparison fair). Reduced profile (default): 6 training and 2 test images
per class, 2 epochs per task (so the cache has a later epoch to save), batch 16. LightCL
also runs with 11 frozen blocks and with the freeze point of a layer analysis
(``results/frozen_prefix_layers.json``, written by ``edgecl analyze-layers``; skipped when
the file is absent).

Optimizers: finetune/ER/DER++ SGD lr 0.001 momentum 0.9 (lr 0.01 with momentum 0.9 diverges
when the whole pretrained ViT trains); LightCL its reference's SGD lr 0.01 without momentum
(the same effective step); latent replay ViT-LR's SGD momentum 0.9, L2 5e-4 with lr 1e-3
on the first task and — a reduced-profile change, since a task here is 8 steps instead of
hundreds — lr 1e-3 rather than 5e-5 on later tasks. ER and DER++ keep 200 raw images;
latent replay 200 latents (``rm_sz``, fp32, ``grow_buffer`` so it reaches 200 like ER's).
DER++ draws 2 x 8 buffer images per step (16 replayed, as ER).

Writes results/frozen_prefix.json and results/frozen_prefix.md. Run directories go to
runs/frozen_prefix/ (``--resume`` reuses finished methods there).

    EDGECL_DATA=/work/shared/data python -m benchmarks.frozen_prefix
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, table_lines, table_row, timed_run, write_result
from edgecl.config import RunConfig
from edgecl.methods.base import TaskInfo
from edgecl.report import compare_markdown
from edgecl.runner import Callback, TrainingLoop
from edgecl.schema import RunResults

MIB = 1024**2
SGD_M = {"name": "sgd", "lr": 0.001, "momentum": 0.9}


def derpp_available() -> bool:
    try:
        importlib.import_module("edgecl.methods.derpp")
    except Exception:  # not written yet, or broken: skip it and say so
        return False
    return True


def method_entries(args: argparse.Namespace, with_derpp: bool) -> list[dict[str, Any]]:
    lightcl = {"name": "lightcl", "optim": {"name": "sgd", "lr": 0.01, "momentum": 0.0}}
    latent = {"name": "latent_replay", "rm_sz": args.buffer, "grow_buffer": True,
              "lr_inc": args.lr_inc}
    entries: list[dict[str, Any]] = [
        {"name": "finetune"},
        {"name": "er", "buffer_size": args.buffer},
    ]
    if with_derpp:
        entries.append({"name": "derpp", "buffer_size": args.buffer, "replay_batch_size": 8})
    entries += [
        {**lightcl, "label": "lightcl"},
        {**lightcl, "label": "lightcl_cache", "cache_features": True},
    ]
    for k in args.lightcl_extra:
        entries.append({**lightcl, "label": f"lightcl_k{k}", "freeze_until": k})
    if args.layer_analysis is not None and args.layer_analysis.is_file():
        entries.append({**lightcl, "label": "lightcl_auto", "freeze_until": "auto",
                        "layer_analysis": str(args.layer_analysis)})
    for k in args.splits:
        entries += [
            {**latent, "label": f"latent_replay_k{k}", "split_layer": k},
            {**latent, "label": f"latent_replay_k{k}_cache", "split_layer": k,
             "cache_features": True},
        ]
    return entries


def build_config(args: argparse.Namespace, with_derpp: bool) -> RunConfig:
    cfg = RunConfig(**{
        "name": "frozen_prefix",
        "seed": 42,
        "data": {
            "dataset": "cifar100", "n_tasks": args.n_tasks, "class_order": "fixed",
            "train_per_class": args.train_per_class, "test_per_class": args.test_per_class,
        },
        "backbone": {"name": "vit_tiny_patch16_224"},
        "train": {"epochs": args.epochs, "batch_size": args.batch_size, "eval_batch_size": 50,
                  "augment": False},
        "optim": SGD_M,
        "methods": method_entries(args, with_derpp),
    })
    return cfg


class CpuTimePerTask(Callback):
    """Adds the process CPU seconds of each task's training to its per-task record
    (``extra.train_cpu_s``): wall time per phase swings with other users' load on a shared
    machine, CPU time of this process much less. It includes the prefetch thread (the same
    work for every method). A task resumed part way counts from the resume."""

    def __init__(self) -> None:
        self.start = time.process_time()

    def on_train_start(self, loop: TrainingLoop) -> None:
        self.start = time.process_time()

    def on_task_start(self, loop: TrainingLoop, task: TaskInfo) -> None:
        self.start = time.process_time()

    def on_task_end(self, loop: TrainingLoop, task: TaskInfo) -> None:
        loop.per_task[-1].setdefault("extra", {})["train_cpu_s"] = (
            time.process_time() - self.start)


def summary(res: RunResults) -> dict[str, Any]:
    flops, mem, secs = res.cost.flops, res.cost.memory, res.cost.time_s
    cil, til = res.accuracy.class_il, res.accuracy.task_il
    per_task = [t.train_time_s for t in res.per_task]
    cpu = [t.extra.get("train_cpu_s", float("nan")) for t in res.per_task]
    return {
        "method": res.run_name,
        "class_il_final": cil.final_average,
        "class_il_forgetting": cil.forgetting,
        "task_il_final": til.final_average if til else None,
        "task_il_forgetting": til.forgetting if til else None,
        "training_footprint_bytes": mem.training_footprint_bytes,
        "peak_saved_for_backward_bytes": mem.peak_saved_for_backward_bytes,
        "parameter_bytes": mem.parameter_bytes,
        "gradient_bytes": mem.gradient_bytes,
        "optimizer_state_bytes": mem.optimizer_state_bytes,
        "buffer_bytes": mem.buffer_bytes,
        "train_flops": flops.train.total,
        "train_flops_forward": flops.train.forward,
        "train_flops_backward": flops.train.backward,
        "train_flops_prefix": flops.train.prefix,
        "train_seconds": secs.train_total,
        "train_seconds_per_task": sum(per_task) / len(per_task),
        "train_cpu_seconds_per_task": sum(cpu) / len(cpu),
        "eval_seconds": secs.eval,
        "wall_seconds": secs.wall_total,
        "class_il_matrix": cil.matrix,
    }


def add_ratios(rows: list[dict[str, Any]]) -> None:
    er = next((r for r in rows if r["method"] == "er"), None)
    for r in rows:
        if er is None:
            continue
        r["memory_ratio_er_over_this"] = er["training_footprint_bytes"] / r[
            "training_footprint_bytes"]
        r["time_per_task_ratio_er_over_this"] = er["train_seconds_per_task"] / r[
            "train_seconds_per_task"]
        r["cpu_time_per_task_ratio_er_over_this"] = er["train_cpu_seconds_per_task"] / r[
            "train_cpu_seconds_per_task"]
        r["flops_ratio_er_over_this"] = er["train_flops"] / r["train_flops"]


def markdown_table(rows: list[dict[str, Any]]) -> str:
    headers = [
        "Method", "Class-IL acc (%)", "Forgetting (pts)", "Task-IL acc (%)",
        "Train memory (MiB)", "of which saved act. (MiB)", "Buffers (MiB)", "ER / this memory",
        "Train time / task (s)", "ER / this time", "CPU time / task (s)", "ER / this CPU",
        "Train GFLOPs", "ER / this FLOPs", "Wall (s)",
    ]
    lines = table_lines(headers)
    for r in rows:
        cells = [
            r["method"], f"{r['class_il_final']:.1f}", f"{r['class_il_forgetting']:.1f}",
            f"{r['task_il_final']:.1f}", f"{r['training_footprint_bytes'] / MIB:.1f}",
            f"{r['peak_saved_for_backward_bytes'] / MIB:.1f}", f"{r['buffer_bytes'] / MIB:.2f}",
            f"{r.get('memory_ratio_er_over_this', float('nan')):.2f}x",
            f"{r['train_seconds_per_task']:.1f}",
            f"{r.get('time_per_task_ratio_er_over_this', float('nan')):.2f}x",
            f"{r['train_cpu_seconds_per_task']:.1f}",
            f"{r.get('cpu_time_per_task_ratio_er_over_this', float('nan')):.2f}x",
            f"{r['train_flops'] / 1e9:,.0f}",
            f"{r.get('flops_ratio_er_over_this', float('nan')):.2f}x",
            f"{r['wall_seconds']:.0f}",
        ]
        lines.append(table_row(cells))
    return "\n".join(lines)


def resnet_step_memory(batch_size: int) -> dict[str, Any]:
    """ER vs LightCL training memory for one task-1 step on CIFAR ResNet-18 (32 px).

    The LightCL paper's backbone: its reference split (layer4 trains). Synthetic images (the
    bytes do not depend on pixel values); ER replays ``batch_size`` buffered images, LightCL
    keeps its 15-image buffer.
    """
    import torch

    from edgecl.backbones.cnn import CifarResNet18
    from edgecl.backbones.registry import backbone_entry
    from edgecl.data.transforms import eval_transform
    from edgecl.methods.base import Batch, BenchmarkInfo, OptimConfig, TaskInfo
    from edgecl.methods.er import ER, ERParams
    from edgecl.methods.lightcl import LightCL, LightCLParams
    from edgecl.metrics.cost import CostMeter

    classes = [torch.arange(0, 10), torch.arange(10, 20)]
    out: dict[str, Any] = {"batch_size": batch_size}
    methods = {
        "er": ER(ERParams(buffer_size=max(200, batch_size)), OptimConfig(lr=0.001, momentum=0.9)),
        "lightcl": LightCL(LightCLParams(), OptimConfig(lr=0.01)),
    }
    entry = backbone_entry("resnet18_cifar")
    for name, method in methods.items():
        torch.manual_seed(0)
        meter = CostMeter()
        info = BenchmarkInfo(20, 2, classes, eval_transform(32, entry.mean, entry.std),
                             torch.device("cpu"), meter, 0, [1, 1], 32)
        method.setup(CifarResNet18(), info)
        meter.watch_parameters([method.modules])
        g = torch.Generator().manual_seed(0)
        for t in (0, 1):
            task = TaskInfo(t, classes[t], batch_size, 1)
            method.begin_task(task)
            raw = torch.randint(0, 256, (batch_size, 32, 32, 3), generator=g, dtype=torch.uint8)
            y = classes[t][torch.randint(0, 10, (batch_size,), generator=g)]
            batch = Batch(info.train_transform(raw), y, raw, torch.arange(batch_size), t)
            with meter.training_step():
                method.observe(batch)
            mem = method.memory_breakdown()
            if t == 0:
                method.end_task(task)
        saved = meter.saved_bytes_per_step[-1]
        state = sum(mem[k] for k in ("parameter_bytes", "gradient_bytes",
                                     "optimizer_state_bytes", "buffer_bytes"))
        out[name] = {"peak_saved_for_backward_bytes": saved, **mem,
                     "training_footprint_bytes": saved + state}
    out["memory_ratio_er_over_lightcl"] = (out["er"]["training_footprint_bytes"]
                                           / out["lightcl"]["training_footprint_bytes"])
    return out


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-tasks", type=int, default=10)
    parser.add_argument("--train-per-class", type=int, default=6)
    parser.add_argument("--test-per-class", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--buffer", type=int, default=200)
    parser.add_argument("--splits", type=int, nargs="+", default=[12, 9])
    parser.add_argument("--lr-inc", type=float, default=1e-3)
    parser.add_argument("--lightcl-extra", type=int, nargs="*", default=[11],
                        help="further LightCL freeze points (number of frozen blocks)")
    parser.add_argument("--layer-analysis", type=Path,
                        default=RESULTS / "frozen_prefix_layers.json",
                        help="analysis.json of `edgecl analyze-layers` for lightcl_auto")
    parser.add_argument("--resnet-memory", type=int, nargs="*", default=None, metavar="BATCH",
                        help="only measure ER vs LightCL memory of one step on CIFAR ResNet-18 "
                             "at these batch sizes (results/frozen_prefix_resnet_memory.json)")
    parser.add_argument("--out", type=Path, default=Path("runs/frozen_prefix"))
    parser.add_argument("--resume", action="store_true", help="reuse finished methods in --out")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.resnet_memory is not None:
        rows = [resnet_step_memory(b) for b in args.resnet_memory or [16, 128]]
        path = write_result("frozen_prefix_resnet_memory", {"measurements": rows})
        for r in rows:
            print(f"batch {r['batch_size']}: ER {r['er']['training_footprint_bytes'] / MIB:.1f} "
                  f"MiB, LightCL {r['lightcl']['training_footprint_bytes'] / MIB:.1f} MiB, "
                  f"ratio {r['memory_ratio_er_over_lightcl']:.2f}x")
        print(f"wrote {path}")
        return
    with_derpp = derpp_available()
    cfg = build_config(args, with_derpp)
    results, timing = timed_run(cfg, args.out, args.resume,
                                callbacks=lambda spec: [CpuTimePerTask()])
    rows = [summary(r) for r in results]
    add_ratios(rows)
    command = ("EDGECL_DATA=/work/shared/data python -m benchmarks.frozen_prefix "
               + " ".join(sys.argv[1:])).strip()
    path = write_result("frozen_prefix", {
        "command": command,
        "profile": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                    if k not in ("out", "resume")},
        "derpp_included": with_derpp,
        **timing,
        "config": cfg.model_dump(mode="json"),
        "methods": rows,
    })
    table = markdown_table(rows)
    note = (
        f"Split CIFAR-100, {args.n_tasks} tasks, ViT-Ti/16 at 224 px, no augmentation; "
        f"{args.train_per_class} train / {args.test_per_class} test images per class, "
        f"{args.epochs} epochs, batch {args.batch_size}, buffers of {args.buffer}. Train "
        "memory = the largest step's saved-for-backward activations + parameters + gradients "
        "+ optimizer state + buffers/caches. Train GFLOPs = every training part, the frozen "
        "prefix's no-grad passes included. Train time / task = wall seconds of the training "
        "phases (data, prefix, forward, backward, step; no evaluation); CPU time = this "
        "process's CPU "
        "seconds over the same span (less sensitive to other users' load). Ratios are ER's "
        "value divided by the method's. "
        + ("" if with_derpp else "DER++ skipped: edgecl.methods.derpp did not import. ")
        + f"Total wall time {timing['wall_seconds_total'] / 60:.1f} min; 1-min load average "
        f"before/after {timing['load_average_before'][0]:.1f}/"
        f"{timing['load_average_after'][0]:.1f} on {os.cpu_count()} cores."
    )
    md = f"# Frozen-prefix methods, reduced profile\n\n`{command}`\n\n{note}\n\n{table}\n\n"
    md += compare_markdown(results)
    (RESULTS / "frozen_prefix.md").write_text(md)
    print(table)
    minutes = timing["wall_seconds_total"] / 60
    print(f"wrote {path} and {RESULTS / 'frozen_prefix.md'} in {minutes:.1f} min")


if __name__ == "__main__":
    main()
