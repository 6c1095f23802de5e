"""Class-incremental scenarios: a class order split into tasks, labels remapped to stream order."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgecl.data.base import ArrayDataset
from edgecl.errors import DataError

# Salts that make the train and test subsamples of a class independent draws.
_TRAIN_SALT, _TEST_SALT = 0x7452, 0x7453


@dataclass(frozen=True, eq=False)
class Task:
    """One task: its (remapped) classes and the samples of those classes."""

    index: int
    classes: np.ndarray
    train_indices: np.ndarray
    test_indices: np.ndarray

    def __repr__(self) -> str:
        return (
            f"Task(index={self.index}, classes={len(self.classes)}, "
            f"train={len(self.train_indices)}, test={len(self.test_indices)})"
        )


@dataclass(frozen=True, eq=False)
class Scenario:
    """Data sets with labels remapped so that ``class_order[i]`` becomes class ``i``."""

    name: str
    train: ArrayDataset
    test: ArrayDataset
    tasks: tuple[Task, ...]
    class_order: np.ndarray
    num_classes: int

    @property
    def n_tasks(self) -> int:
        return len(self.tasks)

    def __repr__(self) -> str:
        return (
            f"Scenario(name={self.name!r}, tasks={len(self.tasks)}, "
            f"num_classes={self.num_classes}, train={len(self.train)}, test={len(self.test)})"
        )

    def classes_seen(self, t: int) -> np.ndarray:
        """Sorted remapped ids of all classes of tasks 0..t."""
        self._check_task(t)
        return np.unique(np.concatenate([task.classes for task in self.tasks[: t + 1]]))

    def task_of_class(self) -> np.ndarray:
        """``(num_classes,)`` int64: the task index each remapped class belongs to."""
        owner = np.empty(self.num_classes, dtype=np.int64)
        for task in self.tasks:
            owner[task.classes] = task.index
        return owner

    def _check_task(self, t: int) -> None:
        if not 0 <= t < len(self.tasks):
            raise DataError(
                f"Task index {t} out of range; this scenario has {len(self.tasks)} tasks."
            )


def class_incremental(
    train: ArrayDataset,
    test: ArrayDataset,
    n_tasks: int,
    *,
    class_order: str | Sequence[int] = "fixed",
    seed: int = 0,
    train_per_class: int | None = None,
    test_per_class: int | None = None,
    classes_per_task: Sequence[int] | None = None,
    per_class_subset: str = "seeded",
    first_task_classes: int | None = None,
) -> Scenario:
    """Split the classes (in ``class_order``) into ``n_tasks`` consecutive tasks.

    ``class_order``: "fixed" (0..C-1), "seeded" (a permutation from
    ``np.random.default_rng(seed)``) or an explicit sequence of original class ids, which may
    use a subset of the classes. ``train_per_class``/``test_per_class`` keep that many samples
    of every class, drawn from a generator seeded by (seed, class id), so the same images are
    kept whatever the class order (``per_class_subset="seeded"``), or the first that many of
    each class in file order (``"first"``). Only samples of ordered classes are kept; they
    stay in their original relative order. ``first_task_classes``: a base session of that many
    classes, the rest split evenly over the other ``n_tasks - 1`` tasks (CsKO's protocol).
    """
    _check_compatible(train, test)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"seed must be a non-negative integer, got {seed!r}.")
    if per_class_subset not in ("seeded", "first"):
        raise DataError(f"per_class_subset must be 'seeded' or 'first', got {per_class_subset!r}.")
    order = resolve_class_order(class_order, train.num_classes, seed)
    if first_task_classes is not None and classes_per_task is None:
        classes_per_task = base_session_sizes(len(order), n_tasks, first_task_classes)
    sizes = task_sizes(len(order), n_tasks, classes_per_task)
    remap = np.full(train.num_classes, -1, dtype=np.int64)
    remap[order] = np.arange(len(order), dtype=np.int64)
    names = tuple(train.class_names[c] for c in order)
    first = per_class_subset == "first"
    new_train = _remapped(train, order, remap, names, train_per_class, seed, _TRAIN_SALT, first)
    new_test = _remapped(test, order, remap, names, test_per_class, seed, _TEST_SALT, first)
    tasks = _make_tasks(sizes, new_train.labels, new_test.labels)
    order_tag = class_order if isinstance(class_order, str) else "custom"
    name = f"{train.name.removesuffix('-train')}/ci-{n_tasks}tasks-{order_tag}-seed{seed}"
    if train_per_class is not None or test_per_class is not None:
        name += f"-per-class{train_per_class or 'all'}-{test_per_class or 'all'}"
        name += "-first" if first else ""
    return Scenario(
        name=name,
        train=new_train,
        test=new_test,
        tasks=tasks,
        class_order=order,
        num_classes=len(order),
    )


def _check_compatible(train: ArrayDataset, test: ArrayDataset) -> None:
    if train.class_names != test.class_names:
        raise DataError(
            f"Train set {train.name!r} and test set {test.name!r} have different class names; "
            f"build the scenario from two splits of the same data set."
        )


def resolve_class_order(
    class_order: str | Sequence[int], num_classes: int, seed: int
) -> np.ndarray:
    """The original class ids in stream order, validated."""
    if isinstance(class_order, str):
        if class_order == "fixed":
            return np.arange(num_classes, dtype=np.int64)
        if class_order == "seeded":
            return np.random.default_rng(seed).permutation(num_classes).astype(np.int64)
        raise DataError(
            f"Unknown class_order {class_order!r}; use 'fixed', 'seeded' or a list of class ids."
        )
    order = np.asarray(list(class_order))
    if order.size == 0 or order.ndim != 1 or not np.issubdtype(order.dtype, np.integer):
        raise DataError("An explicit class_order must be a non-empty list of integer class ids.")
    unknown = sorted({int(c) for c in order if not 0 <= c < num_classes})
    if unknown:
        raise DataError(
            f"class_order names unknown class ids {unknown}; valid ids are 0..{num_classes - 1}."
        )
    values, counts = np.unique(order, return_counts=True)
    if (counts > 1).any():
        raise DataError(f"class_order repeats class ids {values[counts > 1].tolist()}.")
    return order.astype(np.int64)


def base_session_sizes(n_classes: int, n_tasks: int, first: int) -> list[int]:
    """A first task of ``first`` classes, then the rest split evenly over ``n_tasks - 1``."""
    rest, later = n_classes - first, n_tasks - 1
    if first < 1 or rest < 0 or (later == 0 and rest) or (later and (rest < later or rest % later)):
        raise DataError(
            f"first_task_classes={first} leaves {rest} of {n_classes} classes, which cannot be "
            f"split evenly into the other {later} tasks; choose n_tasks - 1 dividing them."
        )
    return [first] + ([rest // later] * later if later else [])


def task_sizes(n_classes: int, n_tasks: int, classes_per_task: Sequence[int] | None) -> list[int]:
    """Number of classes of each task."""
    if n_tasks < 1:
        raise DataError(f"n_tasks must be at least 1, got {n_tasks}.")
    if classes_per_task is None:
        if n_classes % n_tasks:
            raise DataError(
                f"{n_classes} classes cannot be split evenly into {n_tasks} tasks; choose n_tasks "
                f"dividing {n_classes} or give classes_per_task explicitly."
            )
        return [n_classes // n_tasks] * n_tasks
    sizes = [int(s) for s in classes_per_task]
    if len(sizes) != n_tasks or min(sizes) < 1 or sum(sizes) != n_classes:
        raise DataError(
            f"classes_per_task={sizes} must have n_tasks={n_tasks} positive entries summing to the "
            f"{n_classes} classes of the class order."
        )
    return sizes


def _remapped(
    dataset: ArrayDataset,
    order: np.ndarray,
    remap: np.ndarray,
    names: tuple[str, ...],
    per_class: int | None,
    seed: int,
    salt: int,
    first: bool = False,
) -> ArrayDataset:
    keep = _kept_indices(dataset, order, per_class, seed, salt, first)
    if len(keep) == len(dataset):
        images = dataset.images  # every sample kept, in order: share the (possibly mmapped) array
    else:
        images = np.ascontiguousarray(dataset.images[keep])
    labels = remap[dataset.labels[keep]]
    return ArrayDataset(images, labels, names, dataset.name)


def _kept_indices(
    dataset: ArrayDataset, order: np.ndarray, per_class: int | None, seed: int, salt: int,
    first: bool = False,
) -> np.ndarray:
    """Sorted indices of the samples kept: all of the ordered classes, or per_class of each
    (a seeded draw, or the first per_class in file order)."""
    if per_class is not None and per_class < 1:
        raise DataError(f"Per-class sample counts must be at least 1, got {per_class}.")
    chosen = []
    for cls in order:
        members = np.flatnonzero(dataset.labels == cls)
        if per_class is not None:
            members = _subsample_class(members, per_class, int(cls), seed, salt, dataset.name,
                                       first)
        chosen.append(members)
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def _subsample_class(
    members: np.ndarray, per_class: int, cls: int, seed: int, salt: int, name: str,
    first: bool = False,
) -> np.ndarray:
    if per_class > len(members):
        raise DataError(
            f"{name!r} has only {len(members)} samples of class {cls}, fewer than the "
            f"{per_class} requested per class; lower the per-class count."
        )
    if first:  # members are in file order (np.flatnonzero)
        return members[:per_class]
    rng = np.random.default_rng([seed, salt, cls])
    return np.sort(rng.choice(members, size=per_class, replace=False))


def _make_tasks(
    sizes: list[int], train_labels: np.ndarray, test_labels: np.ndarray
) -> tuple[Task, ...]:
    tasks = []
    bounds = np.cumsum([0, *sizes])
    for index, (low, high) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        tasks.append(
            Task(
                index=index,
                classes=np.arange(low, high, dtype=np.int64),
                train_indices=np.flatnonzero((train_labels >= low) & (train_labels < high)),
                test_indices=np.flatnonzero((test_labels >= low) & (test_labels < high)),
            )
        )
    return tuple(tasks)
