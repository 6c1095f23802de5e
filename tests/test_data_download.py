from __future__ import annotations

import hashlib
import io
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from edgecl.data import DataError, download_file, safe_extract_tar
from edgecl.io import atomic_write_bytes, atomic_writer, md5sum, sha256sum

PAYLOAD = b"edgecl test payload\n" * 1000


@pytest.fixture
def served_file(tmp_path: Path) -> tuple[str, Path]:
    source = tmp_path / "server" / "payload.bin"
    source.parent.mkdir()
    source.write_bytes(PAYLOAD)
    return source.as_uri(), source


def test_checksums_match_hashlib(tmp_path: Path) -> None:
    path = tmp_path / "file.bin"
    path.write_bytes(PAYLOAD)
    assert md5sum(path) == hashlib.md5(PAYLOAD).hexdigest()
    assert sha256sum(path) == hashlib.sha256(PAYLOAD).hexdigest()


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path: Path) -> None:
    dest = tmp_path / "sub" / "out.bin"
    atomic_write_bytes(dest, b"first")
    atomic_write_bytes(dest, b"second")
    assert dest.read_bytes() == b"second"
    assert [p.name for p in dest.parent.iterdir()] == ["out.bin"]


def test_atomic_writer_keeps_old_file_on_error(tmp_path: Path) -> None:
    dest = tmp_path / "out.bin"
    dest.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_writer(dest) as handle:
        handle.write(b"partial")
        raise RuntimeError("interrupted")
    assert dest.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_download_verifies_and_writes(served_file, tmp_path: Path) -> None:
    url, _ = served_file
    dest = tmp_path / "dl" / "payload.bin"
    md5 = hashlib.md5(PAYLOAD).hexdigest()
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    assert download_file(url, dest, md5=md5, sha256=sha) == dest
    assert dest.read_bytes() == PAYLOAD


def test_download_reuses_a_verified_file(served_file, tmp_path: Path, monkeypatch) -> None:
    url, _ = served_file
    dest = tmp_path / "payload.bin"
    dest.write_bytes(PAYLOAD)

    def no_network(*args, **kwargs):
        raise AssertionError("must not download a file that is already verified")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    download_file(url, dest, md5=hashlib.md5(PAYLOAD).hexdigest())


def test_download_checksum_mismatch_writes_nothing(served_file, tmp_path: Path) -> None:
    url, _ = served_file
    dest = tmp_path / "dl" / "payload.bin"
    wrong = "0" * 32
    with pytest.raises(DataError) as info:
        download_file(url, dest, md5=wrong)
    message = str(info.value)
    assert str(dest) in message and wrong in message
    assert hashlib.md5(PAYLOAD).hexdigest() in message
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []


def test_network_failure_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    def offline(*args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    url = "https://example.invalid/data.tar.gz"
    dest = tmp_path / "data.tar.gz"
    with pytest.raises(DataError) as info:
        download_file(url, dest, md5="0" * 32)
    message = str(info.value)
    assert url in message and str(dest) in message and "curl" in message
    assert not dest.exists()


def test_download_through_a_fake_opener(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: io.BytesIO(PAYLOAD))
    dest = tmp_path / "x.bin"
    download_file("https://example.invalid/x.bin", dest, sha256=hashlib.sha256(PAYLOAD).hexdigest())
    assert dest.read_bytes() == PAYLOAD


def make_tar(path: Path, members: list[tuple[str, bytes | None, str | None]]) -> Path:
    """members: (name, file content or None for a directory, symlink target or None)."""
    with tarfile.open(path, "w:gz") as tar:
        for name, content, link in members:
            info = tarfile.TarInfo(name)
            if link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, link
                tar.addfile(info)
            elif content is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return path


def test_safe_extract_extracts_regular_archives(tmp_path: Path) -> None:
    archive = make_tar(
        tmp_path / "ok.tar.gz",
        [("top", None, None), ("top/a.txt", b"a", None), ("top/d/b", b"b", None)],
    )
    tops = safe_extract_tar(archive, tmp_path / "out")
    assert tops == [(tmp_path / "out" / "top").resolve()]
    assert (tmp_path / "out" / "top" / "d" / "b").read_bytes() == b"b"


@pytest.mark.parametrize(
    "evil",
    [
        ("../escape.txt", b"x", None),
        ("/abs/escape.txt", b"x", None),
        ("top/../../escape.txt", b"x", None),
        ("top/link", None, "/etc/passwd"),
    ],
)
def test_safe_extract_refuses_escaping_members(tmp_path: Path, evil) -> None:
    archive = make_tar(tmp_path / "evil.tar.gz", [("top/fine.txt", b"ok", None), evil])
    out = tmp_path / "out"
    with pytest.raises(DataError, match="Refusing to extract"):
        safe_extract_tar(archive, out)
    assert not (tmp_path / "escape.txt").exists()
    assert not (out / "top" / "fine.txt").exists()  # nothing is written before the check


def test_damaged_archive_is_a_clear_error(tmp_path: Path) -> None:
    archive = tmp_path / "broken.tar.gz"
    archive.write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(DataError, match="damaged or truncated"):
        safe_extract_tar(archive, tmp_path / "out")
