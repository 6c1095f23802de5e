"""Image-folder data sets (ImageNet-R style pre-split trees and Tiny-ImageNet), decoded once.

Layouts (``path`` is the data set folder):

* generic: ``<path>/<split>/<class>/**/*.{jpg,jpeg,png}`` (any case); split "test" falls back to
  ``<path>/val`` when ``<path>/test`` does not exist. Class ids follow the sorted union of the
  class folder names of all splits, so train and test agree.
* Tiny-ImageNet (recognised by ``wnids.txt`` or ``val/val_annotations.txt``):
  ``train/<wnid>/images/*.JPEG`` and ``val/images/*`` labelled by ``val/val_annotations.txt``;
  split "test" reads ``val`` (the official test set has no labels).

Every image is decoded with Pillow, its shorter side resized to ``image_size`` (bicubic,
antialiased) and center-cropped to a square. The resulting uint8 array is cached under
``cache_dir()/image_folder/`` keyed by the folder, split, size and every file's
path/size/mtime, and memory-mapped on later loads.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
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
from edgecl.errors import DataError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png"})
DEFAULT_IMAGE_SIZE = 224
TINY_IMAGENET_ANNOTATIONS = Path("val") / "val_annotations.txt"

IMAGE_FOLDER_INFO: dict[str, Any] = {
    "num_classes": None,  # given by the folder tree
    "image_size": DEFAULT_IMAGE_SIZE,  # the default decode size, not a native size
    "channels": 3,
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
}

Sample = tuple[Path, int]


def load_image_folder(
    split: str,
    root: str | Path | None = None,
    download: bool = False,
    *,
    path: str | Path | None = None,
    image_size: int = DEFAULT_IMAGE_SIZE,
) -> ArrayDataset:
    """Decode (once) and return ``split`` of the image tree at ``path`` as square RGB images.

    ``download`` is accepted for a uniform signature; image folders are never downloaded.
    """
    del download
    if split not in ("train", "test"):
        raise DataError(f"Unknown split {split!r} for image_folder; use 'train' or 'test'.")
    if image_size < 1:
        raise DataError(f"image_size must be a positive number of pixels, got {image_size}.")
    dataset_dir = resolve_dataset_dir(path, resolve_data_root(root))
    class_names, samples = list_samples(dataset_dir, split)
    key = {"dataset": "image_folder", "tree": _tree_digest(dataset_dir, split, image_size, samples)}
    cache = cache_dir() / "image_folder" / f"{dataset_dir.name}-{split}-{image_size}"
    scratch = cache / "decoding.scratch.npy"
    try:
        images, labels = load_cached_arrays(
            cache,
            f"{key['tree'][:16]}",
            key,
            lambda: decode_samples(samples, image_size, scratch),
            mmap=True,
        )
    finally:
        scratch.unlink(missing_ok=True)
    return ArrayDataset(images, labels, class_names, f"image_folder:{dataset_dir.name}-{split}")


def resolve_dataset_dir(path: str | Path | None, data_root: Path) -> Path:
    """``path`` if it is absolute or exists; otherwise ``path`` under the data root."""
    if path is None or str(path) == "":
        raise DataError(
            "image_folder needs the data set folder: load_dataset('image_folder', split, "
            "path='/path/to/imagenet-r') (relative paths are looked up under the data root)."
        )
    given = Path(path).expanduser()
    candidates = [given] if given.is_absolute() else [data_root / given, given]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    raise DataError(
        f"Image folder not found; looked at {', '.join(str(c) for c in candidates)}. Pass an "
        f"existing folder as path=..., or set the data root with --data-root DIR or "
        f"`export {DATA_ENV_VAR}=DIR` so that DIR/{given} exists."
    )


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def _images_under(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if _is_image(p))


def list_samples(dataset_dir: Path, split: str) -> tuple[tuple[str, ...], list[Sample]]:
    """Class names and the (file, label) pairs of ``split``, in a deterministic order."""
    if _is_tiny_imagenet(dataset_dir):
        class_names, samples = _tiny_imagenet_samples(dataset_dir, split)
    else:
        class_names, samples = _generic_samples(dataset_dir, split)
    if not samples:
        raise DataError(
            f"No images (*.jpg, *.jpeg, *.png) found for split {split!r} under {dataset_dir}. "
            f"Expected {dataset_dir}/{split}/<class>/<image> (or a Tiny-ImageNet layout)."
        )
    return class_names, samples


def _split_dir(dataset_dir: Path, split: str) -> Path:
    wanted = dataset_dir / split
    if split == "test" and not wanted.is_dir() and (dataset_dir / "val").is_dir():
        return dataset_dir / "val"
    return wanted


def _generic_samples(dataset_dir: Path, split: str) -> tuple[tuple[str, ...], list[Sample]]:
    split_dirs = {_split_dir(dataset_dir, s) for s in ("train", "test")}
    class_names = tuple(
        sorted({c.name for d in split_dirs if d.is_dir() for c in d.iterdir() if c.is_dir()})
    )
    split_dir = _split_dir(dataset_dir, split)
    if not split_dir.is_dir():
        raise DataError(
            f"Split folder {split_dir} does not exist. Expected the layout "
            f"{dataset_dir}/{{train,test}}/<class>/<image>; split the data set first."
        )
    samples = [
        (image, label)
        for label, name in enumerate(class_names)
        if (split_dir / name).is_dir()
        for image in _images_under(split_dir / name)
    ]
    return class_names, samples


def _is_tiny_imagenet(dataset_dir: Path) -> bool:
    return (dataset_dir / "wnids.txt").is_file() or (
        dataset_dir / TINY_IMAGENET_ANNOTATIONS
    ).is_file()


def _tiny_imagenet_samples(dataset_dir: Path, split: str) -> tuple[tuple[str, ...], list[Sample]]:
    wnids_file = dataset_dir / "wnids.txt"
    if wnids_file.is_file():
        class_names = tuple(sorted({w for w in wnids_file.read_text().split() if w}))
    else:
        class_names = tuple(sorted(d.name for d in (dataset_dir / "train").iterdir() if d.is_dir()))
    label_of = {wnid: i for i, wnid in enumerate(class_names)}
    if split == "train":
        samples = [
            (image, label_of[wnid])
            for wnid in class_names
            for image in _images_under(dataset_dir / "train" / wnid)
        ]
    else:
        samples = _tiny_imagenet_val_samples(dataset_dir, label_of)
    return class_names, samples


def _tiny_imagenet_val_samples(dataset_dir: Path, label_of: dict[str, int]) -> list[Sample]:
    annotations = dataset_dir / TINY_IMAGENET_ANNOTATIONS
    if not annotations.is_file():
        raise DataError(
            f"{annotations} is missing; Tiny-ImageNet's labelled evaluation split needs it. "
            f"Restore the official tiny-imagenet-200 folder."
        )
    samples = []
    for line_number, line in enumerate(annotations.read_text().splitlines(), start=1):
        fields = line.split("\t")
        if len(fields) < 2:
            continue
        image = dataset_dir / "val" / "images" / fields[0]
        if fields[1] not in label_of or not image.is_file():
            raise DataError(
                f"{annotations}:{line_number} names {fields[0]} of class {fields[1]}, but the "
                f"image or the class is missing. Restore the official tiny-imagenet-200 folder."
            )
        samples.append((image, label_of[fields[1]]))
    return sorted(samples)


def _tree_digest(dataset_dir: Path, split: str, image_size: int, samples: list[Sample]) -> str:
    """Hash of everything the decoded arrays depend on: folder, split, size, files and labels."""
    entries = []
    for image, label in samples:
        stat = image.stat()
        entries.append([str(image.relative_to(dataset_dir)), stat.st_size, stat.st_mtime_ns, label])
    payload = {"dir": str(dataset_dir), "split": split, "size": image_size, "files": entries}
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()


def decode_samples(
    samples: list[Sample], image_size: int, scratch: Path
) -> tuple[np.ndarray, np.ndarray]:
    """Decode all images into a disk-backed (N, S, S, 3) uint8 array (keeps RAM use small)."""
    scratch.parent.mkdir(parents=True, exist_ok=True)
    images = np.lib.format.open_memmap(
        scratch, mode="w+", dtype=np.uint8, shape=(len(samples), image_size, image_size, 3)
    )
    labels = np.array([label for _, label in samples], dtype=np.int64)

    def decode_into(index: int) -> None:
        images[index] = load_square_image(samples[index][0], image_size)

    # Pillow releases the GIL while decoding and resizing, so threads scale with cores.
    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(decode_into, range(len(samples))))
    images.flush()
    return images, labels


def load_square_image(path: Path, size: int) -> np.ndarray:
    """RGB image with its shorter side resized to ``size`` and center-cropped to size x size."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.draft("RGB", (size, size))  # JPEG only: decode at a reduced scale >= size
            rgb = image.convert("RGB")
    except (OSError, UnidentifiedImageError) as err:
        raise DataError(f"Cannot decode image {path} ({err}); fix or delete the file.") from err
    width, height = rgb.size
    scale = size / min(width, height)
    new_width, new_height = max(size, round(width * scale)), max(size, round(height * scale))
    resized = rgb.resize((new_width, new_height), Image.Resampling.BICUBIC)
    left, top = (new_width - size) // 2, (new_height - size) // 2
    cropped = resized.crop((left, top, left + size, top + size))
    return np.asarray(cropped, dtype=np.uint8)


def clear_image_folder_cache() -> None:
    """Delete every decoded image-folder cache (they are rebuilt on the next load)."""
    shutil.rmtree(cache_dir() / "image_folder", ignore_errors=True)
