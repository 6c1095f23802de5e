"""Data sets, continual-learning scenarios, batched transforms and the prefetching loader.

Nothing here touches the network or the disk at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgecl.data.base import ArrayDataset, cache_dir, resolve_data_root
from edgecl.data.cifar import CIFAR10_INFO, CIFAR100_INFO, load_cifar10, load_cifar100
from edgecl.data.download import download_file, safe_extract_tar
from edgecl.data.fashion_mnist import FASHION_MNIST_INFO, load_fashion_mnist
from edgecl.data.image_folder import IMAGE_FOLDER_INFO, load_image_folder
from edgecl.data.loader import iterate_batches, num_batches
from edgecl.data.scenarios import Scenario, Task, class_incremental
from edgecl.data.transforms import BatchTransform, eval_transform, train_transform
from edgecl.errors import DataError

# Per data set: num_classes (None: given by the folder), image_size (native side length; for
# image_folder the default decode size), channels, split sizes and normalization mean/std.
DATASET_INFO: dict[str, dict[str, Any]] = {
    "cifar100": CIFAR100_INFO,
    "cifar10": CIFAR10_INFO,
    "fashion_mnist": FASHION_MNIST_INFO,
    "image_folder": IMAGE_FOLDER_INFO,
}

_LOADERS = {
    "cifar100": load_cifar100,
    "cifar10": load_cifar10,
    "fashion_mnist": load_fashion_mnist,
    "image_folder": load_image_folder,
}
SPLITS = ("train", "test")


def load_dataset(
    name: str,
    split: str,
    root: str | Path | None = None,
    download: bool = True,
    **kwargs: Any,
) -> ArrayDataset:
    """Load ``split`` ("train"/"test") of data set ``name`` (see ``DATASET_INFO`` for names).

    ``root`` defaults to ``$EDGECL_DATA`` and then ``~/.cache/edgecl/data``. Extra keyword
    arguments go to the data set's loader (``image_folder`` takes ``path`` and ``image_size``).
    """
    if name not in _LOADERS:
        raise DataError(f"Unknown data set {name!r}; valid names are {', '.join(_LOADERS)}.")
    if split not in SPLITS:
        raise DataError(f"Unknown split {split!r}; valid splits are {', '.join(SPLITS)}.")
    if kwargs and name != "image_folder":
        raise DataError(f"Data set {name!r} takes no extra options, got {sorted(kwargs)}.")
    return _LOADERS[name](split, root, download, **kwargs)


__all__ = [
    "DATASET_INFO",
    "ArrayDataset",
    "BatchTransform",
    "DataError",
    "Scenario",
    "Task",
    "cache_dir",
    "class_incremental",
    "download_file",
    "eval_transform",
    "iterate_batches",
    "load_dataset",
    "num_batches",
    "resolve_data_root",
    "safe_extract_tar",
    "train_transform",
]
