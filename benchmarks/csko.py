"""CsKO vs. on-device training and continual-learning baselines on pretrained CIFAR ResNets.

One process, one machine, the same data order and initial weights for every method: the
reduced profile ``configs/cifar100_csko_reduced.yaml`` (Split CIFAR-100 as the reference:
classes 0..74, a base session of 50 classes, then 5 sessions of 5) on the CIFAR-10-pretrained
ResNet-20 and ResNet-56, through :func:`edgecl.runner.run`. Methods: full finetune,
last-layer finetune, TinyTL-style bias-only finetune (the on-device training baselines),
ER, DER++, LwF (the CL baselines) and CsKO.

Reported per method and backbone:

- accuracy as the reference computes it: after each session, accuracy over the test images
  of every class seen so far (``mean acc``); their average over sessions and the last one;
  forgetting = mean over earlier sessions of (accuracy on that session's classes right after
  it - at the end);
- training FLOPs of every pass (forward, backward, optimizer, DCES and statistics passes),
  for all sessions and for the incremental sessions only (the base session trains the whole
  network for every method but the last-layer/bias ones);
- training memory at the true peak step (saved activations + parameters + gradients +
  optimizer state + buffers of that step), overall and over the incremental sessions;
- training time (indicative: a shared 2-core CPU).

CsKO's claims (v1: above the on-device training baselines at <= their memory; v2: within 2
points of the best CL baseline at <= 25 % of its compute and <= 8 % of its memory) are
checked on the incremental sessions, the part CsKO changes; the JSON lists them as targets.

Writes results/csko.json and results/csko.md; run directories go to runs/csko_bench (a
killed run resumes from them).
    python -m benchmarks.csko [--backbones resnet20_cifar10,resnet56_cifar10] [--fresh]
    python -m benchmarks.csko --markdown-only   # csko.md again (e.g. after a new probe)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

import edgecl.runner as runner
from benchmarks.common import RESULTS, table_lines, table_row, write_result
from edgecl.config import MethodSpec, load_config
from edgecl.io import atomic_write_text
from edgecl.runner.build import run_dir_of
from edgecl.runner.callbacks import STATE_FIELDS, Callback
from edgecl.schema import RunResults

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "configs" / "cifar100_csko_reduced.yaml"
ON_DEVICE = ("finetune", "finetune_last_layer", "tinytl_bias")
CL = ("er", "derpp", "lwf")
# ResNet-56 costs ~3x ResNet-20 per image: fewer images keep the run inside the time box
# (the profile's base-session caps are for 12 images per class: 3 and 4 epochs of 10 steps)
PER_BACKBONE = {"resnet20_cifar10": {}, "resnet56_cifar10": {
    "data.train_per_class": "6", "train.max_steps_per_task": "30",
    "methods.6.train": "{epochs: 12, max_steps_per_task: 40}"}}


class SessionMemory(Callback):
    """Per task: the largest step footprint (saved for backward + state right after it)."""

    key = "session_memory"

    def __init__(self, path: Path) -> None:
        self.path = path  # <run dir>/session_memory.json, rewritten at every task end
        self.peaks: dict[int, dict[str, int]] = {}
        if path.is_file():  # a run completed earlier
            self.peaks = {int(k): v for k, v in json.loads(path.read_text()).items()}

    def on_task_end(self, loop: Any, task: Any) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps({str(k): v for k, v in self.peaks.items()}))

    def on_step(self, loop: Any, batch: Any, stats: Any) -> None:
        now = loop.method.memory_breakdown()
        saved = loop.meter.saved_bytes_per_step[-1]
        step = {"saved_for_backward_bytes": saved,
                **{k: int(now.get(k, 0)) for k in STATE_FIELDS}}
        step["footprint_bytes"] = sum(step.values())
        best = self.peaks.get(batch.task_id)
        if best is None or step["footprint_bytes"] > best["footprint_bytes"]:
            self.peaks[batch.task_id] = step

    def state_dict(self) -> dict[str, Any]:
        return {"peaks": {str(k): v for k, v in self.peaks.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.peaks = {int(k): v for k, v in state["peaks"].items()}


def reference_accuracy(res: RunResults) -> dict[str, Any]:
    """The reference's metrics from the class-IL matrix (percent), weighting tasks by their
    test images (its accuracy over all seen classes' test images)."""
    matrix = res.accuracy.class_il.matrix or []
    n = res.scenario.test_samples_per_task
    seen = [sum(a * k for a, k in zip(row, n, strict=False)) / sum(n[: len(row)])
            for row in matrix]
    last = matrix[-1]
    forgetting = [matrix[i][i] - last[i] for i in range(len(matrix) - 1)]
    return {
        "acc_per_session": seen,
        "acc_avg": sum(seen) / len(seen),
        "acc_last": seen[-1],
        "forgetting": sum(forgetting) / len(forgetting) if forgetting else 0.0,
        "base_acc_last": last[0],
        "new_acc_last": (sum(a * k for a, k in zip(last[1:], n[1:], strict=False))
                         / max(1, sum(n[1: len(last)]))),
    }


def row_of(res: RunResults, memory: dict[int, dict[str, int]]) -> dict[str, Any]:
    inc = [p for p in res.per_task if p.task >= 1]
    inc_mem = max((memory[t] for t in memory if t >= 1), key=lambda m: m["footprint_bytes"])
    return {
        "run": res.run_name,
        "method": res.method,
        **reference_accuracy(res),
        "edgecl_class_il_final_average": res.accuracy.class_il.final_average,
        "flops_total": res.cost.flops.train.total,
        "flops_incremental": sum(p.train_flops for p in inc),
        "flops_parts": res.cost.flops.train.model_dump(),
        "memory_peak_bytes": res.cost.memory.training_footprint_bytes,
        "memory_incremental_peak_bytes": inc_mem["footprint_bytes"],
        "memory_incremental_peak_step": inc_mem,
        "memory_base_peak_bytes": memory.get(0, {}).get("footprint_bytes"),
        "train_time_s": res.cost.time_s.train_total,
        "train_time_incremental_s": sum(p.train_time_s for p in inc),
        "wall_s": res.cost.time_s.wall_total,
        "steps": sum(p.train_steps for p in res.per_task),
    }


def ratios(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    csko = next(r for r in rows if r["run"] == "csko")
    out = {}
    for r in rows:
        if r["run"] == "csko":
            continue
        out[r["run"]] = {
            "flops_incremental": csko["flops_incremental"] / r["flops_incremental"],
            "flops_total": csko["flops_total"] / r["flops_total"],
            "memory_incremental": (csko["memory_incremental_peak_bytes"]
                                   / r["memory_incremental_peak_bytes"]),
            "memory_peak": csko["memory_peak_bytes"] / r["memory_peak_bytes"],
            "time_incremental": csko["train_time_incremental_s"] / r["train_time_incremental_s"],
            "acc_avg_diff_points": csko["acc_avg"] - r["acc_avg"],
            "acc_last_diff_points": csko["acc_last"] - r["acc_last"],
        }
    return out


def targets(backbone: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by = {r["run"]: r for r in rows}
    csko = by["csko"]
    best_cl = max((by[m] for m in CL if m in by), key=lambda r: r["acc_avg"])
    best_od = max((by[m] for m in ON_DEVICE if m in by), key=lambda r: r["acc_avg"])
    min_od_mem = min(by[m]["memory_incremental_peak_bytes"] for m in ON_DEVICE if m in by)
    flop_ratio = csko["flops_incremental"] / best_cl["flops_incremental"]
    mem_ratio = csko["memory_incremental_peak_bytes"] / best_cl["memory_incremental_peak_bytes"]
    gap = csko["acc_avg"] - best_cl["acc_avg"]
    margin = csko["acc_avg"] - best_od["acc_avg"]
    od_mem = csko["memory_incremental_peak_bytes"] / min_od_mem
    b = backbone
    return [
        {"name": f"{b}: v2 average accuracy within 2 points of the best CL baseline "
                 f"({best_cl['run']})", "measured": gap, "goal": ">= -2.0", "met": gap >= -2.0},
        {"name": f"{b}: v2 incremental training FLOPs <= 25 % of {best_cl['run']}'s",
         "measured": flop_ratio, "goal": "<= 0.25", "met": flop_ratio <= 0.25},
        {"name": f"{b}: v2 incremental training memory <= 8 % of {best_cl['run']}'s",
         "measured": mem_ratio, "goal": "<= 0.08", "met": mem_ratio <= 0.08},
        {"name": f"{b}: v1 average accuracy above the best on-device baseline "
                 f"({best_od['run']}), points", "measured": margin, "goal": "> 0",
         "met": margin > 0},
        {"name": f"{b}: v1 claimed margin over on-device training (+38.08 points)",
         "measured": margin, "goal": ">= 38.08", "met": margin >= 38.08},
        {"name": f"{b}: v1 incremental training memory <= every on-device baseline's",
         "measured": od_mem, "goal": "<= 1.0", "met": od_mem <= 1.0},
    ]


def _mb(n: float) -> str:
    return f"{n / 2**20:.2f}"


def markdown(sections: dict[str, dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        "# CsKO vs. on-device training and CL baselines (pretrained CIFAR ResNets)", "",
        f"Command: `{meta['command']}`; profile `{meta['profile']}`; {meta['note']}. "
        f"Total wall time {meta['wall_s']:.0f} s.", "",
        "Accuracy as the reference computes it: over the test images of all classes seen so "
        "far, after each session (avg over the 6 sessions, and last). Incremental = sessions "
        "1-5 (the base session trains the whole network for every method except last-layer "
        "and bias-only finetune). Memory = the largest step's saved activations + parameters + "
        "gradients + optimizer state + buffers.", "",
    ]
    for backbone, sec in sections.items():
        lines += [f"## {backbone}", ""]
        lines += table_lines(["method", "acc avg %", "acc last %", "forgetting", "GFLOPs inc.",
                              "GFLOPs total", "mem inc. MiB", "mem peak MiB", "train s inc.",
                              "train s"])
        for r in sec["rows"]:
            lines.append(table_row([
                r["run"], f"{r['acc_avg']:.1f}", f"{r['acc_last']:.1f}",
                f"{r['forgetting']:.1f}", f"{r['flops_incremental'] / 1e9:.1f}",
                f"{r['flops_total'] / 1e9:.1f}", _mb(r["memory_incremental_peak_bytes"]),
                _mb(r["memory_peak_bytes"]), f"{r['train_time_incremental_s']:.1f}",
                f"{r['train_time_s']:.1f}"]))
        lines += ["", "CsKO relative to each baseline (ratios < 1: CsKO uses less):", ""]
        lines += table_lines(["baseline", "FLOPs inc.", "FLOPs total", "memory inc.",
                              "memory peak", "time inc.", "acc avg diff", "acc last diff"])
        for name, q in sec["ratios"].items():
            lines.append(table_row([
                name, f"{q['flops_incremental']:.3f}", f"{q['flops_total']:.3f}",
                f"{q['memory_incremental']:.3f}", f"{q['memory_peak']:.3f}",
                f"{q['time_incremental']:.2f}", f"{q['acc_avg_diff_points']:+.1f}",
                f"{q['acc_last_diff_points']:+.1f}"]))
        lines += ["", "Targets:", ""]
        lines += table_lines(["target", "measured", "goal", "met"])
        for t in sec["targets"]:
            lines.append(table_row([t["name"], f"{t['measured']:.3f}", t["goal"],
                                    "yes" if t["met"] else "**no**"]))
        lines.append("")
    lines += ["## Reading", "", *meta["reading"], ""]
    lines += probe_section()
    return "\n".join(lines)


PROBE = RESULTS / "csko_kernel_probe.json"
PROBE_COMMAND = ("edgecl analyze-kernels -c configs/csko_kernel_probe_resnet56.yaml "
                 "--out runs/kernel-probe-resnet56; cp runs/kernel-probe-resnet56/"
                 "kernel_probe.json results/csko_kernel_probe.json")


def probe_section() -> list[str]:
    """The knowledge-intensity probe's table, from results/csko_kernel_probe.json."""
    if not PROBE.is_file():
        return []
    probe = json.loads(PROBE.read_text())
    d = probe["details"]
    lines = ["## Kernel-element probe (`edgecl analyze-kernels`)", "",
             f"Command: `{PROBE_COMMAND}`. {d['backbone']}, a new task of "
             f"{d['task0_classes']} classes ({d['train_images']} training, {d['test_images']} "
             f"test images), {d['epochs']} epochs; one test image is "
             f"{100 / d['test_images']:.1f} points.", ""]
    lines += table_lines(["block", "head only %", "+ centers %", "+ one off-center tap %",
                          "+ whole 3x3 %", "center recovers", "off-center recovers",
                          "trainable (center / full)"])
    for b in probe["blocks"]:
        a, r, n = probe["accuracy"][b], probe["recovered"][b], probe["trainable"][b]
        share = ["-" if r[k] is None else f"{r[k]:.2f}" for k in ("center", "offcenter")]
        lines.append(table_row([b, *(f"{100 * a[k]:.1f}" for k in
                                     ("head", "center", "offcenter", "full")),
                                *share, f"{n['center']} / {n['full']}"]))
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbones", default="resnet20_cifar10,resnet56_cifar10")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work-dir", type=Path, default=REPO / "runs" / "csko_bench")
    parser.add_argument("--fresh", action="store_true", help="discard earlier run directories")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="extra config override key=value, for every backbone")
    parser.add_argument("--markdown-only", action="store_true",
                        help="rewrite results/csko.md from results/csko.json, run nothing")
    args = parser.parse_args()
    if args.markdown_only:
        saved = json.loads((RESULTS / "csko.json").read_text())
        saved["meta"]["reading"] = reading(saved["sections"])  # the current wording
        write_result("csko", {k: v for k, v in saved.items() if k != "environment"})
        (RESULTS / "csko.md").write_text(markdown(saved["sections"], saved["meta"]))
        return
    start = time.perf_counter()
    torch.set_num_threads(args.threads)
    if args.fresh and args.work_dir.exists():
        shutil.rmtree(args.work_dir)
    sections: dict[str, dict[str, Any]] = {}
    for backbone in args.backbones.split(","):
        extra = [f"{k}={v}" for k, v in PER_BACKBONE.get(backbone, {}).items()]
        cfg = load_config(PROFILE, [f"backbone.name={backbone}", f"threads={args.threads}",
                                    *extra, *args.overrides])
        out = args.work_dir / backbone
        memory = {spec.run_name: SessionMemory(run_dir_of(out, spec) / "session_memory.json")
                  for spec in cfg.methods}

        def factory(spec: MethodSpec, memory: dict[str, SessionMemory] = memory) -> list:
            return [memory[spec.run_name]]

        results = runner.run(cfg, out, resume=True, callbacks=factory)
        missing = [r.run_name for r in results if not memory[r.run_name].peaks]
        if missing:
            raise SystemExit(f"runs {missing} finished earlier without per-session memory; "
                             "rerun with --fresh")
        rows = [row_of(r, memory[r.run_name].peaks) for r in results]
        sections[backbone] = {"config": cfg.model_dump(mode="json"), "rows": rows,
                              "ratios": ratios(rows), "targets": targets(backbone, rows)}
    all_targets = [t for s in sections.values() for t in s["targets"]]
    meta = {
        "command": " ".join(["python -m benchmarks.csko", *sys.argv[1:]]),
        "profile": str(PROFILE.relative_to(REPO)),
        "threads": args.threads,
        "wall_s": time.perf_counter() - start,
        "note": "timings indicative: a shared 2-core CPU, other jobs ran at the same time",
        "reading": reading(sections),
    }
    write_result("csko", {"meta": meta, "sections": sections, "targets": all_targets})
    (RESULTS / "csko.md").write_text(markdown(sections, meta))
    print((RESULTS / "csko.md").read_text())


def reading(sections: dict[str, dict[str, Any]]) -> list[str]:
    """Plain-language lines computed from the figures (no hand-written numbers)."""
    out = []
    for backbone, sec in sections.items():
        met = [t for t in sec["targets"] if t["met"]]
        missed = [t for t in sec["targets"] if not t["met"]]
        out.append(f"- {backbone}: {len(met)} of {len(sec['targets'])} targets met"
                   + ("; missed: " + "; ".join(f"{t['name']} (measured {t['measured']:.3f}, "
                                                f"goal {t['goal']})" for t in missed)
                      if missed else "") + ".")
        out += why_missed(backbone, sec, missed)
    return out


def why_missed(backbone: str, sec: dict[str, Any], missed: list[dict[str, Any]]) -> list[str]:
    """Why a v1 goal is missed, from the section's own figures."""
    rows = {r["run"]: r for r in sec["rows"]}
    csko, out = rows.get("csko"), []
    if csko is None:
        return out
    names = " ".join(t["name"] for t in missed)
    if "margin" in names:
        best = max(r["acc_avg"] for r in sec["rows"])
        out.append(
            f"  - The +38.08-point margin: every method here stays at or below {best:.1f} % "
            f"average accuracy after {csko['steps']} CsKO steps in all (the reference trains "
            "hundreds of steps per session), so no method has room for a 38-point lead; the "
            "measured lead is the `acc_avg_diff_points` ratio above.")
    if "memory" in names:
        ratios = sec["ratios"]
        parts = ", ".join(f"{name} {r['memory_incremental']:.2f}x"
                          for name, r in ratios.items()
                          if name in ("finetune", "finetune_last_layer", "tinytl_bias")
                          and r.get("memory_incremental"))
        out.append(
            "  - Memory against every on-device baseline: last-layer finetune's backward "
            "stops at the classifier and saves no activations inside the network, while "
            "CsKO back-propagates through its adapted blocks to reach their 1x1 branches; "
            f"CsKO's incremental peak relative to each baseline's: {parts}.")
    return out


if __name__ == "__main__":
    main()
