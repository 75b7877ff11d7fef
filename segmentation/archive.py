"""Safe extraction of uploaded zip archives.

An upload zip comes from outside the hospital network boundary of the server, so it is checked before a
single byte is written: member names must stay inside the destination (no absolute paths, no ``..``, no
drive letters), no member may be a symbolic link, the member count and the declared unpacked size are
capped, and members that compress suspiciously well (a zip bomb) are refused. Because the sizes in a zip
header can lie, the bytes actually decompressed are counted too while extracting.

Extraction goes to a hidden staging folder next to the destination and is renamed into place only when
every member has been written, so a failure never leaves a partly unpacked upload behind.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from segmentation.errors import (
    ArchiveTooLargeError,
    CorruptArchiveError,
    PathTraversalError,
    SymlinkInArchiveError,
    TooManyFilesError,
)

#: Defaults sized for one MR series: 4,000 slices, 4 GiB unpacked (a 1024 x 1024 x 2000 float series).
DEFAULT_MAX_FILES = 4000
DEFAULT_MAX_TOTAL_BYTES = 4 * 1024**3
#: Uncompressed DICOM with a black background zips 5-20x; a ratio above this is a bomb, not an MRI.
DEFAULT_MAX_RATIO = 100.0
#: Members smaller than this are not ratio-checked (a tiny file of zeros legitimately zips 1000x).
_RATIO_CHECK_MIN_BYTES = 1024 * 1024
_CHUNK_BYTES = 1024 * 1024
_DRIVE = re.compile(r"^[A-Za-z]:")


def _check_name(name: str) -> PurePosixPath:
    """Return the member's relative path, or raise PathTraversalError if it could leave the folder."""
    normalised = name.replace("\\", "/")
    if "\x00" in normalised or normalised.startswith("/") or _DRIVE.match(normalised):
        raise PathTraversalError(
            f"The zip archive contains an absolute path ({name!r}); it is refused for safety. "
            "Please zip the series folder itself."
        )
    relative = PurePosixPath(normalised)
    if any(part == ".." for part in relative.parts):
        raise PathTraversalError(
            f"The zip archive contains a path that climbs out of its folder ({name!r}); it is refused "
            "for safety. Please zip the series folder itself."
        )
    return relative


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    # Unix mode bits live in the high 16 bits of external_attr for archives made on Unix
    return stat.S_ISLNK(info.external_attr >> 16)


def safe_extract_zip(
    zip_path: str | Path,
    dest_dir: str | Path,
    *,
    max_files: int = DEFAULT_MAX_FILES,
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
    max_ratio: float = DEFAULT_MAX_RATIO,
) -> list[Path]:
    """Check a zip archive and unpack it into ``dest_dir`` only if it is safe.

    Args:
        zip_path: The uploaded archive.
        dest_dir: Destination folder. If it does not exist it is created on success only; if it exists,
            the archive's top-level entries are moved into it at the end, and none may already exist.
        max_files: Most members (files) allowed.
        max_total_bytes: Most bytes allowed once unpacked (declared and actually decompressed).
        max_ratio: Highest unpacked/compressed size ratio allowed for a member of 1 MiB or more, and
            for the archive as a whole once it unpacks to 1 MiB or more.

    Returns:
        The extracted files (directories are not listed), in archive order.

    Raises:
        CorruptArchiveError: Not a zip, damaged (CRC error), encrypted, or with duplicate member names.
        PathTraversalError: A member name is absolute or contains ``..``.
        SymlinkInArchiveError: A member is a symbolic link.
        TooManyFilesError: More than ``max_files`` members.
        ArchiveTooLargeError: Too many bytes unpacked, or a compression ratio above ``max_ratio``.
        FileExistsError: ``dest_dir`` is a file, or already holds an entry the archive would create
            (a caller error, not an upload error).
    """
    source = Path(zip_path)
    dest = Path(dest_dir)
    if dest.exists() and not dest.is_dir():
        raise FileExistsError(f"Extraction destination {dest} exists and is not a folder")
    if not zipfile.is_zipfile(source):
        raise CorruptArchiveError("The upload is not a readable zip archive.")
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError) as exc:
        raise CorruptArchiveError(f"The zip archive cannot be opened ({exc}).") from exc
    with archive:
        members = _check_members(archive.infolist(), max_files, max_total_bytes, max_ratio)
        existing = dest.exists()
        # stage on the same file system so that the final step is a rename, not a copy
        stage_parent = dest if existing else dest.parent
        stage_parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.extract-", dir=stage_parent))
        try:
            written = _extract_members(archive, members, staging, max_total_bytes)
            if existing:
                _move_entries(staging, dest)
            else:
                os.replace(staging, dest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return [dest / relative for relative in written]


def _move_entries(staging: Path, dest: Path) -> None:
    """Move the staged top-level entries into an existing folder, refusing to overwrite anything."""
    entries = sorted(staging.iterdir())
    clashes = [entry.name for entry in entries if (dest / entry.name).exists()]
    if clashes:
        raise FileExistsError(f"Extraction destination {dest} already holds {', '.join(clashes[:5])}")
    for entry in entries:
        os.replace(entry, dest / entry.name)


def _check_members(
    infos: list[zipfile.ZipInfo], max_files: int, max_total_bytes: int, max_ratio: float
) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """Validate every member's name, type and declared size before anything is written."""
    files = [info for info in infos if not info.is_dir()]
    if len(files) > max_files:
        raise TooManyFilesError(
            f"The zip archive holds {len(files)} files; at most {max_files} are accepted for one series."
        )
    members = []
    seen: set[PurePosixPath] = set()
    declared_total = 0
    compressed_total = 0
    for info in infos:
        relative = _check_name(info.filename)
        if _is_symlink(info):
            raise SymlinkInArchiveError(
                f"The zip archive contains a symbolic link ({info.filename!r}); links are refused for "
                "safety. Please zip the image files themselves."
            )
        if info.flag_bits & 0x1:
            raise CorruptArchiveError("The zip archive is password-protected; please upload it unencrypted.")
        if info.is_dir():
            continue
        if relative in seen:
            raise CorruptArchiveError(f"The zip archive lists {info.filename!r} twice.")
        seen.add(relative)
        declared_total += info.file_size
        compressed_total += info.compress_size
        if info.file_size >= _RATIO_CHECK_MIN_BYTES and info.file_size > max_ratio * max(
            info.compress_size, 1
        ):
            raise ArchiveTooLargeError(
                f"A file in the zip archive unpacks {info.file_size / max(info.compress_size, 1):.0f} times "
                f"larger than it is stored (limit {max_ratio:.0f}); this looks like a zip bomb and is refused."
            )
        members.append((info, relative))
    if declared_total > max_total_bytes:
        raise ArchiveTooLargeError(
            f"The zip archive unpacks to {declared_total / 1024**2:.0f} MiB; at most "
            f"{max_total_bytes / 1024**2:.0f} MiB are accepted for one series."
        )
    if declared_total >= _RATIO_CHECK_MIN_BYTES and declared_total > max_ratio * max(compressed_total, 1):
        raise ArchiveTooLargeError(
            f"The zip archive unpacks {declared_total / max(compressed_total, 1):.0f} times larger than it is "
            f"stored (limit {max_ratio:.0f}); this looks like a zip bomb and is refused."
        )
    return members


def _extract_members(
    archive: zipfile.ZipFile,
    members: list[tuple[zipfile.ZipInfo, PurePosixPath]],
    staging: Path,
    max_total_bytes: int,
) -> list[PurePosixPath]:
    """Stream members into ``staging``, counting real bytes since header sizes can lie."""
    root = staging.resolve()
    total = 0
    written = []
    for info, relative in members:
        target = (staging / relative).resolve()
        if root not in target.parents:
            raise PathTraversalError(
                f"The zip archive member {info.filename!r} would land outside its folder."
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        member_bytes = 0
        try:
            with archive.open(info) as src, open(target, "wb") as dst:
                while chunk := src.read(_CHUNK_BYTES):
                    member_bytes += len(chunk)
                    total += len(chunk)
                    if member_bytes > info.file_size or total > max_total_bytes:
                        raise ArchiveTooLargeError(
                            "The zip archive unpacks to more bytes than it declares or than are accepted "
                            f"({max_total_bytes / 1024**2:.0f} MiB); it is refused."
                        )
                    dst.write(chunk)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError) as exc:
            raise CorruptArchiveError(f"The zip archive is damaged at {info.filename!r} ({exc}).") from exc
        written.append(relative)
    return written
