"""Shared fixtures: the real data in ../shared/data (skipped with a reason when absent)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

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


# --- CORe50: a tiny synthetic tree with the real layout (tests/test_core50*.py) ---------------

CORE50_TRAIN_SESSIONS, CORE50_TEST_SESSION = (1, 2, 4), 3
CORE50_OBJECTS = (1, 2, 3, 4, 5)


def core50_image_path(session: int, obj: int, frame: int) -> str:
    return f"s{session}/o{obj}/C_{session:02d}_{obj:02d}_{frame:03d}.png"


def _write_core50_image(root: Path, rel: str, value: int) -> None:
    path = root / "core50_128x128" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(path)


def make_core50_tree(root: Path, pad: int = 2) -> list[list[tuple[str, int]]]:
    """NICv2-391 under ``root``, 8x8 images of value ``10 * label + 5``: batch 0 holds o2 and
    o1 from s1 (3 images); later batches one image each, new objects o3 (batch 1), o4 and o5
    (batch 5 and 6), every other batch o1/o2 only; the test list is session 3 (4 per object)."""
    image_path = core50_image_path
    pool = [(image_path(s, o, f), o - 1) for s in CORE50_TRAIN_SESSIONS for o in CORE50_OBJECTS
            for f in range(70)]
    first = [(image_path(1, 2, 0), 1), (image_path(1, 1, 0), 0), (image_path(1, 2, 1), 1)]
    rest = [e for e in pool if e[1] in (0, 1) and e not in first]
    batches: list[list[tuple[str, int]]] = [first]
    specials = {1: (image_path(2, 3, 0), 2), 5: (image_path(2, 4, 0), 3),
                6: (image_path(4, 5, 0), 4)}
    for i in range(1, 391):
        batches.append([specials.get(i) or rest.pop()])
    runs = root / "NIC_v2_391" / "run0"
    runs.mkdir(parents=True)
    for i, batch in enumerate(batches):
        name = f"train_batch_{str(i).zfill(pad)}_filelist.txt"
        (runs / name).write_text("".join(f"{p} {label}\n" for p, label in batch))
        for p, label in batch:
            _write_core50_image(root, p, 10 * label + 5)
    test = [(image_path(CORE50_TEST_SESSION, o, f), o - 1) for o in CORE50_OBJECTS
            for f in range(4)]
    (runs / "test_filelist.txt").write_text("".join(f"{p} {label}\n" for p, label in test))
    for p, label in test:
        _write_core50_image(root, p, 10 * label + 5)
    return batches


@pytest.fixture()
def core50_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data root holding the synthetic tree in core50/, with its own decode cache."""
    monkeypatch.setenv("EDGECL_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "data"
    make_core50_tree(root / "core50")
    return root


@pytest.fixture(scope="module")
def core50_module_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic tree built once per module (read-only; the session's decode cache)."""
    root = tmp_path_factory.mktemp("core50-data")
    make_core50_tree(root / "core50")
    return root


# --- a tiny random ViT, for fast learner and checkpoint tests --------------------------------
def save_tiny_vit(path: Path, seed: int = 0) -> Path:
    """Random weights of a 32 px, 2-block ViT (8 px patches), loadable as ``backbone.weights``
    with ``backbone.img_size: 32``; the caller's RNG is left alone."""
    from edgecl.backbones.vit import VisionTransformer, ViTConfig

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vit = VisionTransformer(ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=2,
                                          num_heads=1))
    torch.save(vit.state_dict(), path)
    return path
