"""Small, safe checkpoints: what training changed, and the frozen weights they assume.

A checkpoint holds the tensors of the method's modules that differ from the state right
after setup (trainable tensors, buffers that moved, anything a method rewrote), the
optimizer and scheduler state, RNG states, the loop's position and its records. It does not
hold the frozen pretrained weights: it names them by the sha256 of the backbone it started
from, and a resume against other weights is refused. It is read with
``torch.load(weights_only=True)``, which rebuilds tensors and plain containers only, so a
checkpoint from elsewhere cannot run code.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from edgecl.errors import CheckpointError, one_line
from edgecl.io import atomic_write_bytes

FORMAT = 2


def _tensor_bytes(t: Tensor) -> memoryview:
    flat = t.detach().cpu().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


def tensor_digest(t: Tensor) -> str:
    digest = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    digest.update(_tensor_bytes(t))
    return digest.hexdigest()


def module_digests(module: nn.Module) -> dict[str, str]:
    """sha256 of every tensor of ``module.state_dict()``, by key."""
    return {key: tensor_digest(t) for key, t in module.state_dict().items()}


def weights_sha256(module: nn.Module) -> str:
    """One sha256 over a module's whole state, keys in order: names a set of weights."""
    digest = hashlib.sha256()
    for key, t in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor_digest(t).encode())
    return digest.hexdigest()


def changed_state(module: nn.Module, pristine: dict[str, str]) -> dict[str, Tensor]:
    """The entries of ``module.state_dict()`` that training may have changed: trainable
    parameters, and every other tensor whose digest differs from ``pristine`` (or is new)."""
    trainable = {name for name, p in module.named_parameters() if p.requires_grad}
    return {
        key: t for key, t in module.state_dict().items()
        if key in trainable or pristine.get(key) != tensor_digest(t)
    }


def with_unchanged(module: nn.Module, saved: dict[str, Tensor]) -> dict[str, Tensor]:
    """A full state dict: ``module``'s current tensors (as set up) overwritten by ``saved``."""
    return {**module.state_dict(), **saved}


def save(path: Path, state: dict[str, Any], frozen_sha256: str) -> int:
    """Write a checkpoint atomically; returns its size in bytes."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "frozen_sha256": frozen_sha256, **state}, buffer)
    data = buffer.getvalue()
    atomic_write_bytes(path, data)
    return len(data)


def load(path: Path, frozen_sha256: str, device: torch.device) -> dict[str, Any]:
    """The checkpoint at ``path``, after checking its format and the frozen weights."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint {path} is unreadable ({one_line(exc)[:200]}); delete it to restart "
            "this method from scratch") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"checkpoint {path} has format {found!r}, this edgecl reads format {FORMAT}; "
            "delete it to restart this method from scratch")
    if state["frozen_sha256"] != frozen_sha256:
        raise CheckpointError(
            f"checkpoint {path} was made against other frozen weights (sha256 "
            f"{state['frozen_sha256'][:12]}..., the configured backbone has "
            f"{frozen_sha256[:12]}...); resume with the backbone.weights it was trained from")
    return state
