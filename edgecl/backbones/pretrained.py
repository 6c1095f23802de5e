"""Where pretrained weights come from: a local copy (checksummed), else a canonical download.

A backbone lists its :class:`WeightsFile` sources in the registry; :func:`find_weights` tries
every local copy first (under the data root, or shipped by an installed package), then every
download, and returns the first file found. Every failure is a :class:`WeightsError`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor, nn

from edgecl.data.base import cache_dir
from edgecl.data.download import download_file
from edgecl.errors import WeightsError
from edgecl.io import atomic_write_text, sha256sum


@dataclass(frozen=True)
class WeightsFile:
    """One source of a backbone's pretrained weights.

    ``folder``: a local copy at ``<data root>/<folder>/<filename>``; ``locate``: a local copy
    shipped by an installed package (returns its path); ``url``: a canonical download, saved
    as ``<cache>/weights/<filename>``. Without ``sha256`` the first download's sha256 is
    recorded next to the file and enforced on every later load.
    """

    filename: str
    sha256: str | None = None
    url: str | None = None
    folder: str | None = None
    locate: Callable[[], Path] | None = None
    hint: str = ""  # how to get the file, for the error message


def verify_sha256(
    path: Path, expected: str, fix: str = "delete it and fetch it again"
) -> None:
    actual = sha256sum(path)
    if actual != expected:
        raise WeightsError(
            f"checksum mismatch for {path}: expected sha256 {expected}, got {actual}. "
            f"The file is corrupt or not the expected checkpoint; {fix}."
        )


def local_copy(source: WeightsFile, data_root: Path | None) -> Path | None:
    """The verified local copy of ``source``, or None when there is none."""
    if source.locate is not None:
        path: Path | None = Path(source.locate())
    elif source.folder is not None and data_root is not None:
        path = data_root / source.folder / source.filename
    else:
        path = None
    if path is None or not path.is_file():
        return None
    if source.sha256 is not None:
        verify_sha256(path, source.sha256, *([source.hint] if source.hint else []))
    return path


def downloaded_copy(
    name: str, source: WeightsFile, cache: Path | None, local_folders: str = "the checkpoint"
) -> Path:
    """``source.url`` in the weights cache, downloaded once and checksummed on every load."""
    assert source.url is not None
    dest = (cache or cache_dir()) / "weights" / source.filename
    stamp = dest.with_suffix(".sha256")
    if dest.is_file() and (source.sha256 or stamp.is_file()):
        verify_sha256(dest, source.sha256 or stamp.read_text().split()[0])
        return dest
    try:
        download_file(source.url, dest, sha256=source.sha256)
    except Exception as exc:
        raise WeightsError(
            f"pretrained weights {name!r} are not available locally and could not be downloaded "
            f"from {source.url} ({exc}). Either point --data-root / EDGECL_DATA at a folder "
            f"containing {local_folders}, or pass backbone.weights=/path/to/checkpoint "
            "(.npz, .pth or .safetensors), or backbone.weights=random."
        ) from exc
    atomic_write_text(stamp, f"{sha256sum(dest)}  {dest.name}\n")
    return dest


def find_weights(
    name: str, sources: Sequence[WeightsFile], data_root: Path | None, cache: Path | None = None
) -> Path:
    """The first local copy among ``sources``, else the first canonical download."""
    for source in sources:
        found = local_copy(source, data_root)
        if found is not None:
            return found
    downloads = [s for s in sources if s.url is not None]
    if downloads:
        folders = ", ".join(f"{s.folder}/" for s in sources if s.folder) or "the checkpoint"
        return downloaded_copy(name, downloads[0], cache, folders)
    hints = "; ".join(s.hint for s in sources if s.hint)
    raise WeightsError(
        f"no pretrained weights found for {name!r}"
        + (f" ({hints})" if hints else "")
        + "; pass backbone.weights=/path/to/checkpoint, or backbone.weights=random."
    )


def load_strict(module: nn.Module, state: Mapping[str, Tensor], what: str) -> None:
    """``module.load_state_dict(state, strict=True)``, failing with a :class:`WeightsError`."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{what} checkpoint does not fit the network: {exc}") from exc
