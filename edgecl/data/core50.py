"""CORe50 (Lomonaco & Maltoni 2017) from a local copy, and its NIC/NICv2 scenarios.

Expected layout under the data root (``<root>/core50`` or ``<root>`` itself), as distributed
(``core50_128x128.zip`` and ``batches_filelists.zip`` / the NICv2 filelists)::

    core50_128x128/s{1..11}/o{1..50}/C_{ss}_{oo}_{fff}.png
    NIC_v2_391/run{r}/train_batch_{ii}_filelist.txt       (ii: 00 … 390, zfill(2) as in the
    NIC_v2_391/run{r}/test_filelist.txt                    official loaders; 000 also read)
    batches_filelists/{NI,NC,NIC}_inc/run{r}/...          (the older scenarios)

Every filelist line is ``<path relative to core50_128x128> <label>``; labels are the 50
object ids (``o1`` → 0). Sessions 3, 7 and 10 form the test set.

:func:`load_core50` decodes one split (all training batches concatenated in batch order, or
the test list) once into a memory-mapped uint8 array under ``cache_dir()/core50/``.
:func:`core50_scenario` returns the :class:`~edgecl.data.scenarios.Scenario` where each
incremental batch is a :class:`~edgecl.data.scenarios.Task`: classes are remapped to the
order of their first appearance in the stream (so "seen so far" is always a prefix
``0..n-1``), ``Task.classes`` are the classes present in the batch, and ``Task.test_indices``
are the test images of the classes the batch *introduces* (empty for batches of known
classes only), so the test images of tasks ``0..t`` are those of every class seen so far.
``test_stride=20`` keeps every 20th test image, as the AR1*/ViT-LR code does.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from edgecl.data.base import (
    DATA_ENV_VAR,
    ArrayDataset,
    cache_dir,
    load_cached_arrays,
    resolve_data_root,
)
from edgecl.data.image_folder import decode_samples
from edgecl.data.scenarios import Scenario, Task
from edgecl.errors import DataError

IMAGES_DIR = "core50_128x128"
SCENARIO_DIRS: dict[str, str] = {
    "ni": "batches_filelists/NI_inc",
    "nc": "batches_filelists/NC_inc",
    "nic": "batches_filelists/NIC_inc",
    "nicv2_79": "NIC_v2_79",
    "nicv2_196": "NIC_v2_196",
    "nicv2_391": "NIC_v2_391",
}
N_BATCHES: dict[str, int] = {
    "ni": 8, "nc": 9, "nic": 79, "nicv2_79": 79, "nicv2_196": 196, "nicv2_391": 391,
}
N_OBJECTS = 50

CORE50_INFO: dict[str, Any] = {
    "num_classes": N_OBJECTS,
    "image_size": 128,
    "channels": 3,
    "mean": (0.485, 0.456, 0.406),  # the AR1*/ViT-LR preprocessing (ImageNet statistics)
    "std": (0.229, 0.224, 0.225),
}
CLASS_NAMES: tuple[str, ...] = tuple(f"o{i}" for i in range(1, N_OBJECTS + 1))
_BATCH_FILE = re.compile(r"^train_batch_(\d+)_filelist\.txt$")

Entry = tuple[str, int]


# ---- locating files ----------------------------------------------------------------------------
def find_core50_root(root: str | Path | None) -> Path:
    """The folder holding ``core50_128x128/``: ``<root>/core50`` or ``<root>``."""
    base = resolve_data_root(root)
    for candidate in (base / "core50", base):
        if (candidate / IMAGES_DIR).is_dir():
            return candidate
    raise DataError(
        f"CORe50 not found: no {IMAGES_DIR}/ under {base / 'core50'} or {base}. Download "
        "core50_128x128.zip and the batch filelists from https://vlomonaco.github.io/core50/, "
        f"unzip them into DIR/core50/ and pass --data-root DIR (or `export {DATA_ENV_VAR}=DIR`)."
    )


def filelist_dir(core_root: Path, scenario: str, run: int) -> Path:
    if scenario not in SCENARIO_DIRS:
        raise DataError(f"Unknown CORe50 scenario {scenario!r}; use one of {list(SCENARIO_DIRS)}.")
    rel = Path(SCENARIO_DIRS[scenario])
    candidates = [core_root / rel / f"run{run}", core_root / "batches_filelists" / rel.name /
                  f"run{run}", core_root / rel / f"Run{run}"]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise DataError(
        f"CORe50 filelists for {scenario} run {run} not found; looked at "
        f"{', '.join(str(c) for c in candidates)}. Unzip the official filelists there."
    )


def batch_filelists(directory: Path, expected: int | None) -> list[Path]:
    """``train_batch_*_filelist.txt`` in numeric order (00/000 padding both accepted)."""
    found = {int(m.group(1)): p for p in directory.iterdir() if (m := _BATCH_FILE.match(p.name))}
    n = len(found)
    if sorted(found) != list(range(n)) or n == 0:
        raise DataError(
            f"{directory}: training filelists must be numbered 0..n-1 without gaps; found "
            f"{sorted(found)[:5]}… ({n} files)."
        )
    if expected is not None and n != expected:
        raise DataError(f"{directory}: expected {expected} training batches, found {n}.")
    return [found[i] for i in range(n)]


def read_filelist(path: Path) -> list[Entry]:
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or not fields[1].isdigit():
            raise DataError(f"{path}:{number}: expected '<relative path> <label>', got {line!r}")
        label = int(fields[1])
        if not 0 <= label < N_OBJECTS:
            raise DataError(f"{path}:{number}: label {label} outside 0..{N_OBJECTS - 1}")
        entries.append((fields[0], label))
    return entries


def read_batches(core_root: Path, scenario: str, run: int) -> tuple[list[list[Entry]], list[Entry]]:
    """The training batches and the test list of one scenario run."""
    directory = filelist_dir(core_root, scenario, run)
    train = [read_filelist(p) for p in batch_filelists(directory, N_BATCHES[scenario])]
    test_file = directory / "test_filelist.txt"
    if not test_file.is_file():
        raise DataError(f"{test_file} is missing; restore the official CORe50 filelists.")
    return train, read_filelist(test_file)


# ---- decoding --------------------------------------------------------------------------------
def _decode(core_root: Path, entries: list[Entry], image_size: int, tag: str) -> ArrayDataset:
    images_dir = core_root / IMAGES_DIR
    samples = [(images_dir / rel, label) for rel, label in entries]
    missing = [str(p) for p, _ in samples[:1000] if not p.is_file()]
    if missing:
        raise DataError(f"CORe50 image(s) listed but missing, e.g. {missing[0]}.")
    digest = hashlib.sha256(json.dumps(
        {"root": str(core_root.resolve()), "size": image_size, "entries": entries}
    ).encode()).hexdigest()
    cache = cache_dir() / "core50" / f"{tag}-{image_size}"
    scratch = cache / "decoding.scratch.npy"
    try:
        images, labels = load_cached_arrays(
            cache, digest[:16], {"dataset": "core50", "digest": digest},
            lambda: decode_samples(samples, image_size, scratch), mmap=True)
    finally:
        scratch.unlink(missing_ok=True)
    return ArrayDataset(images, labels, CLASS_NAMES, f"core50:{tag}")


def load_core50(
    split: str,
    root: str | Path | None = None,
    download: bool = False,
    *,
    scenario: str = "nicv2_391",
    run: int = 0,
    image_size: int = 128,
) -> ArrayDataset:
    """``split`` of CORe50 (labels: object ids 0..49) for one scenario run.

    "train" is every training batch concatenated in batch order; "test" the scenario's test
    list. ``download`` is accepted for a uniform signature: CORe50 is never downloaded.
    """
    del download
    if split not in ("train", "test"):
        raise DataError(f"Unknown split {split!r} for core50; use 'train' or 'test'.")
    core_root = find_core50_root(root)
    train, test = read_batches(core_root, scenario, run)
    entries = [e for batch in train for e in batch] if split == "train" else test
    return _decode(core_root, entries, image_size, f"{scenario}-run{run}-{split}")


# ---- the scenario ---------------------------------------------------------------------------
def core50_decode_size(img_size: int) -> int:
    """Images are 128 px: decoded at the backbone's input size when it is smaller, else at 128
    (the batched transforms resize every batch to the backbone's size, so a 224 px ViT gets
    upsampled 128 px images, without storing them at 224 px)."""
    return min(CORE50_INFO["image_size"], img_size)


def first_appearance_order(batches: list[np.ndarray]) -> np.ndarray:
    """Original class ids in the order they first appear in the stream."""
    order: list[int] = []
    seen: set[int] = set()
    for labels in batches:
        for c in labels.tolist():
            if c not in seen:
                seen.add(c)
                order.append(c)
    return np.asarray(order, dtype=np.int64)


def incremental_scenario(
    train: ArrayDataset, test: ArrayDataset, batch_sizes: list[int], name: str,
    test_stride: int = 1,
) -> Scenario:
    """A Scenario whose task i is the i-th consecutive block of ``batch_sizes[i]`` samples."""
    bounds = np.cumsum([0, *batch_sizes])
    if bounds[-1] != len(train):
        raise DataError(f"batch sizes sum to {bounds[-1]}, the training set has {len(train)}")
    batches = [train.labels[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
    order = first_appearance_order(batches)
    remap = np.full(train.num_classes, -1, dtype=np.int64)
    remap[order] = np.arange(len(order))
    names = tuple(train.class_names[c] for c in order)
    keep = np.arange(0, len(test), test_stride)
    keep = keep[remap[test.labels[keep]] >= 0]  # test images of classes never trained: out
    new_train = ArrayDataset(train.images, remap[train.labels], names, train.name)
    new_test = ArrayDataset(np.ascontiguousarray(test.images[keep]), remap[test.labels[keep]],
                            names, test.name)
    tasks, introduced = [], 0
    for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        classes = np.unique(new_train.labels[lo:hi])
        top = int(classes.max()) + 1 if len(classes) else introduced
        new = (new_test.labels >= introduced) & (new_test.labels < max(top, introduced))
        tasks.append(Task(i, classes, np.arange(lo, hi, dtype=np.int64), np.flatnonzero(new)))
        introduced = max(introduced, top)
    return Scenario(name, new_train, new_test, tuple(tasks), order, len(order))


def core50_scenario(
    root: str | Path | None = None,
    *,
    scenario: str = "nicv2_391",
    run: int = 0,
    image_size: int = 128,
    test_stride: int = 1,
    max_batches: int | None = None,
) -> Scenario:
    """CORe50 ``scenario`` (default NICv2-391), one Task per incremental batch.

    ``max_batches`` keeps only the first n incremental batches (a reduced profile).
    """
    if test_stride < 1:
        raise DataError(f"test_stride must be >= 1, got {test_stride}")
    core_root = find_core50_root(root)
    batches, _ = read_batches(core_root, scenario, run)
    train = load_core50("train", root, scenario=scenario, run=run, image_size=image_size)
    test = load_core50("test", root, scenario=scenario, run=run, image_size=image_size)
    name = f"core50/{scenario}-run{run}"
    if max_batches is not None:
        if max_batches < 1:
            raise DataError(f"max_batches must be >= 1, got {max_batches}")
        batches = batches[:max_batches]
        n = sum(len(b) for b in batches)
        train = ArrayDataset(train.images[:n], train.labels[:n], train.class_names, train.name)
        name += f"-first{len(batches)}"
    if test_stride > 1:
        name += f"-test-every{test_stride}"
    return incremental_scenario(train, test, [len(b) for b in batches], name, test_stride)
