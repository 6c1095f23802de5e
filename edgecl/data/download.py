"""Checksum verification, verified downloads and safe archive extraction."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import shutil
import tarfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO

from edgecl.errors import DataError
from edgecl.io import CHUNK_BYTES, atomic_writer, file_digest

DEFAULT_TIMEOUT_S = 60.0


def checksum_mismatch_error(
    path: Path, algorithm: str, expected: str, actual: str, fix: str
) -> DataError:
    """The error raised everywhere a file's checksum differs from the published one."""
    return DataError(
        f"Checksum mismatch for {path}: expected {algorithm} {expected}, got {actual}. "
        f"The file is corrupted or not the official one. {fix}"
    )


def verify_file(path: Path, *, md5: str | None = None, sha256: str | None = None, fix: str) -> None:
    """Raise :class:`DataError` (mentioning ``fix``) unless the file has the given checksums."""
    for algorithm, expected in (("md5", md5), ("sha256", sha256)):
        if expected is None:
            continue
        actual = file_digest(path, algorithm)
        if actual != expected.lower():
            raise checksum_mismatch_error(path, algorithm, expected.lower(), actual, fix)


def _no_network_error(url: str, dest: Path, err: BaseException) -> DataError:
    return DataError(
        f"Could not download {url} to {dest}: {err}. This machine may have no internet access. "
        f"Download the file elsewhere (e.g. `curl -L -o {dest.name} {url}`), copy it to {dest}, "
        f"and run again."
    )


def download_file(
    url: str,
    dest: str | Path,
    md5: str | None = None,
    sha256: str | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> Path:
    """Download ``url`` to ``dest``, verifying the given checksums; returns ``dest``.

    An existing ``dest`` with matching checksums is reused. The body is streamed into a temp
    file and hashed on the fly; only a verified file is renamed into place.
    """
    dest = Path(dest)
    fix = f"Delete {dest} and run again to re-download it from {url}."
    if dest.is_file() and (md5 or sha256):
        with contextlib.suppress(DataError):
            verify_file(dest, md5=md5, sha256=sha256, fix=fix)
            return dest
    digests = {"md5": hashlib.md5(), "sha256": hashlib.sha256()}
    try:
        with atomic_writer(dest) as handle:
            _stream_url(url, handle, digests, timeout)
            _check_digests(dest, digests, md5=md5, sha256=sha256, url=url)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as err:
        # URLError/HTTPError, refused or reset connections, timeouts and malformed URLs alike.
        raise _no_network_error(url, dest, err) from err
    return dest


def _stream_url(url: str, handle: BinaryIO, digests: dict, timeout: float) -> None:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):
            handle.write(chunk)
            for digest in digests.values():
                digest.update(chunk)


def _check_digests(
    dest: Path, digests: dict, *, md5: str | None, sha256: str | None, url: str
) -> None:
    for algorithm, expected in (("md5", md5), ("sha256", sha256)):
        actual = digests[algorithm].hexdigest()
        if expected is not None and actual != expected.lower():
            raise checksum_mismatch_error(
                dest,
                algorithm,
                expected.lower(),
                actual,
                f"Nothing was written. Run again to retry the download from {url}, or obtain the "
                f"official file and place it at {dest}.",
            )


def _is_within(base: Path, target: Path) -> bool:
    try:
        target.relative_to(base)
    except ValueError:
        return False
    return True


def _check_tar_member(member: tarfile.TarInfo, dest: Path, archive: Path) -> None:
    if not (member.isfile() or member.isdir()):
        # Data set archives hold only files and folders; links and devices could escape `dest`.
        raise DataError(
            f"Refusing to extract {archive}: member {member.name!r} is not a regular file or "
            f"directory. The archive is not the official one; delete it and download it again."
        )
    target = (dest / member.name).resolve()
    if member.name.startswith(("/", "\\")) or not _is_within(dest, target):
        raise DataError(
            f"Refusing to extract {archive}: member {member.name!r} would be written outside "
            f"{dest}. The archive is not the official one; delete it and download it again."
        )


def safe_extract_tar(archive: str | Path, dest: str | Path) -> list[Path]:
    """Extract a (possibly compressed) tar archive into ``dest``, refusing unsafe members.

    Only regular files and directories whose paths stay inside ``dest`` are allowed; the
    archive is checked completely before anything is written. Returns the extracted top-level
    paths.
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    dest = dest.resolve()
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                _check_tar_member(member, dest, archive)
            for member in members:
                _extract_member(tar, member, dest)
    except (tarfile.TarError, EOFError) as err:
        raise DataError(
            f"Cannot read the archive {archive} ({err}); it is damaged or truncated. "
            f"Delete it and download it again."
        ) from err
    tops = {Path(m.name).parts[0] for m in members if Path(m.name).parts}
    return sorted(dest / top for top in tops)


def _extract_member(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path) -> None:
    target = dest / member.name
    if member.isdir():
        target.mkdir(parents=True, exist_ok=True)
        return
    source = tar.extractfile(member)
    if source is None:
        raise DataError(f"Cannot read member {member.name!r} of the archive; download it again.")
    with source, atomic_writer(target) as handle:
        shutil.copyfileobj(source, handle, CHUNK_BYTES)


def is_writable_dir(path: Path) -> bool:
    """True if ``path`` exists (or can be created) and files can be written into it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK)
