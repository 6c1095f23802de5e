"""The one atomic file writer and the one file hasher of edgecl.

An atomic write goes to a temporary file beside the destination, is fsynced, then renamed
over it, and the folder is fsynced: readers see the old file or the whole new one, never a
torn write, and a write that returned survives a power cut.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

CHUNK_BYTES = 1 << 20


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256sum(path: str | Path) -> str:
    """Hex sha256 of a file."""
    return file_digest(path, "sha256")


def md5sum(path: str | Path) -> str:
    """Hex md5 of a file (only to match the checksums data sets publish)."""
    return file_digest(path, "md5")


def fsync_directory(directory: Path) -> None:
    """Make a rename inside ``directory`` durable (not every filesystem allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_writer(dest: str | Path) -> Iterator[BinaryIO]:
    """A binary handle on a temp file next to ``dest``, renamed over it on clean exit.

    On an exception the temp file is removed and ``dest`` is left as it was.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    tmp_path = Path(tmp_name)
    try:
        os.chmod(tmp_path, 0o644)  # mkstemp creates 0600; results and caches are shareable
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_path, dest)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    fsync_directory(dest.parent)


def atomic_write_bytes(dest: str | Path, data: bytes) -> None:
    with atomic_writer(dest) as handle:
        handle.write(data)


def atomic_write_text(dest: str | Path, text: str) -> None:
    atomic_write_bytes(dest, text.encode("utf-8"))


def write_json(dest: str | Path, obj: Any) -> None:
    """``obj`` as indented JSON, atomically; NaN and infinities (not JSON) become null."""
    atomic_write_text(dest, json.dumps(finite(obj), indent=1, allow_nan=False) + "\n")


def finite(obj: Any) -> Any:
    """``obj`` with every non-finite float (a mean over nothing) replaced by None."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    return obj
