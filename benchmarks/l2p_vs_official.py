"""L2P: the official JH-LEE-KR/l2p-pytorch and edgecl side by side on this host.

Both sides run back to back in one invocation, each in its own child process, on the same
reduced Split CIFAR-100 protocol (10 tasks, the first N images per class, 1 epoch, batch 16,
the shared ViT-Ti/16, the same L2P settings; see ``benchmarks/official_side_by_side.py``).
Per side: train time, eval time, wall time, peak RSS and final average accuracy. Targets
(issue 13): edgecl <= 0.5x the official's train + eval time, <= 0.7x its peak RSS, final
average accuracy within 2 points at fp32 and at the default precision (``auto``).

The official checkout must be prepared first (outside the repository); what that involves is
described in results/l2p_vs_official.md.

    EDGECL_DATA=/work/shared/data python -m benchmarks.l2p_vs_official \\
        --official-dir /work/scratch/l2p_sxs/l2p-pytorch

Writes results/l2p_vs_official.json and .md; logs and run directories go to
runs/l2p_vs_official/.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from benchmarks import official_side_by_side as sxs
from benchmarks.common import RESULTS, table_lines, table_row, targets_section, write_result
from edgecl.backbones.vit import RECOMPUTE_MODES
from edgecl.io import atomic_write_text

MIB = 2**20
NO_RECOMPUTE = "edgecl_recompute_none"
FIELDS = ("train_seconds", "eval_seconds", "wall_seconds", "peak_rss_bytes", "final_average",
          "final_average_ci95", "forgetting", "forgetting_with_final", "load_average_before",
          "load_average_after", "log")


def targets(sides: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    off, ecl = sides["official"], sides["edgecl"]
    fp32 = sides.get("edgecl_fp32", ecl)
    time_ratio = ((ecl["train_seconds"] + ecl["eval_seconds"])
                  / (off["train_seconds"] + off["eval_seconds"]))
    rss_ratio = ecl["peak_rss_bytes"] / off["peak_rss_bytes"]
    gap_default = ecl["final_average"] - off["final_average"]
    gap_fp32 = fp32["final_average"] - off["final_average"]
    return [
        {"name": "edgecl / official train+eval time", "measured": time_ratio,
         "goal": "<= 0.5", "met": time_ratio <= 0.5},
        {"name": "edgecl / official peak RSS", "measured": rss_ratio, "goal": "<= 0.7",
         "met": rss_ratio <= 0.7},
        {"name": "edgecl - official final average accuracy, fp32 (pts)", "measured": gap_fp32,
         "goal": "within ±2", "met": abs(round(gap_fp32, 6)) <= 2},
        {"name": "edgecl - official final average accuracy, default precision "
                 f"({ecl['precision']['train']}) (pts)", "measured": gap_default,
         "goal": "within ±2", "met": abs(round(gap_default, 6)) <= 2},
    ]


def side_row(name: str, r: dict[str, Any]) -> str:
    ci = r["final_average_ci95"]
    return table_row([
        name, f"{r['train_seconds']:.0f}", f"{r['eval_seconds']:.0f}",
        f"{r['train_seconds'] + r['eval_seconds']:.0f}", f"{r['wall_seconds']:.0f}",
        f"{r['peak_rss_bytes'] / MIB:.0f}",
        f"{r['final_average']:.1f} ± {ci:.1f}" if ci is not None else f"{r['final_average']:.1f}",
        f"{r['load_average_before'][0]:.1f} / {r['load_average_after'][0]:.1f}"])


def markdown(res: dict[str, Any]) -> str:
    lines = ["# L2P: official l2p-pytorch vs edgecl, side by side", "",
             f"Command: `{res['command']}`.", "", "Protocol: " + res["protocol"], "",
             *table_lines(["side", "train s", "eval s", "train+eval s", "wall s",
                           "peak RSS MiB", "final avg acc (%) ± 95 %", "load 1-min before/after"])]
    lines += [side_row(name, r) for name, r in res["sides"].items()]
    lines += targets_section(res["targets"])
    lines += sxs.closing_sections(res["notes"])
    return "\n".join(lines)


def load_note(sides: dict[str, dict[str, Any]]) -> list[str]:
    """A warning when the machine's load was high or very different between the sides."""
    loads = {name: max(r["load_average_before"][0], r["load_average_after"][0])
             for name, r in sides.items()}
    if max(loads.values()) <= 2.5:
        return []
    return [f"**Load was high during this run** (1-min load up to {max(loads.values()):.1f} on "
            f"2 cores; per side: " + ", ".join(f"{k} {v:.1f}" for k, v in loads.items())
            + "): other processes shared the CPUs, differently for each side, so the time "
            "ratio is not a fair measurement; re-run this command on a quiet machine."]


def recompute_note(sides: dict[str, dict[str, Any]]) -> list[str]:
    """What ``train.recompute`` the edgecl rows ran with, and what it bought in this run."""
    mode = sides["edgecl"].get("recompute") or "none"
    if mode == "none":
        return ["The edgecl rows run with `train.recompute: none` (autograd keeps what each "
                "op saves)."]
    note = (f"The `edgecl` and `edgecl_fp32` rows run with `train.recompute: {mode}`: each "
            "ViT block keeps only its two residuals for backward and recomputes the layer "
            "norms, qkv, attention, fc1 and GELU there (edgecl/backbones/recompute.py; the "
            "gradients are the same up to summation order; the L2P method is unchanged)."
            if mode == "all" else
            f"The `edgecl` and `edgecl_fp32` rows run with `train.recompute: {mode}` "
            "(edgecl/backbones/recompute.py).")
    base = sides.get(NO_RECOMPUTE)
    if base is not None:
        ecl = sides["edgecl"]
        t = ((ecl["train_seconds"] + ecl["eval_seconds"])
             / (base["train_seconds"] + base["eval_seconds"]))
        note += (f" The `{NO_RECOMPUTE}` row is the default-precision run without it: "
                 f"recomputation changed the peak RSS by "
                 f"{(ecl['peak_rss_bytes'] - base['peak_rss_bytes']) / MIB:+.0f} MiB and the "
                 f"train + eval time by {t:.2f}x.")
    return [note]


def notes(sides: dict[str, dict[str, Any]]) -> list[str]:
    ecl = sides["edgecl"]
    return load_note(sides) + recompute_note(sides) + [
        f"Default precision: edgecl's `train.precision: auto` resolved to "
        f"{ecl['precision']['train']} on this CPU"
        + (" (bf16 is not native here), so the default-precision row is the fp32 run."
           if "edgecl_fp32" not in sides else
           " (native bf16); the `edgecl_fp32` row is a separate fp32 run. The official runs "
           "in fp32 (its code has no mixed precision)."),
        "Train and eval time: edgecl's `cost.time_s.train_total` / `eval`; the official's "
        "from its own `Total time ... (s / it)` lines (per training epoch and per test "
        "loader) times the iterations. Wall time: the child process's lifetime (imports, data "
        "and model loading included). Peak RSS: the child's `ru_maxrss` from `os.wait4`.",
        "The official evaluates each seen task with two ViT passes per test image (query + "
        "prompted) after every task; edgecl caches the frozen query features of test images "
        "(`cache_eval_queries`), so its later evaluations pay one pass per image.",
        "The machine is shared: the 1-min load averages around each side are in the table; "
        "with load above the 2 cores, absolute seconds are inflated and the ratio is noisy.",
        "Accuracy: with few test images per task the 95 % interval (from the number of test "
        "images) is wide; the augmentation's random draws differ between the codebases.",
        "Fidelity of L2P and DualPrompt (accuracy, both forgetting definitions): "
        "[fidelity.md](fidelity.md); DER++ vs mammoth: `results/fidelity_derpp.json`.",
    ]


def measure(args: argparse.Namespace) -> dict[str, Any]:
    setup, protocol = sxs.setup_from(args, {"l2p": args.official_dir})
    sides = sxs.run_pair("l2p", setup, protocol, args.out, train={"recompute": args.recompute})
    if args.recompute != "none":  # what recomputation buys, in the same run
        sides[NO_RECOMPUTE] = sxs.run_edgecl("l2p", protocol, args.out / NO_RECOMPUTE, "auto",
                                             train={"recompute": "none"})
    return {
        "command": "python -m benchmarks.l2p_vs_official " + " ".join(sys.argv[1:]),
        "protocol": protocol.describe(),
        "official_command": " ".join(sxs.official_command("l2p", setup, protocol)),
        "sides": {name: {k: r[k] for k in FIELDS} | {
            "matrix": r["matrix"], "precision": r.get("precision", {"train": "fp32"}),
            "recompute": r.get("recompute"), "printed": r.get("printed")}
                  for name, r in sides.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official-dir", type=Path,
                        default=Path("/work/scratch/l2p_sxs/l2p-pytorch"))
    sxs.add_setup_arguments(parser)
    parser.add_argument("--out", type=Path, default=Path("runs/l2p_vs_official"))
    parser.add_argument("--recompute", choices=RECOMPUTE_MODES, default="all",
                        help="edgecl's train.recompute on its runs (default all); other than "
                             "none, one more default-precision run without it is added")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite targets, notes and markdown from the measured sides "
                             "already in results/l2p_vs_official.json; run nothing")
    args = parser.parse_args()
    if args.report_only:
        saved = json.loads((RESULTS / "l2p_vs_official.json").read_text())
        res = {k: saved[k] for k in ("command", "protocol", "official_command", "sides")}
    else:
        res = measure(args)
    sides = res["sides"]
    res |= {"targets": targets(sides),
            "notes": notes(sides) + [n for n in [sxs.size_note(sides, "L2P")] if n],
            "preparation": sxs.PREPARATION}
    write_result("l2p_vs_official", res)
    atomic_write_text(RESULTS / "l2p_vs_official.md", markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
