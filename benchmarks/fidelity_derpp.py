"""DER++ side by side: the official aimagelab/mammoth code and edgecl, same weights/images/settings.

Reduced seq-cifar100 (mammoth's own data set: 10 tasks x 10 classes, class order 0..99, head of
100 outputs) that runs on 2 CPU cores: the first ``--train-per-class`` training and
``--test-per-class`` test images of each class in file order (edgecl's
``data.per_class_subset: first``), mammoth's ResNet-18 at ``--width`` base channels (its
``--num_filters``; edgecl's ``backbone.width``), 1 epoch, batch 32, buffer draws of 32, buffer
500, alpha 0.1, beta 0.5, plain SGD lr 0.03, RandomCrop(32, pad 4) + flip, class-IL and task-IL.

Per seed: edgecl's seeded initial network (backbone + head) is exported in mammoth's key names
and loaded there with ``--loadcheck``; the reduced images are written as CIFAR-100 python
pickles under ``<work>/data/CIFAR100/cifar-100-python`` for mammoth's ``--base_path``; then
mammoth (a subprocess in its own interpreter, on an already prepared checkout) and edgecl
(a worker process) run at the same time, every seed at once, one thread each. Mammoth's
per-task accuracy rows are parsed from its output; both sides' matrices go through the same
metric functions.

This script neither creates nor modifies the official code: prepare the checkout and its
environment first (results/fidelity_derpp.md says how it was done here).

    python -m benchmarks.fidelity_derpp --official-dir /work/scratch/mammoth \\
        --official-python /work/scratch/mammoth_venv/bin/python [--seeds 0 1]
"""

from __future__ import annotations

import argparse
import ast
import os
import pickle
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import RESULTS, table_lines, table_row, timed_run, write_result
from edgecl.config import RunConfig
from edgecl.data import load_dataset, resolve_data_root
from edgecl.io import atomic_write_text
from edgecl.metrics.intervals import mean_interval95
from edgecl.runner.build import build_backbone, build_scenario, resolve_device, setup_method

REPO = Path(__file__).resolve().parents[1]
N_TASKS, N_CLASSES = 10, 100
GOAL_POINTS = 2.0
NOTES = Path(__file__).with_name("fidelity_derpp_notes.md")  # prose copied into the results
SETTINGS: dict[str, Any] = {
    "buffer_size": 500, "alpha": 0.1, "beta": 0.5, "lr": 0.03, "batch_size": 32,
    "minibatch_size": 32, "epochs": 1,
}
ROW = re.compile(r"^\s*Raw accuracy values: Class-IL (\[.*\]) \| Task-IL (\[.*\])\s*$")


# ---- the two protocols ---------------------------------------------------------------------
def edgecl_config(seed: int, width: int, train_n: int, test_n: int) -> RunConfig:
    return RunConfig.model_validate({
        "name": f"fidelity_derpp_seed{seed}", "seed": seed, "device": "cpu", "threads": 1,
        "data": {"dataset": "cifar100", "n_tasks": N_TASKS, "class_order": "fixed",
                 "train_per_class": train_n, "test_per_class": test_n,
                 "per_class_subset": "first"},
        "backbone": {"name": "resnet18_cifar", "weights": "random", "width": width},
        "train": {"epochs": SETTINGS["epochs"], "batch_size": SETTINGS["batch_size"],
                  "eval_batch_size": 256, "augment": "random_crop_pad4"},
        "optim": {"name": "sgd", "lr": SETTINGS["lr"], "momentum": 0.0},
        "methods": [{"name": "derpp", "buffer_size": SETTINGS["buffer_size"],
                     "alpha": SETTINGS["alpha"], "beta": SETTINGS["beta"],
                     "replay_batch_size": SETTINGS["minibatch_size"],
                     "replay_in_first_task": True, "ce_classes": "all"}],
    })


def mammoth_command(python: str, seed: int, width: int, weights: Path, work: Path) -> list[str]:
    return [
        python, "main.py", "--dataset", "seq-cifar100", "--model", "derpp",
        "--buffer_size", str(SETTINGS["buffer_size"]), "--alpha", str(SETTINGS["alpha"]),
        "--beta", str(SETTINGS["beta"]), "--lr", str(SETTINGS["lr"]),
        "--batch_size", str(SETTINGS["batch_size"]),
        "--minibatch_size", str(SETTINGS["minibatch_size"]),
        "--n_epochs", str(SETTINGS["epochs"]), "--num_filters", str(width),
        "--seed", str(seed), "--loadcheck", str(weights),
        "--base_path", f"{work / 'data'}/", "--results_path", f"{work / 'results'}/",
        "--num_workers", "0", "--non_verbose", "1",
    ]


# ---- same images, same weights -------------------------------------------------------------
def first_per_class(labels: np.ndarray, n: int) -> np.ndarray:
    """Indices of the first ``n`` images of each class, in file order."""
    keep = np.concatenate([np.flatnonzero(labels == c)[:n] for c in range(N_CLASSES)])
    return np.sort(keep)


def write_official_data(root: Path, train_n: int, test_n: int) -> None:
    """The reduced CIFAR-100 as python pickles in the official layout (data, fine_labels)."""
    folder = root / "CIFAR100" / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", train_n), ("test", test_n)):
        ds = load_dataset("cifar100", split)
        keep = first_per_class(ds.labels, n)
        images = ds.images[keep].transpose(0, 3, 1, 2).reshape(len(keep), -1)
        entry = {"data": np.ascontiguousarray(images), "fine_labels": ds.labels[keep].tolist()}
        with open(folder / split, "wb") as handle:
            pickle.dump(entry, handle)
    shutil.copy(resolve_data_root(None) / "cifar-100-python" / "meta", folder / "meta")


def mammoth_key(key: str) -> str:
    """edgecl ``Classifier`` key -> mammoth ``ResNet`` key (same modules, other names)."""
    key = key.removeprefix("backbone.")
    key = key.replace("stem.0.", "conv1.").replace("stem.1.", "bn1.")
    return key.replace("head.", "classifier.")


def export_initial_weights(cfg: RunConfig, path: Path) -> str:
    """edgecl's seeded initial network (exactly what its run starts from), in mammoth's names."""
    bundle = build_backbone(cfg)
    setup = setup_method(cfg, cfg.methods[0], build_scenario(cfg), bundle, resolve_device("cpu"))
    state = {mammoth_key(k): v.clone() for k, v in setup.method.net.state_dict().items()}
    torch.save(state, path)
    return weights_digest(state)


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    total = sum(float(v.double().abs().sum()) for v in state.values() if v.is_floating_point())
    return f"{len(state)} tensors, sum |w| = {total:.6f}"


# ---- metrics (one code path for both sides) ------------------------------------------------
def summarize(matrix: list[list[float]], test_per_task: int) -> dict[str, Any]:
    final = matrix[-1]
    earlier = [max(row[i] for row in matrix[i:-1]) - final[i] for i in range(len(final) - 1)]
    with_final = [max(row[i] for row in matrix[i:]) - final[i] for i in range(len(final) - 1)]
    return {
        "final_average": float(np.mean(final)),
        "interval95": mean_interval95(final, [test_per_task] * len(final)),
        "forgetting": float(np.mean(earlier)) if earlier else None,
        "forgetting_with_final": float(np.mean(with_final)) if with_final else None,
        "matrix": matrix,
    }


def parse_official_rows(log: str) -> tuple[list[list[float]], list[list[float]]]:
    """Mammoth's 'Raw accuracy values' rows: the printed copy (its logged twin carries an
    '[INFO] ...' prefix and is skipped), one row per task."""
    class_il, task_il = [], []
    for line in log.splitlines():
        match = ROW.match(line)
        if match:
            class_il.append([float(v) for v in ast.literal_eval(match.group(1))])
            task_il.append([float(v) for v in ast.literal_eval(match.group(2))])
    return class_il, task_il


# ---- the seeds, all at once ----------------------------------------------------------------
def prepare_seed(seed: int, args: argparse.Namespace) -> tuple[RunConfig, Path, str]:
    """The seed's reduced data for mammoth and edgecl's initial network in mammoth's names."""
    work = args.work / f"seed{seed}"
    work.mkdir(parents=True, exist_ok=True)
    write_official_data(work / "data", args.train_per_class, args.test_per_class)
    cfg = edgecl_config(seed, args.width, args.train_per_class, args.test_per_class)
    digest = export_initial_weights(cfg, work / "initial_weights_mammoth.pt")
    return cfg, work, digest


def start_official(seed: int, work: Path, args: argparse.Namespace) -> subprocess.Popen[bytes]:
    # mammoth's main.py sets torch.set_num_threads(2); passive OpenMP waits keep its two
    # threads from spinning on this shared machine (timing only, not results)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "OMP_WAIT_POLICY": "PASSIVE"}
    command = mammoth_command(args.official_python, seed, args.width,
                              work / "initial_weights_mammoth.pt", work)
    with open(work / "mammoth.log", "wb") as log:
        return subprocess.Popen(command, cwd=args.official_dir, stdout=log,
                                stderr=subprocess.STDOUT, env=env)


def run_edgecl(cfg: RunConfig, out: Path) -> dict[str, Any]:
    """One edgecl run (in a worker process): its matrices and reported forgetting."""
    start = time.perf_counter()
    results, timing = timed_run(cfg, out, resume=False)
    acc = results[0].accuracy
    return {"class_il": acc.class_il.matrix, "task_il": acc.task_il.matrix,
            "reported": {"forgetting": acc.class_il.forgetting,
                         "forgetting_with_final": acc.class_il.forgetting_with_final},
            "wall_s": time.perf_counter() - start, **timing}


def official_rows(work: Path) -> tuple[list[list[float]], list[list[float]]]:
    log = work / "mammoth.log"
    class_il, task_il = parse_official_rows(log.read_text())
    if len(class_il) != N_TASKS:
        raise RuntimeError(f"expected {N_TASKS} accuracy rows in {log}, found {len(class_il)}")
    return class_il, task_il


def run_seeds(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every seed's mammoth subprocess and edgecl worker at the same time (one thread each)."""
    prepared = {seed: prepare_seed(seed, args) for seed in args.seeds}
    start = time.perf_counter()
    official = {seed: start_official(seed, work, args) for seed, (_, work, _) in prepared.items()}
    with ProcessPoolExecutor(len(args.seeds), mp_context=get_context("spawn")) as pool:
        jobs = {seed: pool.submit(run_edgecl, cfg, work / "edgecl")
                for seed, (cfg, work, _) in prepared.items()}
        edgecl = {seed: job.result() for seed, job in jobs.items()}
    per_task = args.test_per_class * N_CLASSES // N_TASKS
    rows = []
    for seed, (_, work, digest) in prepared.items():
        if official[seed].wait() != 0:
            raise RuntimeError(f"mammoth exited with {official[seed].returncode}; see "
                               f"{work / 'mammoth.log'}")
        class_il, task_il = official_rows(work)
        side = edgecl[seed]
        rows.append({
            "seed": seed, "initial_weights": digest,
            "official": {"class_il": summarize(class_il, per_task),
                         "task_il": summarize(task_il, per_task),
                         "wall_s_upper_bound": time.perf_counter() - start},
            "edgecl": {**side, "class_il": summarize(side["class_il"], per_task),
                       "task_il": summarize(side["task_il"], per_task)},
        })
    return rows


# ---- summary -------------------------------------------------------------------------------
def gaps(rows: list[dict[str, Any]], setting: str) -> list[float]:
    return [r["edgecl"][setting]["final_average"] - r["official"][setting]["final_average"]
            for r in rows]


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for setting in ("class_il", "task_il"):
        mean_gap = abs(float(np.mean(gaps(rows, setting))))
        out.append({"name": f"|edgecl - mammoth| {setting} final average, mean over seeds "
                            "(points)", "measured": mean_gap, "goal": GOAL_POINTS,
                    "met": mean_gap <= GOAL_POINTS})
    return out


def wall(side: dict[str, Any]) -> str:
    """edgecl's own wall time; mammoth's is known only up to when its seed was collected."""
    if "wall_s" in side:
        return f"{side['wall_s']:.0f}"
    return f"<= {side['wall_s_upper_bound']:.0f}"


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def markdown(payload: dict[str, Any]) -> str:
    lines = ["# DER++: official mammoth vs edgecl (reduced seq-cifar100, CPU)", "",
             f"Command: `{payload['command']}`", "", payload["protocol_text"], "",
             "## Results (percent; ± is the 95 % interval from the test images)", ""]
    lines += table_lines(["seed", "side", "class-IL", "task-IL", "forgetting (Chaudhry)",
                          "forgetting (with final, mammoth)", "wall s"])
    for r in payload["seeds"]:
        for side in ("official", "edgecl"):
            c, t = r[side]["class_il"], r[side]["task_il"]
            lines.append(table_row([
                str(r["seed"]), "mammoth" if side == "official" else "edgecl",
                f"{fmt(c['final_average'])} ± {fmt(c['interval95'])}",
                f"{fmt(t['final_average'])} ± {fmt(t['interval95'])}",
                fmt(c["forgetting"]), fmt(c["forgetting_with_final"]), wall(r[side])]))
    lines += ["", "## Targets", ""] + table_lines(["target", "measured", "goal", "met"])
    lines += [table_row([t["name"], f"{t['measured']:.2f}", f"<= {t['goal']}", str(t["met"])])
              for t in payload["targets"]]
    lines += ["", "## Running the official code offline on CPU", "", payload["official_setup"],
              "", "## Remaining differences", "", payload["differences"], ""]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--official-dir", type=Path, required=True, help="a prepared mammoth checkout")
    p.add_argument("--official-python", required=True, help="the interpreter of its environment")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--train-per-class", type=int, default=50)
    p.add_argument("--test-per-class", type=int, default=20)
    p.add_argument("--work", type=Path, default=REPO / "runs" / "fidelity_derpp")
    p.add_argument("--notes", type=Path, default=NOTES,
                   help="markdown with the sections '## official_setup' and '## differences'")
    return p.parse_args(argv)


def official_commit(official_dir: Path) -> str:
    out = subprocess.run(["git", "-C", str(official_dir), "log", "-1", "--format=%H %ci"],
                         capture_output=True, text=True, check=False)
    return out.stdout.strip() or "unknown"


def read_notes(path: Path) -> dict[str, str]:
    """The prose sections (## official_setup, ## differences) of the notes file, read after
    the runs."""
    notes = {"official_setup": "(not recorded)", "differences": "(not recorded)"}
    if not path.is_file():
        return notes
    for block in path.read_text().split("\n## ")[1:]:
        head, _, body = block.partition("\n")
        notes[head.strip()] = body.strip()
    return notes


def protocol(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "dataset": "seq-cifar100 (CIFAR-100, 10 tasks x 10 classes, class order 0..99)",
        "train_per_class": args.train_per_class, "test_per_class": args.test_per_class,
        "subset": "first n images of each class in file order (both sides)",
        "backbone": f"ResNet-18 (mammoth resnet18, edgecl resnet18_cifar), base width "
                    f"{args.width} (mammoth --num_filters, edgecl backbone.width)",
        "head_outputs": N_CLASSES, **SETTINGS,
        "optimizer": "SGD, no momentum, no weight decay, recreated each task",
        "augmentation": "RandomCrop(32, padding=4) + RandomHorizontalFlip, current batch and "
                        "buffer draws",
        "ce": "over all 100 outputs (mammoth; edgecl derpp ce_classes: all)",
        "replay": "from the first step the buffer holds data (task 0 included)",
        "threads": "1 per process; both sides and all seeds at the same time",
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.official_dir = args.official_dir.resolve()
    rows = run_seeds(args)
    notes = read_notes(args.notes)
    proto = protocol(args)
    payload = {
        "command": "python -m benchmarks.fidelity_derpp " + " ".join(sys.argv[1:]),
        "official": {"repo": "aimagelab/mammoth", "commit": official_commit(args.official_dir)},
        "protocol": proto,
        "protocol_text": "Protocol: " + "; ".join(f"{k}: {v}" for k, v in proto.items()) + ".",
        "seeds": rows,
        "gaps": {s: gaps(rows, s) for s in ("class_il", "task_il")},
        "targets": targets(rows),
        **notes,
    }
    write_result("fidelity_derpp", payload)
    atomic_write_text(RESULTS / "fidelity_derpp.md", markdown(payload))


if __name__ == "__main__":
    main()
