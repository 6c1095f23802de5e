"""The embedded default of ``edgecl run`` (edgecl/configs/default.yaml), run and checked.

Runs the default comparison as ``edgecl run`` does (every method, its reports and the
comparison page) and writes results/default_run.json and .md: the wall time and load, each
method's accuracies with their 95 % intervals, and the targets of issue 14: the whole run
within 10 minutes, ER and the prompt methods above finetune in class-IL by more than the sum
of the two intervals, and forgetting ordered finetune > ER > the prompt methods.

Run: python -m benchmarks.default_run [--out DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, table_lines, table_row, timed_run, write_result
from edgecl.config import load_config
from edgecl.io import atomic_write_text
from edgecl.report import compare_table, write_compare, write_report

GOAL_SECONDS = 600.0
PROMPT_METHODS = ("l2p", "l2p_rep")


def _separation(rows: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    ours, base = rows[name], rows["finetune"]
    gap = ours["class_il_final"] - base["class_il_final"]
    noise = ours["class_il_final_ci95"] + base["class_il_final_ci95"]
    return {"name": f"{name} class-IL final above finetune by more than both 95 % intervals",
            "measured": round(gap, 2), "goal": f"> {noise:.2f}", "met": gap > noise}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="edgecl-default-"))
    cfg = load_config()
    start = time.perf_counter()
    results, timing = timed_run(cfg, out / cfg.name, resume=False)
    for res in results:
        write_report(out / cfg.name / res.run_name)
    write_compare([out / cfg.name / r.run_name for r in results], out / cfg.name)
    wall = time.perf_counter() - start
    rows = {row["name"]: row for row in compare_table(results)}
    keys = ("class_il_final", "class_il_final_ci95", "class_il_avg_incremental",
            "class_il_avg_incremental_ci95", "class_il_forgetting",
            "class_il_forgetting_with_final", "task_il_final", "task_il_final_ci95",
            "train_gflops", "train_footprint_mib", "train_time_s")
    prompt_forgetting = max(rows[m]["class_il_forgetting"] for m in PROMPT_METHODS)
    ordered = (rows["finetune"]["class_il_forgetting"] > rows["er"]["class_il_forgetting"]
               > prompt_forgetting)
    targets = [
        {"name": "edgecl run (default) wall time incl. evaluation and reports (s)",
         "measured": round(wall, 1), "goal": f"<= {GOAL_SECONDS:.0f}",
         "met": wall <= GOAL_SECONDS},
        *[_separation(rows, name) for name in ("er", *PROMPT_METHODS)],
        {"name": "forgetting (Chaudhry) finetune > ER > prompt methods",
         "measured": " > ".join(f"{rows[m]['class_il_forgetting']:.2f}"
                                for m in ("finetune", "er", *PROMPT_METHODS)),
         "goal": "finetune > er > max(l2p, l2p_rep)", "met": ordered},
    ]
    payload = {
        "config": "edgecl/configs/default.yaml",
        "timing": {**timing, "wall_seconds_with_reports": wall},
        "test_images": sum(results[0].scenario.test_samples_per_task),
        "methods": {name: {k: row[k] for k in keys} for name, row in rows.items()},
        "targets": targets,
    }
    write_result("default_run", payload)
    headers = ["method", "class-IL final (%)", "class-IL avg incr. (%)",
               "forgetting Chaudhry / incl. last (pts)", "task-IL final (%)", "train GFLOPs"]
    lines = [
        "# The default run (`edgecl run`, no arguments)", "",
        f"Wall {wall:.0f} s incl. evaluation and reports; load average before "
        f"{timing['load_average_before'][0]:.2f}, after {timing['load_average_after'][0]:.2f} "
        f"(other jobs share the 2 cores). {payload['test_images']} test images; ± is the 95 % "
        "interval. `python -m benchmarks.default_run`.", "", *table_lines(headers)]
    for name, row in rows.items():
        lines.append(table_row([
            name, f"{row['class_il_final']:.2f} ± {row['class_il_final_ci95']:.2f}",
            f"{row['class_il_avg_incremental']:.2f} ± {row['class_il_avg_incremental_ci95']:.2f}",
            f"{row['class_il_forgetting']:.2f} / {row['class_il_forgetting_with_final']:.2f}",
            f"{row['task_il_final']:.2f} ± {row['task_il_final_ci95']:.2f}",
            f"{row['train_gflops']:.0f}"]))
    lines += ["", "Targets:", "", *[
        f"- {t['name']}: {t['measured']} (goal {t['goal']}): {'met' if t['met'] else 'MISSED'}"
        for t in targets], ""]
    atomic_write_text(RESULTS / "default_run.md", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
