"""Core data types, data/cache locations and the on-disk array cache shared by all loaders."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecl.errors import DataError
from edgecl.io import atomic_write_bytes, atomic_writer

DATA_ENV_VAR = "EDGECL_DATA"
CACHE_ENV_VAR = "EDGECL_CACHE"
DEFAULT_CACHE = Path("~/.cache/edgecl")

# Bump when the layout of cached arrays changes so that old caches are rebuilt, not misread.
ARRAY_CACHE_VERSION = 1


@dataclass(frozen=True, eq=False)
class ArrayDataset:
    """A whole split held as arrays: uint8 RGB (or grey) images NHWC and int64 labels."""

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    name: str

    def __post_init__(self) -> None:
        _check_images(self.images, self.name)
        _check_labels(self.labels, len(self.images), len(self.class_names), self.name)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __repr__(self) -> str:
        return (
            f"ArrayDataset(name={self.name!r}, images={self.images.shape} {self.images.dtype}, "
            f"num_classes={self.num_classes})"
        )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, indices: np.ndarray) -> ArrayDataset:
        """A new data set holding the samples at ``indices`` (copied, in that order)."""
        indices = np.asarray(indices)
        if indices.dtype == bool or not np.issubdtype(indices.dtype, np.integer):
            raise DataError(
                f"subset() of {self.name!r} needs integer indices, got {indices.dtype}."
            )
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
            raise DataError(
                f"subset() of {self.name!r}: indices must lie in [0, {len(self)}), "
                f"got values from {indices.min()} to {indices.max()}."
            )
        return ArrayDataset(
            images=np.ascontiguousarray(self.images[indices]),
            labels=np.ascontiguousarray(self.labels[indices]),
            class_names=self.class_names,
            name=self.name,
        )


def _check_images(images: np.ndarray, name: str) -> None:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise DataError(
            f"Data set {name!r}: images must be uint8 with shape (N, H, W, C), C in {{1, 3}}; "
            f"got dtype {images.dtype} and shape {images.shape}."
        )


def _check_labels(labels: np.ndarray, n_images: int, n_classes: int, name: str) -> None:
    if labels.dtype != np.int64 or labels.shape != (n_images,):
        raise DataError(
            f"Data set {name!r}: labels must be int64 with shape ({n_images},); "
            f"got dtype {labels.dtype} and shape {labels.shape}."
        )
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise DataError(
            f"Data set {name!r}: labels must lie in [0, {n_classes}) for its {n_classes} class "
            f"names; got values from {labels.min()} to {labels.max()}."
        )


def resolve_data_root(root: str | Path | None) -> Path:
    """Where data sets live: the explicit argument, else ``$EDGECL_DATA``, else the cache."""
    if root is not None and str(root) != "":
        return Path(root).expanduser()
    from_env = os.environ.get(DATA_ENV_VAR)
    if from_env:
        return Path(from_env).expanduser()
    return DEFAULT_CACHE.expanduser() / "data"


def cache_dir() -> Path:
    """Directory for derived files (decompressed data, decoded arrays); created on demand."""
    from_env = os.environ.get(CACHE_ENV_VAR)
    path = Path(from_env).expanduser() if from_env else DEFAULT_CACHE.expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(
            f"Cannot create the cache directory {path} ({err}). Point ${CACHE_ENV_VAR} at a "
            f"writable directory, e.g. `export {CACHE_ENV_VAR}=/tmp/edgecl-cache`."
        ) from err
    return path


def file_fingerprint(path: Path) -> dict[str, Any]:
    """Cheap identity of a file (absolute path, size, mtime) for cache invalidation."""
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def load_cached_arrays(
    directory: Path,
    stem: str,
    key: dict[str, Any],
    build: Callable[[], tuple[np.ndarray, np.ndarray]],
    *,
    mmap: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels from ``<directory>/<stem>_{images,labels}.npy`` if their stamp matches.

    ``key`` describes everything the arrays were derived from; when the stamp written next to
    the arrays records a different key (or the files look damaged), ``build()`` is called and
    its result is written (atomically, stamp last) for the next call.
    """
    paths = _cache_paths(directory, stem)
    full_key = {"version": ARRAY_CACHE_VERSION, **key}
    cached = _read_cached_arrays(paths, full_key, mmap)
    if cached is not None:
        return cached
    images, labels = build()
    directory.mkdir(parents=True, exist_ok=True)
    paths["stamp"].unlink(missing_ok=True)
    for which, array in (("images", images), ("labels", labels)):
        with atomic_writer(paths[which]) as handle:
            np.save(handle, np.ascontiguousarray(array), allow_pickle=False)
    stamp = {"key": full_key, "sizes": {w: paths[w].stat().st_size for w in ("images", "labels")}}
    atomic_write_bytes(paths["stamp"], json.dumps(stamp, indent=1).encode())
    if mmap:
        return _load_npy_pair(paths, mmap)
    return images, labels


def _cache_paths(directory: Path, stem: str) -> dict[str, Path]:
    return {
        "images": directory / f"{stem}_images.npy",
        "labels": directory / f"{stem}_labels.npy",
        "stamp": directory / f"{stem}_arrays.json",
    }


def _read_cached_arrays(
    paths: dict[str, Path], key: dict[str, Any], mmap: bool
) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        stamp = json.loads(paths["stamp"].read_text())
        if stamp["key"] != key:
            return None
        for which in ("images", "labels"):
            if paths[which].stat().st_size != stamp["sizes"][which]:
                return None
        images, labels = _load_npy_pair(paths, mmap)
    except (OSError, ValueError, KeyError, TypeError):
        return None  # missing or damaged cache: rebuild it
    if images.dtype != np.uint8 or labels.dtype != np.int64 or len(images) != len(labels):
        return None
    return images, labels


def _load_npy_pair(paths: dict[str, Path], mmap: bool) -> tuple[np.ndarray, np.ndarray]:
    mode = "r" if mmap else None
    images = np.load(paths["images"], mmap_mode=mode, allow_pickle=False)
    labels = np.load(paths["labels"], allow_pickle=False)
    return images, labels
