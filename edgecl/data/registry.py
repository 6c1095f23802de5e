"""Every data set by name: its loader, its scenario builder, its transforms and its facts.

A new data set is one :func:`register_dataset` call (the built-ins are registered at the end of
this file). :func:`build_scenario` turns a run config's ``data`` section into the scenario.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from edgecl.data.base import ArrayDataset
from edgecl.data.cifar import CIFAR10_INFO, CIFAR100_INFO, load_cifar10, load_cifar100
from edgecl.data.core50 import CORE50_INFO, core50_decode_size, core50_scenario, load_core50
from edgecl.data.fashion_mnist import FASHION_MNIST_INFO, load_fashion_mnist
from edgecl.data.image_folder import IMAGE_FOLDER_INFO, load_image_folder
from edgecl.data.scenarios import Scenario, class_incremental
from edgecl.data.transforms import BatchTransform, eval_transform, train_transform
from edgecl.errors import ConfigError, DataError

SPLITS = ("train", "test")


class DataSpec(Protocol):
    """What the scenario builders read from a run config's ``data`` section (``DataConfig``)."""

    dataset: str
    root: str | None
    path: str | None
    download: bool
    n_tasks: int
    class_order: str | Sequence[int]
    train_per_class: int | None
    test_per_class: int | None
    core50_scenario: str
    core50_run: int
    core50_test_stride: int
    core50_max_batches: int | None


# loader(split, root, download, **options) -> ArrayDataset
Loader = Callable[..., ArrayDataset]
# transform(size, mean, std) -> BatchTransform
TransformFactory = Callable[[int, Sequence[float], Sequence[float]], BatchTransform]


class ScenarioBuilder(Protocol):
    def __call__(
        self, entry: DatasetEntry, data: DataSpec, seed: int, img_size: int
    ) -> Scenario: ...


def class_incremental_scenario(
    entry: DatasetEntry, data: DataSpec, seed: int, img_size: int
) -> Scenario:
    """Split Class-IL: ``data.n_tasks`` tasks of consecutive classes in ``data.class_order``."""
    del img_size  # stored at the native resolution; the batched transforms resize
    if data.path:
        raise ConfigError(
            f"data.path is only read by data.dataset image_folder; remove it for {entry.name}"
        )
    return _split_by_class(entry, data, seed)


def image_folder_scenario(
    entry: DatasetEntry, data: DataSpec, seed: int, img_size: int
) -> Scenario:
    """Split Class-IL over the image tree at ``data.path``, decoded at the backbone's size."""
    return _split_by_class(entry, data, seed, path=data.path, image_size=img_size)


def _split_by_class(entry: DatasetEntry, data: DataSpec, seed: int, **options: Any) -> Scenario:
    train = load_split(entry, "train", data.root, data.download, **options)
    test = load_split(entry, "test", data.root, data.download, **options)
    return class_incremental(
        train,
        test,
        data.n_tasks,
        class_order=data.class_order,
        seed=seed,
        train_per_class=data.train_per_class,
        test_per_class=data.test_per_class,
        per_class_subset=getattr(data, "per_class_subset", "seeded"),
        first_task_classes=getattr(data, "first_task_classes", None),
    )


def core50_config_scenario(
    entry: DatasetEntry, data: DataSpec, seed: int, img_size: int
) -> Scenario:
    """One task per incremental batch of ``data.core50_scenario`` (the filelists fix the order)."""
    del entry, seed
    return core50_scenario(
        data.root,
        scenario=data.core50_scenario,
        run=data.core50_run,
        image_size=core50_decode_size(img_size),
        test_stride=data.core50_test_stride,
        max_batches=data.core50_max_batches,
    )


@dataclass(frozen=True)
class DatasetEntry:
    """A data set: how to load a split, how a config makes it a scenario, how to transform it.

    ``info``: num_classes (None: given by the folder), image_size (native side length; for
    image_folder the default decode size), channels, split sizes, normalization mean/std.
    ``options``: the extra keyword arguments ``loader`` accepts.
    """

    name: str
    loader: Loader
    info: Mapping[str, Any]
    scenario: ScenarioBuilder = class_incremental_scenario
    train_transform: TransformFactory = train_transform
    eval_transform: TransformFactory = eval_transform
    options: tuple[str, ...] = ()

    def transforms(
        self, size: int, mean: Sequence[float], std: Sequence[float], *, augment: bool = True
    ) -> tuple[BatchTransform, BatchTransform]:
        """The training transform (the eval one when ``augment`` is off) and the eval one."""
        evaluation = self.eval_transform(size, mean, std)
        return (self.train_transform(size, mean, std) if augment else evaluation), evaluation


DATASETS: dict[str, DatasetEntry] = {}


def register_dataset(entry: DatasetEntry) -> DatasetEntry:
    """Add (or replace) ``entry`` under ``entry.name``."""
    DATASETS[entry.name] = entry
    return entry


def dataset_entry(name: str) -> DatasetEntry:
    if name not in DATASETS:
        raise ConfigError(f"unknown data set {name!r}; valid names are {', '.join(DATASETS)}")
    return DATASETS[name]


def load_split(
    entry: DatasetEntry, split: str, root: str | Path | None, download: bool, **options: Any
) -> ArrayDataset:
    """``split`` of ``entry``, after checking the split name and the loader options."""
    if split not in SPLITS:
        raise DataError(f"Unknown split {split!r}; valid splits are {', '.join(SPLITS)}.")
    unknown = sorted(set(options) - set(entry.options))
    if unknown and not entry.options:
        raise DataError(f"Data set {entry.name!r} takes no extra options, got {unknown}.")
    if unknown:
        raise DataError(
            f"Data set {entry.name!r} takes the options {', '.join(entry.options)}, got {unknown}."
        )
    return entry.loader(split, root, download, **options)


def build_scenario(data: DataSpec, *, seed: int, img_size: int) -> Scenario:
    """The scenario of a config's ``data`` section; ``img_size`` is the backbone's input size."""
    entry = dataset_entry(data.dataset)
    return entry.scenario(entry, data, seed, img_size)


class _InfoView(Mapping[str, Mapping[str, Any]]):
    """``{name: info}`` of every registered data set, registered later ones included."""

    def __getitem__(self, name: str) -> Mapping[str, Any]:
        return DATASETS[name].info

    def __iter__(self) -> Iterator[str]:
        return iter(DATASETS)

    def __len__(self) -> int:
        return len(DATASETS)


DATASET_INFO: Mapping[str, Mapping[str, Any]] = _InfoView()


# ---- built-in data sets ----------------------------------------------------------------------
register_dataset(DatasetEntry("cifar100", load_cifar100, CIFAR100_INFO))
register_dataset(DatasetEntry("cifar10", load_cifar10, CIFAR10_INFO))
register_dataset(DatasetEntry("fashion_mnist", load_fashion_mnist, FASHION_MNIST_INFO))
register_dataset(DatasetEntry(
    "image_folder", load_image_folder, IMAGE_FOLDER_INFO,
    scenario=image_folder_scenario, options=("path", "image_size"),
))
register_dataset(DatasetEntry(
    "core50", load_core50, CORE50_INFO,
    scenario=core50_config_scenario, options=("scenario", "run", "image_size"),
))
