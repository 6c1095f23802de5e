"""The CNN training path, profiled: memory format, ``torch.compile`` and the data path.

For the CIFAR ResNet-20 (SparCL, CsKO, LightCL's scale) and ResNet-18 (rehearsal, SparCL),
at 32 px and batch ``--batch``, one SGD training step (forward, cross-entropy, backward,
step) is timed in these variants, interleaved round by round so a change in the machine's
load affects all of them alike:

- ``eager``: contiguous NCHW tensors, as edgecl runs today;
- ``channels_last``: model and input in NHWC memory format;
- ``compiled``: ``torch.compile`` (inductor) of the model, NCHW; its one-off compile time is
  reported separately.

The data path: one batch of the training pipeline (gather from the uint8 array, RandomCrop
32 pad 4 + flip, normalise: ``edgecl.data.loader.make_batch``), timed alone, as a fraction of
the eager step. The runner's loader prepares batches on a background thread, so this share is
what the prefetcher has to hide.

    EDGECL_DATA=../shared/data python -m benchmarks.cnn_path

Writes results/cnn_path.json and .md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.common import RESULTS, table_lines, table_row, targets_section, write_result
from edgecl.backbones.registry import create_backbone
from edgecl.data import load_dataset
from edgecl.data.base import ArrayDataset
from edgecl.data.loader import make_batch
from edgecl.data.transforms import make_transforms
from edgecl.io import atomic_write_text

MODELS = ("resnet20_cifar10", "resnet18_cifar")
CIFAR_MEAN, CIFAR_STD = (0.507, 0.487, 0.441), (0.267, 0.256, 0.276)


def train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor,
               y: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        opt.zero_grad(set_to_none=True)
        logits = model(x)
        F.cross_entropy(logits, y).backward()
        opt.step()
    return step


def variant(name: str, backbone: str, batch: int) -> tuple[Callable[[], None], float]:
    """A ready step of ``name`` and the seconds its preparation (compile) took."""
    torch.manual_seed(0)
    features = create_backbone(backbone, weights="random").module
    model = nn.Sequential(features, nn.LazyLinear(10))
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    model(x)  # materialise the lazy head
    if name == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    start = time.perf_counter()
    if name == "compiled":
        model = torch.compile(model)
    step = train_step(model, opt, x, y)
    step()  # warm-up: compiles the compiled variant; allocator and caches for the others
    return step, time.perf_counter() - start


def time_interleaved(steps: dict[str, Callable[[], None]], rounds: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def data_batch_seconds(dataset: ArrayDataset, batch: int, rounds: int) -> float:
    augment, _ = make_transforms(32, CIFAR_MEAN, CIFAR_STD, augment="random_crop_pad4")
    rng = np.random.default_rng(0)
    times = []
    for b in range(rounds):
        idx = rng.choice(len(dataset.labels), batch, replace=False)
        start = time.perf_counter()
        make_batch(dataset, idx, augment, seed=0, batch=b)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def markdown(res: dict[str, Any]) -> str:
    lines = ["# CNN training path", "", f"Command: `{res['command']}`.", "", res["profile"], "",
             *table_lines(["model", "eager step ms", "channels_last step ms", "compiled step ms",
                           "channels_last / eager", "compiled / eager", "compile s",
                           "data batch ms", "data / eager step"])]
    for m in res["models"]:
        s = m["step_seconds"]
        lines.append(table_row([
            m["model"], f"{s['eager'] * 1e3:.1f}", f"{s['channels_last'] * 1e3:.1f}",
            f"{s['compiled'] * 1e3:.1f}", f"{m['channels_last_ratio']:.2f}",
            f"{m['compiled_ratio']:.2f}", f"{m['compile_seconds']:.0f}",
            f"{res['data_batch_seconds'] * 1e3:.1f}",
            f"{res['data_batch_seconds'] / s['eager']:.2f}"]))
    lines += targets_section(res["targets"])
    lines += ["", *res["notes"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before, start = os.getloadavg(), time.perf_counter()
    rows = []
    for backbone in args.models:
        prepared = {name: variant(name, backbone, args.batch)
                    for name in ("eager", "channels_last", "compiled")}
        med = time_interleaved({n: p[0] for n, p in prepared.items()}, args.rounds)
        rows.append({"model": backbone, "step_seconds": med,
                     "channels_last_ratio": med["channels_last"] / med["eager"],
                     "compiled_ratio": med["compiled"] / med["eager"],
                     "compile_seconds": prepared["compiled"][1]})
    train = load_dataset("cifar100", "train", download=False)
    data_s = data_batch_seconds(train, args.batch, args.rounds)
    targets = [t for m in rows for t in (
        {"name": f"{m['model']}: channels_last / eager step time",
         "measured": m["channels_last_ratio"], "goal": "< 1 (adopt if faster)",
         "met": m["channels_last_ratio"] < 1},
        {"name": f"{m['model']}: compiled / eager step time", "measured": m["compiled_ratio"],
         "goal": "< 1 (adopt if faster)", "met": m["compiled_ratio"] < 1})]
    targets.append({"name": "data batch / eager ResNet-20 step", "goal": "< 0.1",
                    "measured": data_s / rows[0]["step_seconds"]["eager"],
                    "met": data_s / rows[0]["step_seconds"]["eager"] < 0.1})
    res = {
        "command": "python -m benchmarks.cnn_path " + " ".join(sys.argv[1:]),
        "profile": (f"One SGD training step (momentum 0.9) of a randomly initialised model + "
                    f"linear head on a {args.batch} x 3 x 32 x 32 batch, median of "
                    f"{args.rounds} interleaved rounds, {torch.get_num_threads()} threads, "
                    f"torch {torch.__version__}."),
        "models": rows, "data_batch_seconds": data_s, "targets": targets,
        "timing": {"wall_seconds_total": time.perf_counter() - start,
                   "load_average_before": load_before, "load_average_after": os.getloadavg()},
        "notes": ["A ratio below 1 means the variant is faster than edgecl's eager NCHW step. "
                  "Compile time is paid once per process and per input shape; a run with "
                  "few steps may not recover it."],
    }
    write_result("cnn_path", res)
    atomic_write_text(RESULTS / "cnn_path.md", markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
