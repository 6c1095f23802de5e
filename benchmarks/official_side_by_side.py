"""Run a reference implementation (JH-LEE-KR/l2p-pytorch, dualprompt-pytorch) and edgecl side
by side on one reduced Split CIFAR-100 protocol, each in its own child process.

Shared by ``benchmarks.l2p_vs_official`` (timing, memory, accuracy of L2P) and
``benchmarks.fidelity`` (accuracy and forgetting of L2P and DualPrompt). This module only
*runs* an already prepared official checkout (``--official-dir``) with its own interpreter
(``--official-python``) and parses what it prints; it never writes or changes official code.
How the checkout and its environment were prepared is described in prose in the results files
(``PREPARATION``).

Both sides see the same images: the first ``train_per_class`` training and ``test_per_class``
test images of every class in file order (edgecl: ``data.per_class_subset: first``; the
official side: the CIFAR-100 dataset of the prepared environment reads the
``EDGECL_SXS_TRAIN_PER_CLASS`` / ``EDGECL_SXS_TEST_PER_CLASS`` variables this module sets).
Each child's peak RSS is its ``ru_maxrss`` from ``os.wait4`` (the same measurement for both);
wall time is the child's lifetime; train and eval time come from each side's own records
(edgecl: ``cost.time_s``; official: the ``Total time ... (x s / it)`` lines its
``MetricLogger.log_every`` prints per training epoch and per test loader, times iterations).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from edgecl.metrics.intervals import mean_interval95

REPO = Path(__file__).resolve().parents[1]
WEIGHTS_ENV = "SXS_WEIGHTS"
OFFICIAL_ENTRY = {"l2p": "cifar100_l2p", "dualprompt": "cifar100_dualprompt"}
EDGECL_CONFIG = {"l2p": "cifar100_l2p.yaml", "dualprompt": "cifar100_dualprompt.yaml"}

PREPARATION = [
    "Official code: JH-LEE-KR/l2p-pytorch and JH-LEE-KR/dualprompt-pytorch at their newest "
    "snapshot, cloned outside the repository; run with their own `main.py` and CIFAR-100 "
    "config (`cifar100_l2p` / `cifar100_dualprompt`), every setting at its default except the "
    "command-line flags listed under the protocol.",
    "Environment: a separate virtual environment outside the repository with torch 2.13.0 "
    "(CPU, the same build as edgecl's) and timm 0.6.7 (the version requirements.txt pins, "
    "installed without dependencies). The PyPI torchvision wheel does not load with this "
    "torch, so torchvision is replaced by a small local stand-in package on torch + PIL: "
    "`transforms` (Compose, ToTensor, Resize, CenterCrop, RandomResizedCrop with torchvision's "
    "parameter sampling, RandomHorizontalFlip, InterpolationMode; PIL resampling as "
    "torchvision does for PIL images), `datasets.CIFAR100` (reads the local python-pickle "
    "files; download=True is a no-op, as torchvision skips the download when the files "
    "exist) and import-only stubs for the other names timm and the official code import "
    "(other datasets, `datasets.utils`, `ops.misc.FrozenBatchNorm2d`).",
    "Data: the shared CIFAR-100 files, decompressed (`xz -d`, md5 checked) into a scratch "
    "folder passed as `--data-path`. The stand-in CIFAR100 keeps the first N images per class "
    "in file order when EDGECL_SXS_TRAIN_PER_CLASS / EDGECL_SXS_TEST_PER_CLASS are set, so "
    "the official class split (`split_single_dataset`, unchanged) sees the same images as "
    "edgecl's `per_class_subset: first`.",
    "Weights: the shared ViT-Ti/16 `.npz` converted once to a torch state dict (`.pth`, same "
    "tensors). `main.py` was changed to pass `pretrained_cfg=` (timm's own default config "
    "for the model with `url=''`, `file=<that .pth>` and `num_classes=200`) to both "
    "`create_model` calls when SXS_WEIGHTS is set, so timm's regular loader reads the local "
    "file, drops the 200-way head and resizes the position table (the references' "
    "`checkpoint_filter_fn`, which gives prompt slots the CLS position) with no network.",
    "CPU: `engine.py`'s unconditional `torch.cuda.synchronize()` after each step (it raises "
    "on a CPU-only torch) is guarded by `torch.cuda.is_available()`. Device and loaders by "
    "flags only: `--device cpu --num_workers 0 --no-pin-mem --output_dir ''` (no "
    "checkpoints written). No timers were added: times are read from the lines the "
    "official `MetricLogger` already prints.",
]


@dataclass(frozen=True)
class Protocol:
    """The reduced protocol both sides run."""

    train_per_class: int = 8
    test_per_class: int = 3
    batch_size: int = 16
    epochs: int = 1
    n_tasks: int = 10
    seed: int = 42
    threads: int = 2

    @property
    def lr(self) -> float:
        return 0.03 * self.batch_size / 256  # both references: lr * batch / 256

    def describe(self, seeds: tuple[int, ...] | None = None) -> str:
        """The protocol in a sentence; ``seeds``: one run per seed on both sides."""
        seed = f"seed {self.seed}" if not seeds else (
            "one run per seed on both sides, seeds " + ", ".join(map(str, seeds)))
        return (f"Split CIFAR-100, {self.n_tasks} tasks x 10 classes in the fixed order 0-99 "
                f"(the references' order with shuffle off), the first {self.train_per_class} "
                f"training and first {self.test_per_class} test images of every class in file "
                f"order, {self.epochs} epoch per task, batch {self.batch_size} (training and "
                f"test, so batch-wise prompt selection at test time votes over the same "
                f"batches), Adam(0.9, 0.999) at constant lr 0.03 x {self.batch_size} / 256 = "
                f"{self.lr:.6f}, grad-norm clip 1.0, optimizer re-created each task, the "
                f"shared ViT-Ti/16 at 224 px, {seed}, {self.threads} torch threads "
                "on both sides (OMP_NUM_THREADS and edgecl's `threads`). Reference "
                "augmentation on both sides (RandomResizedCrop(224, scale 0.05-1) + flip; "
                "its random draws differ between the codebases), test Resize(256, bicubic) + "
                "CenterCrop(224), no normalization, class-IL argmax over all 100 logits, "
                "batch-wise prompt selection in training and at test time (the references).")


@dataclass(frozen=True)
class OfficialSetup:
    directories: dict[str, Path]  # method -> prepared checkout
    python: Path
    data_path: Path
    weights: Path


def child_environment(protocol: Protocol, extra: dict[str, str]) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": str(protocol.threads),
           "MKL_NUM_THREADS": str(protocol.threads), "PYTHONUNBUFFERED": "1", **extra}
    env.pop("PYTHONPATH", None)
    return env


def run_child(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> dict[str, Any]:
    """Run one side; its wall time, peak RSS (ru_maxrss of this child) and load averages."""
    log.parent.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"{cmd[:3]} exited with {proc.returncode}; log {log}:\n{tail}")
    return {"wall_seconds": wall, "peak_rss_bytes": usage.ru_maxrss * 1024,
            "load_average_before": load_before, "load_average_after": os.getloadavg(),
            "log": str(log)}


# ---- the official side ------------------------------------------------------------------
def official_command(method: str, setup: OfficialSetup, protocol: Protocol) -> list[str]:
    return [str(setup.python), "main.py", OFFICIAL_ENTRY[method],
            "--model", "vit_tiny_patch16_224", "--data-path", str(setup.data_path),
            "--epochs", str(protocol.epochs), "--batch-size", str(protocol.batch_size),
            "--num_tasks", str(protocol.n_tasks), "--seed", str(protocol.seed),
            "--device", "cpu", "--num_workers", "0", "--no-pin-mem", "--output_dir", ""]


_ITER = re.compile(r"^(Train: Epoch\[[^\]]*\]|Test: \[Task \d+\])\s+\[\s*\d+/(\d+)\]")
_TOTAL = re.compile(r"^(Train: Epoch\[[^\]]*\]|Test: \[Task \d+\]) Total time: \S+ "
                    r"\(([\d.]+) s / it\)")
_ACC = re.compile(r"^\* Acc@1 ([\d.]+)")
_AVG = re.compile(r"^\[Average accuracy till task(\d+)\]\s+Acc@1: ([\d.]+)(?:.*Forgetting: "
                  r"([\d.]+))?")


def parse_official_log(text: str) -> dict[str, Any]:
    """Train/eval seconds, the accuracy matrix (row t: tasks 0..t after task t) and the
    official's own printed final average and forgetting."""
    iterations: dict[str, int] = {}
    seconds = {"train": 0.0, "eval": 0.0}
    rows: list[list[float]] = []
    current: list[float] = []
    printed: dict[str, float] = {}
    for line in text.splitlines():
        if m := _ITER.match(line):
            iterations[m.group(1)] = int(m.group(2))
        elif m := _TOTAL.match(line):
            kind = "train" if m.group(1).startswith("Train") else "eval"
            seconds[kind] += float(m.group(2)) * iterations[m.group(1)]
        elif m := _ACC.match(line):
            current.append(float(m.group(1)))
        elif m := _AVG.match(line):
            rows.append(current)
            current = []
            printed = {"final_average": float(m.group(2))}
            if m.group(3) is not None:
                printed["forgetting"] = float(m.group(3))
    return {"train_seconds": seconds["train"], "eval_seconds": seconds["eval"],
            "matrix": rows, "printed": printed}


def run_official(method: str, setup: OfficialSetup, protocol: Protocol, log: Path,
                 ) -> dict[str, Any]:
    env = child_environment(protocol, {
        WEIGHTS_ENV: str(setup.weights),
        "EDGECL_SXS_TRAIN_PER_CLASS": str(protocol.train_per_class),
        "EDGECL_SXS_TEST_PER_CLASS": str(protocol.test_per_class)})
    process = run_child(official_command(method, setup, protocol), setup.directories[method],
                        env, log)
    parsed = parse_official_log(log.read_text())
    tests = [10 * protocol.test_per_class] * protocol.n_tasks
    return {**process, **parsed, **accuracy_summary(parsed["matrix"], tests)}


# ---- the edgecl side --------------------------------------------------------------------
def edgecl_config(method: str, protocol: Protocol, precision: str,
                  params: dict[str, Any] | None = None,
                  train: dict[str, Any] | None = None) -> dict[str, Any]:
    """The protocol config (configs/cifar100_<method>.yaml) reduced to ``protocol``;
    ``params`` override the method's, ``train`` the train block's (e.g. ``recompute``)."""
    base = yaml.safe_load((REPO / "configs" / EDGECL_CONFIG[method]).read_text())
    entry = {**base["methods"][0], **(params or {})}
    entry["optim"] = {**entry["optim"], "lr": protocol.lr}
    return {
        **base, "name": f"{method}_official_side_by_side", "seed": protocol.seed,
        "threads": protocol.threads,
        "data": {**base["data"], "n_tasks": protocol.n_tasks,
                 "train_per_class": protocol.train_per_class,
                 "test_per_class": protocol.test_per_class, "per_class_subset": "first"},
        "backbone": {"name": "vit_tiny_patch16_224"},
        "train": {**base["train"], "epochs": protocol.epochs,
                  "batch_size": protocol.batch_size, "eval_batch_size": protocol.batch_size,
                  "precision": precision, **(train or {})},
        "methods": [entry],
    }


def run_edgecl(method: str, protocol: Protocol, out: Path, precision: str,
               params: dict[str, Any] | None = None,
               train: dict[str, Any] | None = None) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    config = out / "config_side_by_side.yaml"
    config.write_text(yaml.safe_dump(edgecl_config(method, protocol, precision, params, train)))
    run_dir = out / "run"
    cmd = [sys.executable, "-m", "edgecl.cli", "run", "-c", str(config), "--out", str(run_dir),
           "-q"]
    process = run_child(cmd, REPO, child_environment(protocol, {}), out / "edgecl.log")
    res = json.loads((run_dir / method / "results.json").read_text())
    cil, secs = res["accuracy"]["class_il"], res["cost"]["time_s"]
    tests = res["scenario"]["test_samples_per_task"]
    summary = accuracy_summary(cil["matrix"], tests)
    return {**process, "train_seconds": secs["train_total"], "eval_seconds": secs["eval"],
            "precision": res["cost"]["flops"]["precision"], "matrix": cil["matrix"],
            "recompute": res["config"]["train"].get("recompute", "none"),
            **summary, "edgecl_reported": {k: cil[k] for k in (
                "final_average", "forgetting", "forgetting_with_final")}}


# ---- metrics ------------------------------------------------------------------------------
def accuracy_summary(matrix: list[list[float]], tests: list[int]) -> dict[str, Any]:
    """Final average (last row), its 95 % interval, and both forgetting definitions, from an
    accuracy matrix whose row t holds tasks 0..t after task t."""
    if not matrix:
        raise RuntimeError("no accuracy rows were parsed")
    last = matrix[-1]
    final_t = len(matrix) - 1

    def forgetting(rows: list[list[float]]) -> float | None:
        drops = [max(r[i] for r in rows if len(r) > i) - last[i] for i in range(final_t)]
        return sum(drops) / len(drops) if drops else None

    return {
        "final_average": sum(last) / len(last),
        "final_average_ci95": mean_interval95(last, tests[: len(last)]),
        "forgetting": forgetting(matrix[:-1]),  # Chaudhry: best of the earlier rows
        "forgetting_with_final": forgetting(matrix),  # the references: every row
    }


def run_pair(method: str, setup: OfficialSetup, protocol: Protocol, out: Path,
             precision: str = "auto", train: dict[str, Any] | None = None) -> dict[str, Any]:
    """Both sides of one method back to back; edgecl again at fp32 if ``precision`` did not
    resolve to fp32 (on a CPU without native bf16, ``auto`` is fp32 and one run covers both).
    ``train``: edgecl train-block settings for both edgecl runs."""
    official = run_official(method, setup, protocol, out / "official.log")
    edgecl = run_edgecl(method, protocol, out / "edgecl", precision, train=train)
    sides = {"official": official, "edgecl": edgecl}
    if edgecl["precision"].get("train") != "fp32":
        sides["edgecl_fp32"] = run_edgecl(method, protocol, out / "edgecl_fp32", "fp32",
                                          train=train)
    return sides


def size_note(sides: dict[str, dict[str, Any]], method: str) -> str | None:
    """A warning when both sides are close to chance (1 % over 100 classes): agreement then
    says little about fidelity, only that neither side learned at this size."""
    if max(r["final_average"] for r in sides.values()) >= 10:
        return None
    return (f"{method}: both sides end below 10 % (chance is 1 %): with this few steps per "
            "task (1 epoch over the per-class subset at lr 0.03 x 16 / 256) the head barely "
            "trains, so agreement within 2 points is not evidence of fidelity; re-run with "
            "more images per class (`--train-per-class 50 --test-per-class 10`) on a quiet or "
            "faster machine for an informative comparison.")


def closing_sections(notes: list[str]) -> list[str]:
    """The markdown tail of a side-by-side results file: its notes, then what was changed to
    run the official code offline."""
    return ["", "## Notes", "", *[f"- {n}" for n in notes],
            "", "## What was changed to run the official code offline on CPU", "",
            *[f"- {p}" for p in PREPARATION], ""]


def add_setup_arguments(parser: Any) -> None:
    scratch = Path("/work/scratch/l2p_sxs")
    parser.add_argument("--official-python", type=Path,
                        default=scratch / "official_venv" / "bin" / "python")
    parser.add_argument("--official-data", type=Path, default=scratch / "data",
                        help="folder holding the decompressed cifar-100-python/")
    parser.add_argument("--official-weights", type=Path,
                        default=scratch / "weights" / "vit_tiny_patch16_224_tinyimagenet_ft.pth")
    parser.add_argument("--train-per-class", type=int, default=Protocol.train_per_class)
    parser.add_argument("--test-per-class", type=int, default=Protocol.test_per_class)
    parser.add_argument("--threads", type=int, default=Protocol.threads)


def setup_from(args: Any, directories: dict[str, Path]) -> tuple[OfficialSetup, Protocol]:
    setup = OfficialSetup(directories=directories, python=args.official_python,
                          data_path=args.official_data, weights=args.official_weights)
    protocol = Protocol(train_per_class=args.train_per_class,
                        test_per_class=args.test_per_class, threads=args.threads)
    return setup, protocol
