"""Safe zip extraction: unsafe archives are refused before anything is written, through read and ingest."""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path

import pytest

from segmentation.archive import safe_extract_zip
from segmentation.errors import (
    ArchiveTooLargeError,
    CorruptArchiveError,
    PathTraversalError,
    SymlinkInArchiveError,
    TooManyFilesError,
    UnsafeArchiveError,
)
from segmentation.io import ingest_series, read_series


def make_zip(path: Path, members: dict[str, bytes], *, symlinks: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return path


def assert_refused(upload: Path, tmp_path: Path, error: type[Exception], **limits: int) -> None:
    """Direct extraction and ingest both refuse, and neither leaves a file behind."""
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(error):
        safe_extract_zip(upload, out / "x", **limits)
    with pytest.raises(error):
        read_series(upload)
    with pytest.raises(error):
        ingest_series(upload, out / "series", subject_id="BM-001")
    assert list(out.iterdir()) == []


def test_good_archive_extracts_everything(tmp_path) -> None:
    upload = make_zip(tmp_path / "ok.zip", {"a/1.dcm": b"one", "a/b/2.dcm": b"two", "3.dcm": b"three"})
    written = safe_extract_zip(upload, tmp_path / "dest")
    assert sorted(p.relative_to(tmp_path / "dest").as_posix() for p in written) == [
        "3.dcm",
        "a/1.dcm",
        "a/b/2.dcm",
    ]
    assert (tmp_path / "dest" / "a" / "b" / "2.dcm").read_bytes() == b"two"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # staging renamed away


@pytest.mark.parametrize(
    "name", ["../evil.dcm", "a/../../evil.dcm", "/etc/evil.dcm", "C:/evil.dcm", "..\\evil.dcm"]
)
def test_path_traversal(tmp_path, name) -> None:
    upload = make_zip(tmp_path / "bad.zip", {"ok.dcm": b"fine", name: b"evil"})
    assert_refused(upload, tmp_path, PathTraversalError)
    assert not (tmp_path / "evil.dcm").exists()


def test_symlink(tmp_path) -> None:
    upload = make_zip(tmp_path / "bad.zip", {"ok.dcm": b"fine"}, symlinks={"link.dcm": "/etc/passwd"})
    assert_refused(upload, tmp_path, SymlinkInArchiveError)


def test_too_many_files(tmp_path) -> None:
    upload = make_zip(tmp_path / "many.zip", {f"{i}.dcm": b"x" for i in range(30)})
    assert_refused_limits(upload, tmp_path, TooManyFilesError, max_files=20)


def test_too_many_files_with_the_default_limit_through_ingest(tmp_path) -> None:
    from segmentation.archive import DEFAULT_MAX_FILES

    upload = make_zip(tmp_path / "many.zip", {f"{i:05d}.dcm": b"" for i in range(DEFAULT_MAX_FILES + 1)})
    assert_refused(upload, tmp_path, TooManyFilesError)


def test_too_large_when_unpacked(tmp_path) -> None:
    upload = make_zip(
        tmp_path / "large.zip", {"a.dcm": bytes(range(256)) * 4096, "b.dcm": bytes(range(256)) * 4096}
    )
    assert_refused_limits(upload, tmp_path, ArchiveTooLargeError, max_total_bytes=1_000_000)


def test_zip_bomb_ratio(tmp_path) -> None:
    upload = make_zip(tmp_path / "bomb.zip", {"zeros.dcm": bytes(50 * 1024 * 1024)})  # 50 MiB of zeros
    assert zipfile.ZipFile(upload).infolist()[0].compress_size < 100_000
    assert_refused(upload, tmp_path, ArchiveTooLargeError)


def test_header_that_lies_about_size_is_caught_while_extracting(tmp_path) -> None:
    upload = make_zip(tmp_path / "liar.zip", {"a.dcm": bytes(range(256)) * 64})
    data = bytearray(upload.read_bytes())
    # shrink the declared uncompressed size (central directory and local header) to 100 bytes
    info = zipfile.ZipFile(upload).infolist()[0]
    real = info.file_size.to_bytes(4, "little")
    assert data.count(real) == 2
    data = data.replace(real, (100).to_bytes(4, "little"))
    upload.write_bytes(bytes(data))
    out = tmp_path / "out"
    with pytest.raises((ArchiveTooLargeError, CorruptArchiveError)):
        safe_extract_zip(upload, out / "x")
    assert not out.exists() or list(out.iterdir()) == []


def test_not_a_zip(tmp_path) -> None:
    upload = tmp_path / "bad.zip"
    upload.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CorruptArchiveError):
        safe_extract_zip(upload, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_unsafe_errors_share_a_base_class() -> None:
    for error in (PathTraversalError, SymlinkInArchiveError, TooManyFilesError, ArchiveTooLargeError):
        assert issubclass(error, UnsafeArchiveError)


def test_existing_destination_receives_entries_but_nothing_is_overwritten(tmp_path) -> None:
    upload = make_zip(tmp_path / "ok.zip", {"a.dcm": b"a", "sub/b.dcm": b"b"})
    written = safe_extract_zip(upload, tmp_path)  # the folder holding the zip itself
    assert sorted(p.relative_to(tmp_path).as_posix() for p in written) == ["a.dcm", "sub/b.dcm"]
    assert (tmp_path / "sub" / "b.dcm").read_bytes() == b"b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.dcm", "ok.zip", "sub"]  # no staging left
    (tmp_path / "a.dcm").write_bytes(b"keep me")
    (tmp_path / "sub" / "b.dcm").unlink()
    with pytest.raises(FileExistsError):
        safe_extract_zip(upload, tmp_path)
    assert (tmp_path / "a.dcm").read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.dcm", "ok.zip", "sub"]


def test_unsafe_archive_into_an_existing_folder_leaves_it_untouched(tmp_path) -> None:
    upload = make_zip(tmp_path / "bad.zip", {"ok.dcm": b"fine", "../evil.dcm": b"evil"})
    with pytest.raises(PathTraversalError):
        safe_extract_zip(upload, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.zip"]


def assert_refused_limits(upload: Path, tmp_path: Path, error: type[Exception], **limits: int) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(error):
        safe_extract_zip(upload, out / "x", **limits)
    assert list(out.iterdir()) == []
