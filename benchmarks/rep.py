"""REP against its host prompt methods on Split CIFAR-100, reduced profile, one process.

L2P vs L2P+REP, DualPrompt vs DualPrompt+REP, CODA-Prompt vs CODA-Prompt+REP, then the
ablations on L2P, trained one after another by ``edgecl.runner.run`` on fresh copies of the
local pretrained ViT-Ti/16 with the same data order: 10 tasks x 10 classes (fixed order),
224 px. Reduced profile (default): 8 training and 3 test images per class, 1 epoch per task,
batch 16 (5 steps per task), each host with its protocol optimizer (as
benchmarks/prompting.py). Hosts and their REP runs are adjacent so that a pair sees the same
machine load.

REP runs use the paper's defaults: the selector is the same weights at 112 px with query
caching, AToM (r_max 8 for L2P, 6 for DualPrompt/CODA), ALD (θ̄ 0.5, γ 0.001, α 0.9, τ 16 /
12) on the actual step count. Over a 50-step run that schedule keeps θ ≥ 0.93, so two more
runs stretch ALD's clock to REP's 10 x 1875-step protocol (``ald_reference_steps``), the
regime the paper's savings come from. Ablations on L2P: swift selection only (+ cache),
+ AToM, + ALD (stretched clock), all three (stretched clock).

Per pair: training wall-time ratio (every training phase: data, selection, prefix, forward,
backward, step), training-memory ratios (saved-for-backward + parameters + gradients +
optimizer state + buffers; at the largest step and at the mean step), training-FLOPs ratio
(``flops.train.total``: forward + backward + optimizer + selection, and any prefix or other
passes) and accuracy / forgetting deltas (class-IL, points).

Writes results/rep.json and results/rep.md; run directories go to runs/rep/ (``--resume``
reuses finished methods there).

    EDGECL_DATA=/work/shared/data python -m benchmarks.rep
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, table_lines, table_row, timed_run, write_result
from edgecl.config import RunConfig
from edgecl.schema import RunResults

MIB = 1024**2
ADAM_CLIP = {"name": "adam", "betas": [0.9, 0.999], "grad_clip": 1.0, "reset_each_task": True}
# (REP run label, host method); the host runs under its own name
PAIRS = [("l2p+rep", "l2p"), ("dualprompt+rep", "dualprompt"), ("coda_prompt+rep", "coda_prompt")]
# (label, flags); "scaled": ALD's clock stretched to --reference-steps
ABLATIONS = [
    ("l2p+rep_sel", {"atom": False, "ald": False}),
    ("l2p+rep_sel+atom", {"ald": False}),
    ("l2p+rep_sel+ald_scaled", {"atom": False, "scaled": True}),
    ("l2p+rep_scaled", {"scaled": True}),
]
PHASES = ("data", "selection", "forward", "backward", "step", "eval")  # time_s fields kept


def rep_fields(args: argparse.Namespace, host: str, scaled: bool = False) -> dict[str, Any]:
    prefix_host = host != "l2p"
    return {
        "selector": {"resolution": args.selector_resolution},
        "cache_queries": not args.no_cache,
        "r_max": 6 if prefix_host else 8,
        "ald_tau": 12 if prefix_host else 16,
        "ald_reference_steps": args.reference_steps if scaled else None,
    }


def build_config(args: argparse.Namespace) -> RunConfig:
    scaled = {**ADAM_CLIP, "lr": 0.03 * args.batch_size / 256}
    optims = {
        "l2p": scaled,
        "dualprompt": scaled,
        "coda_prompt": {"name": "adam", "lr": 1e-3, "reset_each_task": True,
                        "lr_schedule": "cosine"},
    }
    methods: list[dict[str, Any]] = []
    for label, host in PAIRS:
        methods.append({"name": host, "optim": optims[host]})
        methods.append({"name": f"{host}_rep", "label": label, "optim": optims[host],
                        **rep_fields(args, host)})
    if not args.no_ablations:
        for label, flags in ABLATIONS:
            flags = dict(flags)
            scaled = bool(flags.pop("scaled", False))
            methods.append({"name": "l2p_rep", "label": label, "optim": optims["l2p"],
                            **rep_fields(args, "l2p", scaled), **flags})
    if args.no_cache_variant:
        methods.append({"name": "l2p_rep", "label": "l2p+rep_nocache", "optim": optims["l2p"],
                        **rep_fields(args, "l2p"), "cache_queries": False})
    tree: dict[str, Any] = {
        "name": "rep",
        "seed": 42,
        "threads": args.threads,
        "data": {
            "dataset": "cifar100", "n_tasks": args.n_tasks, "class_order": "fixed",
            "train_per_class": args.train_per_class, "test_per_class": args.test_per_class,
        },
        "backbone": {"name": "vit_tiny_patch16_224"},
        "train": {"epochs": args.epochs, "batch_size": args.batch_size, "eval_batch_size": 50},
        "methods": methods,
    }
    cfg = RunConfig(**tree)
    return cfg


def summary(res: RunResults) -> dict[str, Any]:
    flops, mem, secs = res.cost.flops, res.cost.memory, res.cost.time_s
    cil, til = res.accuracy.class_il, res.accuracy.task_il
    return {
        "method": res.run_name,
        "class_il_final": cil.final_average,
        "class_il_forgetting": cil.forgetting,
        "task_il_final": til.final_average if til else None,
        "train_flops": flops.train.total,
        "selection_flops": flops.train.selection,
        "forward_flops": flops.train.forward,
        "backward_flops": flops.train.backward,
        "eval_flops": flops.eval,
        "memory_peak_bytes": mem.training_footprint_bytes,
        "memory_mean_bytes": mem.training_footprint_mean_bytes,
        "saved_peak_bytes": mem.peak_saved_for_backward_bytes,
        "saved_mean_bytes": mem.mean_saved_for_backward_bytes,
        # the largest state of any step (the footprint's step may hold less saved activations
        # than the peak, so footprint - peak saved is no longer the state)
        "state_bytes": (mem.parameter_bytes + mem.gradient_bytes + mem.optimizer_state_bytes
                        + mem.buffer_bytes),
        "buffer_bytes": mem.buffer_bytes,
        "train_seconds": secs.train_total,
        "phase_seconds": {p: getattr(secs, p) for p in PHASES},
        "wall_seconds": secs.wall_total,
        "class_il_matrix": cil.matrix,
    }


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def compare(rep: dict[str, Any], host: dict[str, Any]) -> dict[str, Any]:
    return {
        "rep": rep["method"],
        "host": host["method"],
        "time_ratio": ratio(rep["train_seconds"], host["train_seconds"]),
        "memory_peak_ratio": ratio(rep["memory_peak_bytes"], host["memory_peak_bytes"]),
        "memory_mean_ratio": ratio(rep["memory_mean_bytes"], host["memory_mean_bytes"]),
        "flops_ratio": ratio(rep["train_flops"], host["train_flops"]),
        "accuracy_delta": rep["class_il_final"] - host["class_il_final"],
        "forgetting_delta": rep["class_il_forgetting"] - host["class_il_forgetting"],
        "task_il_delta": rep["task_il_final"] - host["task_il_final"],
        "phase_time_ratios": {
            p: ratio(rep["phase_seconds"][p], host["phase_seconds"][p])
            for p in ("selection", "forward", "backward")
        },
    }


def comparisons(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by = {r["method"]: r for r in rows}
    hosts = {label: host for label, host in PAIRS}
    hosts.update({label: "l2p" for label, _ in ABLATIONS})
    hosts["l2p+rep_nocache"] = "l2p"
    return [compare(by[rep], by[host]) for rep, host in hosts.items()
            if rep in by and host in by]


def pair_table(pairs: list[dict[str, Any]]) -> str:
    headers = ["REP run", "vs", "Train time ratio", "Train memory ratio (peak step)",
               "Train memory ratio (mean step)", "Train FLOPs ratio", "Δ class-IL acc (pts)",
               "Δ forgetting (pts)", "Δ task-IL acc (pts)"]
    lines = table_lines(headers)
    for p in pairs:
        cells = [p["rep"], p["host"], f"{p['time_ratio']:.2f}", f"{p['memory_peak_ratio']:.2f}",
                 f"{p['memory_mean_ratio']:.2f}", f"{p['flops_ratio']:.2f}",
                 f"{p['accuracy_delta']:+.1f}", f"{p['forgetting_delta']:+.1f}",
                 f"{p['task_il_delta']:+.1f}"]
        lines.append(table_row(cells))
    return "\n".join(lines)


def method_table(rows: list[dict[str, Any]]) -> str:
    headers = ["Method", "Class-IL acc (%)", "Forgetting (pts)", "Task-IL acc (%)", "Train TFLOPs",
               "of which selection", "Peak saved (MiB)", "Mean saved (MiB)", "State (MiB)",
               "Train time (s)", "sel / fwd / bwd (s)", "Wall (s)"]
    lines = table_lines(headers)
    for r in rows:
        ph = r["phase_seconds"]
        cells = [
            r["method"], f"{r['class_il_final']:.1f}", f"{r['class_il_forgetting']:.1f}",
            f"{r['task_il_final']:.1f}", f"{r['train_flops'] / 1e12:.2f}",
            f"{r['selection_flops'] / 1e12:.2f}",
            f"{r['saved_peak_bytes'] / MIB:.0f}", f"{r['saved_mean_bytes'] / MIB:.0f}",
            f"{r['state_bytes'] / MIB:.1f}", f"{r['train_seconds']:.0f}",
            f"{ph['selection']:.0f} / {ph['forward']:.0f} / {ph['backward']:.0f}",
            f"{r['wall_seconds']:.0f}",
        ]
        lines.append(table_row(cells))
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-tasks", type=int, default=10)
    parser.add_argument("--train-per-class", type=int, default=8)
    parser.add_argument("--test-per-class", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--selector-resolution", type=int, default=112)
    parser.add_argument("--reference-steps", type=int, default=18750,
                        help="ALD clock of the *_scaled runs stretched to this many steps "
                        "(REP protocol: 10 x 1875)")
    parser.add_argument("--no-cache", action="store_true", help="REP runs without query cache")
    parser.add_argument("--no-ablations", action="store_true")
    parser.add_argument("--no-cache-variant", action="store_true",
                        help="add an L2P+REP run without the query cache")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--out", type=Path, default=Path("runs/rep"))
    parser.add_argument("--name", default="rep", help="results/<name>.json and .md")
    parser.add_argument("--resume", action="store_true", help="reuse finished methods in --out")
    parser.add_argument("--render", action="store_true",
                        help="only re-render results/<name>.md from results/<name>.json")
    return parser.parse_args()


def render(payload: dict[str, Any]) -> str:
    """results/<name>.md from the JSON payload (re-rendered by ``--render``)."""
    prof, cfg = payload["profile"], payload["config"]
    before, after = payload["load_average_before"][0], payload["load_average_after"][0]
    note = (
        f"Split CIFAR-100, {prof['n_tasks']} tasks, ViT-Ti/16 at 224 px; "
        f"{prof['train_per_class']} train / {prof['test_per_class']} test images per class, "
        f"{prof['epochs']} epoch(s), batch {prof['batch_size']}. REP selector: the same weights "
        f"at {prof['selector_resolution']} px{'' if prof['no_cache'] else ' with query caching'}; "
        "ALD on the actual step count, except in the *_scaled runs (clock stretched to "
        f"{prof['reference_steps']} steps). Ratios are REP / host, measured in this one process. "
        "Time = all training phases (data, selection, prefix, forward, backward, step); "
        "memory = saved-for-backward + parameters + gradients + optimizer state + buffers, at "
        "the largest and at the mean step; FLOPs = every executed training FLOP (forward + "
        "backward + optimizer + selection, and any prefix or other passes). "
        f"Total wall time {payload['wall_seconds_total'] / 60:.1f} min; 1-min load average "
        f"before/after {before:.1f}/{after:.1f} on {os.cpu_count()} cores, "
        f"{cfg['threads'] or 'default'} torch thread(s)."
    )
    return (f"# REP vs host prompt methods, reduced profile\n\n`{payload['command']}`\n\n"
            f"{note}\n\n## Pairs\n\n{pair_table(payload['pairs'])}\n\n## Methods\n\n"
            f"{method_table(payload['methods'])}\n")


def main() -> None:
    args = parse_args()
    if args.render:  # re-render the markdown (and pairs) of an earlier run's JSON
        path = RESULTS / f"{args.name}.json"
        payload = json.loads(path.read_text())
        payload["pairs"] = comparisons(payload["methods"])
        path.write_text(json.dumps(payload, indent=1))
        (RESULTS / f"{args.name}.md").write_text(render(payload))
        return
    cfg = build_config(args)
    results, timing = timed_run(cfg, args.out, args.resume)
    rows = [summary(r) for r in results]
    payload = {
        "command": ("python -m benchmarks.rep " + " ".join(sys.argv[1:])).strip(),
        "profile": {k: v for k, v in vars(args).items() if k not in ("out", "resume", "render")},
        **timing,
        "config": cfg.model_dump(mode="json"),
        "pairs": comparisons(rows),
        "methods": rows,
    }
    path = write_result(args.name, payload)
    (RESULTS / f"{args.name}.md").write_text(render(payload))
    print(pair_table(payload["pairs"]))
    print(method_table(rows))
    minutes = timing["wall_seconds_total"] / 60
    print(f"wrote {path} and {RESULTS / f'{args.name}.md'} in {minutes:.1f} min")


if __name__ == "__main__":
    main()
