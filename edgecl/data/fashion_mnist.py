"""Fashion-MNIST from the official idx files (``.gz`` as published, or already gunzipped).

Look-up order: ``<root>/fashion-mnist/``, the Debian package folder
``/usr/share/datasets/fashion-mnist`` (``apt install dataset-fashion-mnist``), then
``cache_dir()/fashion-mnist/`` (where downloads go when the data root is read-only).

Checksums: a ``.gz`` file is accepted when its own md5 is the published one, or when the md5 of
its decompressed content is the official idx md5. The second rule exists because Debian's
package re-wrote the gzip headers (dropped the stored file name, set the timestamp to the build
date): its deflate streams are byte-identical to the official files, but the ``.gz`` md5s differ.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from pathlib import Path
from typing import IO, Any

import numpy as np

from edgecl.data.base import (
    DATA_ENV_VAR,
    ArrayDataset,
    cache_dir,
    file_fingerprint,
    load_cached_arrays,
    resolve_data_root,
)
from edgecl.data.download import checksum_mismatch_error, download_file, is_writable_dir
from edgecl.errors import DataError
from edgecl.io import CHUNK_BYTES, md5sum

FOLDER = "fashion-mnist"
BASE_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
SYSTEM_DIRS: tuple[Path, ...] = (Path("/usr/share/datasets/fashion-mnist"),)

CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SPLIT_SIZES = {"train": 60_000, "test": 10_000}

# md5 of the published .gz files (README of zalandoresearch/fashion-mnist).
GZ_MD5 = {
    "train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310",
}
# md5 of the decompressed idx files (the same bytes inside the published .gz files).
RAW_MD5 = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}

IDX_IMAGES_MAGIC = 0x0803  # unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 0x0801  # unsigned bytes, 1 dimension

FASHION_MNIST_INFO: dict[str, Any] = {
    "num_classes": 10,
    "image_size": 28,
    "channels": 1,
    "train_size": 60_000,
    "test_size": 10_000,
    "mean": (0.2860,),
    "std": (0.3530,),
}


def load_fashion_mnist(
    split: str, root: str | Path | None = None, download: bool = True
) -> ArrayDataset:
    """The Fashion-MNIST ``split`` as (N, 28, 28, 1) uint8 images and int64 labels."""
    if split not in SPLIT_FILES:
        raise DataError(
            f"Unknown split {split!r} for fashion_mnist; use one of {sorted(SPLIT_FILES)}."
        )
    data_root = resolve_data_root(root)
    files = find_split_files(split, data_root)
    if files is None:
        if not download:
            raise DataError(_missing_message(split, data_root, "download=False was given."))
        files = download_split(split, data_root)
    key = {
        "dataset": "fashion_mnist",
        "split": split,
        "sources": [file_fingerprint(f) for f in files],
    }
    images, labels = load_cached_arrays(
        cache_dir() / FOLDER, split, key, lambda: decode_split(split, files)
    )
    return ArrayDataset(images, labels, CLASS_NAMES, f"fashion_mnist-{split}")


def candidate_dirs(data_root: Path) -> list[Path]:
    return [data_root / FOLDER, *SYSTEM_DIRS, cache_dir() / FOLDER]


def _find_file(directory: Path, name: str) -> Path | None:
    for candidate in (directory / f"{name}.gz", directory / name):
        if candidate.is_file():
            return candidate
    return None


def find_split_files(split: str, data_root: Path) -> list[Path] | None:
    """[images, labels] files of ``split`` from the first folder that holds both."""
    for directory in candidate_dirs(data_root):
        found = [_find_file(directory, name) for name in SPLIT_FILES[split]]
        if all(path is not None for path in found):
            return [path for path in found if path is not None]
    return None


def _missing_message(split: str, data_root: Path, reason: str) -> str:
    names = ", ".join(f"{name}.gz" for name in SPLIT_FILES[split])
    looked = ", ".join(str(d) for d in candidate_dirs(data_root))
    target = data_root / FOLDER
    fetch = " && ".join(f"curl -LO {BASE_URL}{name}.gz" for name in SPLIT_FILES[split])
    return (
        f"fashion_mnist {split} data not found ({reason}) Looked in {looked} for [{names}]. "
        f"To fix, either install the Debian package (`sudo apt install dataset-fashion-mnist`), "
        f"or download the files from {BASE_URL}:\n"
        f"    mkdir -p {target} && cd {target} && {fetch}\n"
        f"or point edgecl at the folder that contains {FOLDER}/:\n"
        f"    --data-root /path/to/data   or   export {DATA_ENV_VAR}=/path/to/data"
    )


def download_split(split: str, data_root: Path) -> list[Path]:
    """Download the split's two official ``.gz`` files into the data root (or the cache)."""
    target = data_root / FOLDER
    if not is_writable_dir(target):
        target = cache_dir() / FOLDER
    paths = []
    for name in SPLIT_FILES[split]:
        url = f"{BASE_URL}{name}.gz"
        try:
            paths.append(download_file(url, target / f"{name}.gz", md5=GZ_MD5[name]))
        except DataError as err:
            message = _missing_message(split, data_root, "download failed:")
            raise DataError(f"{message}\n{err}") from err
    return paths


def verify_idx_file(path: Path, name: str) -> None:
    """Accept the published ``.gz`` bytes, or any file whose idx content is the official one."""
    if path.suffix == ".gz" and md5sum(path) == GZ_MD5[name]:
        return
    actual = _content_md5(path)
    if actual != RAW_MD5[name]:
        raise checksum_mismatch_error(
            path,
            "md5 (of the decompressed idx content)",
            RAW_MD5[name],
            actual,
            f"Delete {path} and download {BASE_URL}{name}.gz again "
            f"(published .gz md5 {GZ_MD5[name]}).",
        )


def _content_md5(path: Path) -> str:
    digest = hashlib.md5()
    try:
        with _open_idx(path) as handle:
            for chunk in iter(lambda: handle.read(CHUNK_BYTES), b""):
                digest.update(chunk)
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(
            f"Cannot read {path} ({err}); it is damaged or truncated. Delete it and download it "
            f"again from {BASE_URL}."
        ) from err
    return digest.hexdigest()


def _open_idx(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def decode_split(split: str, files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Verify and parse the idx files into (N, 28, 28, 1) uint8 images and int64 labels."""
    images_path, labels_path = files
    images_name, labels_name = SPLIT_FILES[split]
    verify_idx_file(images_path, images_name)
    verify_idx_file(labels_path, labels_name)
    images = _read_idx(images_path, IDX_IMAGES_MAGIC)
    labels = _read_idx(labels_path, IDX_LABELS_MAGIC).astype(np.int64)
    expected = SPLIT_SIZES[split]
    if images.shape != (expected, 28, 28) or labels.shape != (expected,):
        raise DataError(
            f"fashion_mnist {split}: expected {expected} images of 28x28, got {images.shape} and "
            f"{labels.shape} labels. Delete {images_path.parent} and download the data again."
        )
    return np.ascontiguousarray(images[..., None]), labels


def _read_idx(path: Path, magic: int) -> np.ndarray:
    with _open_idx(path) as handle:
        data = handle.read()
    found_magic = int.from_bytes(data[:4], "big")
    if found_magic != magic:
        raise DataError(f"{path} is not an idx file of the expected kind; download it again.")
    ndim = magic & 0xFF
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path} is truncated (header says {shape}); download it again.")
    return body.reshape(shape)
