"""CIFAR-100 and CIFAR-10 from the official python pickle release (plain or ``.xz``-compressed).

Look-up order for ``<folder>`` (``cifar-100-python`` or ``cifar-10-batches-py``):
``<root>/<folder>/`` and then ``cache_dir()/<folder>/``. Every official file may be present as
itself or as ``<file>.xz``; compressed files are decompressed once into ``cache_dir()/<folder>/``
and md5-verified against the official sums. Decoded arrays are cached there as ``.npy`` with a
stamp naming the source files (path, size, mtime) they were verified from, so later loads only
stat the sources and read the arrays.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import pickle
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecl.data.base import (
    DATA_ENV_VAR,
    ArrayDataset,
    cache_dir,
    file_fingerprint,
    load_cached_arrays,
    resolve_data_root,
)
from edgecl.data.download import (
    checksum_mismatch_error,
    download_file,
    is_writable_dir,
    safe_extract_tar,
    verify_file,
)
from edgecl.errors import DataError
from edgecl.io import CHUNK_BYTES, atomic_writer, sha256sum

SHA256SUMS_NAME = "SHA256SUMS"
CIFAR_IMAGE_SHAPE = (32, 32, 3)


@dataclass(frozen=True)
class CifarVariant:
    """Everything that differs between the CIFAR-100 and CIFAR-10 releases."""

    name: str
    folder: str
    url: str
    archive_md5: str
    file_md5: dict[str, str]
    split_files: dict[str, tuple[str, ...]]
    split_sizes: dict[str, int]
    meta_file: str
    label_key: bytes
    names_key: bytes
    num_classes: int

    @property
    def archive_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]


CIFAR100 = CifarVariant(
    name="cifar100",
    folder="cifar-100-python",
    url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    archive_md5="eb9058c3a382ffc7106e4002c42a8d85",
    file_md5={
        "train": "16019d7e3df5f24257cddd939b257f8d",
        "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
        "meta": "7973b15100ade9c7d40fb424638fde48",
    },
    split_files={"train": ("train",), "test": ("test",)},
    split_sizes={"train": 50_000, "test": 10_000},
    meta_file="meta",
    label_key=b"fine_labels",
    names_key=b"fine_label_names",
    num_classes=100,
)

CIFAR10 = CifarVariant(
    name="cifar10",
    folder="cifar-10-batches-py",
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    archive_md5="c58f30108f718f92721af3b95e74349a",
    file_md5={
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "test_batch": "40351d587109b95175f43aff81a1287e",
        "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
    },
    split_files={
        "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test": ("test_batch",),
    },
    split_sizes={"train": 50_000, "test": 10_000},
    meta_file="batches.meta",
    label_key=b"labels",
    names_key=b"label_names",
    num_classes=10,
)

CIFAR100_INFO: dict[str, Any] = {
    "num_classes": 100,
    "image_size": 32,
    "channels": 3,
    "train_size": 50_000,
    "test_size": 10_000,
    "mean": (0.5071, 0.4865, 0.4409),
    "std": (0.2673, 0.2564, 0.2762),
}
CIFAR10_INFO: dict[str, Any] = {
    "num_classes": 10,
    "image_size": 32,
    "channels": 3,
    "train_size": 50_000,
    "test_size": 10_000,
    "mean": (0.4914, 0.4822, 0.4465),
    "std": (0.2470, 0.2435, 0.2616),
}


def load_cifar100(
    split: str, root: str | Path | None = None, download: bool = True
) -> ArrayDataset:
    """The CIFAR-100 ``split`` ("train"/"test") with its 100 fine labels."""
    return load_cifar(CIFAR100, split, root, download)


def load_cifar10(split: str, root: str | Path | None = None, download: bool = True) -> ArrayDataset:
    """The CIFAR-10 ``split`` ("train"/"test")."""
    return load_cifar(CIFAR10, split, root, download)


def load_cifar(
    variant: CifarVariant, split: str, root: str | Path | None, download: bool
) -> ArrayDataset:
    if split not in variant.split_files:
        raise DataError(
            f"Unknown split {split!r} for {variant.name}; use one of {sorted(variant.split_files)}."
        )
    data_root = resolve_data_root(root)
    source_dir = find_source_dir(variant, data_root)
    if source_dir is None:
        if not download:
            raise DataError(_missing_message(variant, data_root, "download=False was given."))
        source_dir = download_release(variant, data_root)
    class_names = read_class_names(variant, source_dir)
    sources = [source_file(source_dir, name) for name in variant.split_files[split]]
    key = {
        "dataset": variant.name,
        "split": split,
        "md5": [variant.file_md5[name] for name in variant.split_files[split]],
        "sources": [file_fingerprint(path) for path in sources],
    }
    images, labels = load_cached_arrays(
        cache_dir() / variant.folder,
        split,
        key,
        lambda: decode_split(variant, source_dir, split),
    )
    return ArrayDataset(images, labels, class_names, f"{variant.name}-{split}")


def _required_files(variant: CifarVariant) -> list[str]:
    return [*variant.file_md5]


def source_file(directory: Path, name: str) -> Path:
    """``directory/name`` if present, else its ``.xz`` twin (which may not exist either)."""
    plain = directory / name
    return plain if plain.is_file() else directory / f"{name}.xz"


def _candidate_dirs(variant: CifarVariant, data_root: Path) -> list[Path]:
    return [data_root / variant.folder, cache_dir() / variant.folder]


def find_source_dir(variant: CifarVariant, data_root: Path) -> Path | None:
    """The first candidate folder holding every official file (plain or ``.xz``)."""
    for directory in _candidate_dirs(variant, data_root):
        if all(source_file(directory, name).is_file() for name in _required_files(variant)):
            return directory
    return None


def _missing_message(variant: CifarVariant, data_root: Path, reason: str) -> str:
    files = ", ".join(_required_files(variant))
    looked = " and ".join(str(d) for d in _candidate_dirs(variant, data_root))
    return (
        f"{variant.name} data not found ({reason}) Looked in {looked} for the official files "
        f"[{files}] (each may also be stored as <file>.xz). To fix, either download "
        f"{variant.url} (md5 {variant.archive_md5}) and unpack it under a data root:\n"
        f"    mkdir -p {data_root} && curl -L {variant.url} | tar -xz -C {data_root}\n"
        f"or point edgecl at the folder that contains {variant.folder}/:\n"
        f"    --data-root /path/to/data   or   export {DATA_ENV_VAR}=/path/to/data"
    )


def download_release(variant: CifarVariant, data_root: Path) -> Path:
    """Download and unpack the official archive into the data root (or the cache if read-only)."""
    parent = data_root if is_writable_dir(data_root) else cache_dir()
    archive = parent / variant.archive_name
    try:
        download_file(variant.url, archive, md5=variant.archive_md5)
    except DataError as err:
        raise DataError(
            f"{_missing_message(variant, data_root, 'download failed:')}\n{err}"
        ) from err
    target = parent / variant.folder
    _extract_into(archive, variant.folder, target)
    archive.unlink(missing_ok=True)
    return target


def _extract_into(archive: Path, folder: str, target: Path) -> None:
    # Unpack next to the target first so that an interrupted extraction never leaves a
    # half-filled data folder behind.
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=target.parent))
    try:
        safe_extract_tar(archive, staging)
        unpacked = staging / folder
        if not unpacked.is_dir():
            raise DataError(
                f"The archive {archive} has no {folder}/ folder; it is not the official release. "
                f"Delete it and download it again."
            )
        target.mkdir(parents=True, exist_ok=True)
        for item in unpacked.iterdir():
            os.replace(item, target / item.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def read_class_names(variant: CifarVariant, source_dir: Path) -> tuple[str, ...]:
    meta = _unpickle(verified_plain_file(variant, source_dir, variant.meta_file))
    names = tuple(name.decode() for name in meta[variant.names_key])
    if len(names) != variant.num_classes:
        raise DataError(
            f"{variant.name}: expected {variant.num_classes} class names in {variant.meta_file}, "
            f"found {len(names)}. Delete {source_dir} and obtain the official release again."
        )
    return names


def decode_split(
    variant: CifarVariant, source_dir: Path, split: str
) -> tuple[np.ndarray, np.ndarray]:
    """Verify and unpickle the split's files into (N, 32, 32, 3) uint8 images and int64 labels."""
    images, labels = [], []
    for name in variant.split_files[split]:
        path = verified_plain_file(variant, source_dir, name)
        batch = _unpickle(path)
        images.append(_batch_images(batch, path))
        labels.append(np.asarray(batch[variant.label_key], dtype=np.int64))
    all_images = np.concatenate(images)
    all_labels = np.concatenate(labels)
    _check_split(variant, split, all_images, all_labels)
    return all_images, all_labels


def _batch_images(batch: dict, path: Path) -> np.ndarray:
    data = batch[b"data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise DataError(f"{path} does not hold uint8 CIFAR pixel rows; obtain the official file.")
    # Rows are stored channel-major (1024 R, 1024 G, 1024 B values); the library uses NHWC.
    return np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def _check_split(variant: CifarVariant, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    expected = variant.split_sizes[split]
    ok_shape = images.shape == (expected, *CIFAR_IMAGE_SHAPE) and labels.shape == (expected,)
    ok_labels = labels.size > 0 and labels.min() >= 0 and labels.max() < variant.num_classes
    if not (ok_shape and ok_labels):
        raise DataError(
            f"{variant.name} {split}: expected {expected} images of shape {CIFAR_IMAGE_SHAPE} with "
            f"labels in [0, {variant.num_classes}), got {images.shape} / {labels.shape}. "
            f"Delete the data and the cache ({cache_dir() / variant.folder}) and obtain the "
            f"official release again."
        )


def verified_plain_file(variant: CifarVariant, source_dir: Path, name: str) -> Path:
    """Path of an md5-verified plain copy of official file ``name`` (decompressing if needed)."""
    expected = variant.file_md5[name]
    plain = source_dir / name
    if plain.is_file():
        verify_file(plain, md5=expected, fix=_corrupt_fix(variant, plain))
        return plain
    compressed = source_dir / f"{name}.xz"
    decompressed = cache_dir() / variant.folder / name
    if decompressed.is_file():
        try:
            verify_file(decompressed, md5=expected, fix="")
            return decompressed
        except DataError:
            pass  # a damaged cache copy: decompress it again from the verified source below
    _verify_listed_sha256(compressed)
    _decompress_xz(compressed, decompressed, expected, variant)
    return decompressed


def _corrupt_fix(variant: CifarVariant, path: Path) -> str:
    return (
        f"Delete {path} and obtain it again from the official release {variant.url} "
        f"(or re-run with download=True after deleting the whole {path.parent} folder)."
    )


def _verify_listed_sha256(compressed: Path) -> None:
    """Check ``compressed`` against a ``SHA256SUMS`` file next to it, if that lists it."""
    sums_file = compressed.parent / SHA256SUMS_NAME
    if not sums_file.is_file():
        return
    listed = _parse_sums(sums_file.read_text()).get(compressed.name)
    if listed is None:
        return
    actual = sha256sum(compressed)
    if actual != listed:
        raise checksum_mismatch_error(
            compressed,
            "sha256",
            listed,
            actual,
            f"It does not match {sums_file}. Replace {compressed} with an intact copy.",
        )


def _parse_sums(text: str) -> dict[str, str]:
    """``<hex>  <name>`` lines (coreutils format, optional ``*`` binary marker) as name -> hex."""
    sums = {}
    for line in text.splitlines():
        parts = line.strip().split(maxsplit=1)
        if len(parts) == 2:
            sums[parts[1].lstrip("*").strip()] = parts[0].lower()
    return sums


def _decompress_xz(compressed: Path, dest: Path, expected_md5: str, variant: CifarVariant) -> None:
    digest = hashlib.md5()
    try:
        with lzma.open(compressed, "rb") as source, atomic_writer(dest) as out:
            for chunk in iter(lambda: source.read(CHUNK_BYTES), b""):
                out.write(chunk)
                digest.update(chunk)
            if digest.hexdigest() != expected_md5:
                raise checksum_mismatch_error(
                    compressed,
                    "md5 (of the decompressed content)",
                    expected_md5,
                    digest.hexdigest(),
                    _corrupt_fix(variant, compressed),
                )
    except (lzma.LZMAError, EOFError) as err:
        raise DataError(
            f"Cannot decompress {compressed} ({err}); it is damaged or truncated. "
            f"{_corrupt_fix(variant, compressed)}"
        ) from err


_ALLOWED_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # how Python 3 writes bytes into protocol-2 pickles
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Refuses every global except what a pickled numpy array needs (defence in depth)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in CIFAR files")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as handle:
            return _ArrayOnlyUnpickler(handle, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as err:
        raise DataError(f"Cannot read {path} ({err}); obtain the official file again.") from err
