"""A base session: a larger first task, then equal tasks (CsKO's protocol)."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from edgecl.config.models import DataConfig
from edgecl.data import ArrayDataset, DataError, class_incremental


def toy(per_class: int, name: str) -> ArrayDataset:
    labels = np.tile(np.arange(6, dtype=np.int64), per_class)
    images = np.zeros((len(labels), 2, 2, 1), dtype=np.uint8)
    return ArrayDataset(images, labels, tuple(f"c{i}" for i in range(6)), name)


def test_first_task_takes_the_base_classes() -> None:
    s = class_incremental(toy(3, "t-train"), toy(2, "t-test"), n_tasks=3, first_task_classes=4)
    assert [t.classes.tolist() for t in s.tasks] == [[0, 1, 2, 3], [4], [5]]
    one = class_incremental(toy(3, "t-train"), toy(2, "t-test"), n_tasks=1, first_task_classes=6)
    assert [len(t.classes) for t in one.tasks] == [6]
    with pytest.raises(DataError, match="cannot be split evenly"):
        class_incremental(toy(3, "t-train"), toy(2, "t-test"), n_tasks=3, first_task_classes=3)


def test_config_checks_an_explicit_order() -> None:
    cfg = DataConfig(n_tasks=3, first_task_classes=2, class_order=[5, 4, 3, 2, 1, 0])
    assert cfg.first_task_classes == 2
    with pytest.raises(ValidationError, match="first_task_classes"):
        DataConfig(n_tasks=3, first_task_classes=3, class_order=[5, 4, 3, 2, 1, 0])
    with pytest.raises(ValidationError, match="not used"):
        DataConfig(dataset="core50", first_task_classes=2)
