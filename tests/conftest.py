"""Shared fixtures: the real data in ../shared/data (skipped with a reason when absent)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("EDGECL_DATA", REPO.parent / "shared" / "data"))
VIT_TINY = SHARED_DATA / "vit_tiny_patch16_224_tinyimagenet_ft" / (
    "vit_tiny_patch16_224_tinyimagenet_ft.npz"
)


@pytest.fixture(scope="session")
def cifar100_root() -> Path:
    """The data root holding cifar-100-python/ (EDGECL_DATA or ../shared/data)."""
    if not (SHARED_DATA / "cifar-100-python").is_dir():
        pytest.skip(f"real CIFAR-100 not found under {SHARED_DATA} (set EDGECL_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def vit_tiny_path() -> Path:
    """The real pretrained ViT-Ti/16 checkpoint from ../shared/data."""
    if not VIT_TINY.is_file():
        pytest.skip(f"pretrained ViT-Ti not found at {VIT_TINY} (set EDGECL_DATA)")
    return VIT_TINY


# --- edgecl.data: session cache -------------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def edgecl_test_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The ``EDGECL_CACHE`` used by the whole test session (never the user's ~/.cache).

    ``$EDGECL_TEST_CACHE`` if set (reused across runs, so CIFAR-100 is decompressed only once),
    else the user's ``$EDGECL_CACHE``, else a fresh temporary directory for this session.
    Tests that corrupt cached files point ``EDGECL_CACHE`` at their own ``tmp_path`` instead.
    """
    chosen = os.environ.get("EDGECL_TEST_CACHE") or os.environ.get("EDGECL_CACHE")
    path = Path(chosen).expanduser() if chosen else tmp_path_factory.mktemp("edgecl-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDGECL_CACHE", str(path))
        yield path


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread avoids OpenMP spin-waits on a busy shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
