"""Data sets, continual-learning scenarios, batched transforms and the prefetching loader.

Nothing here touches the network or the disk at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgecl.data.base import ArrayDataset, cache_dir, resolve_data_root
from edgecl.data.download import download_file, safe_extract_tar
from edgecl.data.loader import iterate_batches, num_batches
from edgecl.data.registry import (
    DATASET_INFO,
    DATASETS,
    SPLITS,
    DatasetEntry,
    build_scenario,
    dataset_entry,
    load_split,
    register_dataset,
)
from edgecl.data.scenarios import Scenario, Task, class_incremental
from edgecl.data.transforms import BatchTransform, eval_transform, train_transform
from edgecl.errors import DataError


def load_dataset(
    name: str,
    split: str,
    root: str | Path | None = None,
    download: bool = True,
    **kwargs: Any,
) -> ArrayDataset:
    """Load ``split`` ("train"/"test") of the registered data set ``name`` (see ``DATASETS``).

    ``root`` defaults to ``$EDGECL_DATA`` and then ``~/.cache/edgecl/data``. Extra keyword
    arguments go to the data set's loader (``image_folder`` takes ``path`` and ``image_size``;
    ``core50`` takes ``scenario``, ``run`` and ``image_size``). An unknown name is a
    :class:`~edgecl.errors.ConfigError`.
    """
    return load_split(dataset_entry(name), split, root, download, **kwargs)


__all__ = [
    "DATASETS",
    "DATASET_INFO",
    "SPLITS",
    "ArrayDataset",
    "BatchTransform",
    "DataError",
    "DatasetEntry",
    "Scenario",
    "Task",
    "build_scenario",
    "cache_dir",
    "class_incremental",
    "dataset_entry",
    "download_file",
    "eval_transform",
    "iterate_batches",
    "load_dataset",
    "num_batches",
    "register_dataset",
    "resolve_data_root",
    "safe_extract_tar",
    "train_transform",
]
