"""Stored files: the one way MetTrack names, reads and writes what it keeps under ``MEDIA_ROOT``.

Layout (names are relative to ``MEDIA_ROOT``; rows store these names):

    series/series-<uuid>/source/         the de-identified DICOM files (or the NIfTI) of an upload
    series/series-<uuid>/volume.nii      the volume the worker and the viewer read
    masks/run_<id>/labels.nii.gz         a segmentation run's components (labels 1..n)
    masks/run_<id>/lesions.nii.gz        the same voxels numbered by lesion (3 for L3), series grid
    masks/run_<id>/lesions_ref.nii.gz    the lesion map in the patient's common space (matching)
    masks/run_<id>/rtstruct.dcm, seg.dcm the run's DICOM RTSTRUCT and SEG
    masks/reader/tp<visit>_lesion<lesion>.nii.gz   a reader-drawn contour of one lesion at one visit

The pipeline, the review actions and the viewer all go through these functions. Reader-mask writes made
by a review action are journalled (:func:`undo_file_writes_on_error`): files are not part of the database
transaction, so when the action fails the previous files are put back and the stored contours always
match the committed observations.

A full disk is never silent: an image is written to a temporary name next to its place, verified (its
size, and for a compressed file a full read back: SimpleITK's writer does not report a short write) and
only then renamed into place; a write that would leave less than ``STORAGE_MIN_FREE_BYTES`` free is
refused up front. Both raise :class:`~trials.exceptions.InsufficientStorageError` (HTTP 507), leaving
what was stored before untouched.
"""

from __future__ import annotations

import errno
import functools
import os
import shutil
import tempfile
import uuid
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import IO, ParamSpec, TypeVar

import numpy as np
import SimpleITK as sitk
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db.models.fields.files import FieldFile

from segmentation.io import new_series_folder_name
from trials.exceptions import (
    InsufficientStorageError,
    InvalidInputError,
    InvalidStateError,
    MissingImageError,
)
from trials.models import ImagingSeries, Lesion, LesionObservation, SegmentationRun, Timepoint

P = ParamSpec("P")
R = TypeVar("R")

#: Folder of reader-drawn lesion masks.
READER_MASK_DIR = "masks/reader"
#: A run's components (labels 1..n in raster order), written by the segmentation stage.
RUN_LABELS = "labels.nii.gz"
#: A run's lesion map on the series grid (voxel value = lesion number, 3 for L3), written by the analysis.
LESION_MAP = "lesions.nii.gz"
#: A run's lesion map in the patient's common space, read by the matching of later visits.
LESION_MAP_REFERENCE = "lesions_ref.nii.gz"


def media_path(name: str) -> Path:
    """The local path of a stored name."""
    return Path(settings.MEDIA_ROOT) / name


def new_series_folder() -> str:
    """A new, collision-free folder name for an uploaded series (``series/series-<uuid4>``)."""
    return f"series/{new_series_folder_name()}"


def stored_name(file: FieldFile) -> str:
    """The stored name of a file field.

    Raises:
        MissingImageError: no file is stored.
    """
    if not file or not file.name:
        raise MissingImageError("No image file is stored for this object.")
    return str(file.name)


def series_source_dir(series: ImagingSeries) -> Path:
    """The folder holding a series' stored (de-identified) DICOM files or NIfTI."""
    return media_path(stored_name(series.volume_file)).parent / "source"


def run_file_name(run: SegmentationRun, filename: str) -> str:
    """Stored name of one output file of a segmentation run."""
    return f"masks/run_{run.pk}/{filename}"


def reader_mask_name(lesion_id: int, timepoint_id: int) -> str:
    """Stored name of the reader-drawn mask of one lesion at one visit."""
    return f"{READER_MASK_DIR}/tp{timepoint_id}_lesion{lesion_id}.nii.gz"


# ------------------------------------------------------------------------------------------ reading


def read_image(name: str) -> sitk.Image:
    """Read a stored NIfTI (or any SimpleITK format) with its geometry.

    Remote storages (no local path) are copied to a temporary file first.

    Raises:
        MissingImageError: nothing is stored under ``name``.
    """
    if not name or not default_storage.exists(name):
        raise MissingImageError(f"No image is stored under {name!r}.")
    try:
        return sitk.ReadImage(default_storage.path(name))
    except NotImplementedError:
        suffix = ".nii.gz" if name.endswith(".nii.gz") else os.path.splitext(name)[1]
        handle, path = tempfile.mkstemp(suffix=suffix)
        try:
            with os.fdopen(handle, "wb") as out, default_storage.open(name, "rb") as src:
                out.write(src.read())
            return sitk.ReadImage(path)
        finally:
            os.unlink(path)


def read_image_field(file: FieldFile) -> sitk.Image:
    """Read a stored file field (a series volume, a run's mask).

    Raises:
        MissingImageError: no file is stored.
    """
    return read_image(stored_name(file))


def load_series_image(series: ImagingSeries) -> sitk.Image:
    """The stored volume of a series as a float32 SimpleITK image.

    Raises:
        MissingImageError: the series has no stored volume.
    """
    if not series.volume_file:
        raise MissingImageError(f"Series {series.series_instance_uid} has no stored volume yet.")
    return sitk.Cast(read_image_field(series.volume_file), sitk.sitkFloat32)


def observation_mask_source(observation: LesionObservation) -> tuple[str, int] | None:
    """Where an observation's contour is stored: ``(storage name, label value)``, or None.

    The AI's contour is its run's label image at ``component_label``; a reader-drawn one (no run) is
    the binary mask ``reader_mask_name(...)`` with label 1.
    """
    run = observation.segmentation_run
    if run is not None and run.mask_file and observation.component_label is not None:
        return stored_name(run.mask_file), int(observation.component_label)
    name = reader_mask_name(observation.lesion_id, observation.timepoint_id)
    if run is None and default_storage.exists(name):
        return name, 1
    return None


def load_observation_mask(observation: LesionObservation) -> sitk.Image:
    """Binary (UInt8) mask of one lesion at one visit.

    Raises:
        MissingImageError: the observation has no stored contour.
    """
    source = observation_mask_source(observation)
    if source is None:
        raise MissingImageError(
            f"{observation.lesion.label} has no stored contour at {observation.timepoint.visit_label}."
        )
    name, value = source
    labels = read_image(name)
    return sitk.Cast(sitk.BinaryThreshold(labels, value, value, 1, 0), sitk.sitkUInt8)


def same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    """Whether two images share size, spacing, origin and direction (within float tolerance)."""
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-4)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-3)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-4)
    )


#: Downloadable outputs of a run: kind -> (file name, media type).
RUN_FILE_KINDS: dict[str, tuple[str, str]] = {
    "mask": (RUN_LABELS, "application/gzip"),
    "lesions": (LESION_MAP, "application/gzip"),
    "rtstruct": ("rtstruct.dcm", "application/dicom"),
    "seg": ("seg.dcm", "application/dicom"),
}


def run_file_path(run: SegmentationRun, kind: str) -> Path | None:
    """The stored file of ``kind`` (see :data:`RUN_FILE_KINDS`) of a run, or None while it is not written."""
    if kind not in RUN_FILE_KINDS:
        return None
    if kind == "lesions":  # written by the analysis, not recorded on the run
        path = run_output_path(run, LESION_MAP)
    else:
        recorded = getattr(run, f"{kind}_file")  # mask_file, rtstruct_file, seg_file
        if not recorded:
            return None
        path = media_path(recorded.name)
    return path if path.is_file() else None


# ------------------------------------------------------------------------------------------ writing


#: Errors of a file system with no room left (disk full, quota exceeded).
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


@contextmanager
def disk_space_errors() -> Iterator[None]:
    """Turn "no space left on device" (and an exceeded quota) into :class:`InsufficientStorageError`."""
    try:
        yield
    except OSError as exc:
        if exc.errno in _NO_SPACE:
            raise InsufficientStorageError(
                "The image store is full: the file could not be written. Nothing was kept; free space "
                "(or ask the site's IT) and try again."
            ) from exc
        raise


def ensure_free_space(needed_bytes: int) -> None:
    """Refuse a write of about ``needed_bytes`` that would leave less than ``STORAGE_MIN_FREE_BYTES`` free.

    Raises:
        InsufficientStorageError: not enough room (nothing was written).
    """
    root = Path(settings.MEDIA_ROOT)
    root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(root).free
    reserve = int(getattr(settings, "STORAGE_MIN_FREE_BYTES", 0))
    if free - needed_bytes < reserve:
        raise InsufficientStorageError(
            f"The image store is nearly full ({free / 1024**2:.0f} MiB free; this needs about "
            f"{needed_bytes / 1024**2:.0f} MiB and {reserve / 1024**2:.0f} MiB are kept in reserve). Nothing "
            "was written; free space (or ask the site's IT) and try again."
        )


def _raw_size(image: sitk.Image) -> int:
    return (
        int(np.prod(image.GetSize()))
        * image.GetNumberOfComponentsPerPixel()
        * image.GetSizeOfPixelComponent()
    )


def write_file(
    name: str, write: Callable[[Path], object], verify: Callable[[Path], None], *, needed_bytes: int
) -> Path:
    """Write a stored file safely: room checked first, written by ``write`` to a temporary name next to its
    place, checked by ``verify`` (which raises an ``OSError`` for a short write), then renamed into place
    (an earlier file of that name stays until then).

    Returns:
        The local path written.

    Raises:
        InsufficientStorageError: no room, or the write came out short (the disk filled meanwhile).
    """
    path = media_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    ensure_free_space(needed_bytes)
    # The same suffix, so that writers choosing the format by it choose the same one.
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
    try:
        with disk_space_errors():
            write(tmp)
            verify(tmp)
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_image(
    image: sitk.Image, name: str, *, compress: bool = False, needed_bytes: int | None = None
) -> Path:
    """Write an image under ``name`` (NIfTI by its suffix) safely (see :func:`write_file`).

    ``needed_bytes``: room to ask for first (default: the uncompressed size and 1 MiB).

    Returns:
        The local path written.

    Raises:
        InsufficientStorageError: no room, or the write came out short.
    """
    raw = _raw_size(image)
    return write_file(
        name,
        lambda tmp: sitk.WriteImage(image, str(tmp), useCompression=compress),
        lambda tmp: _verify(image, tmp, compressed=compress, raw_bytes=raw),
        needed_bytes=raw + 1024**2 if needed_bytes is None else needed_bytes,
    )


def _verify(image: sitk.Image, path: Path, *, compressed: bool, raw_bytes: int) -> None:
    """Check a freshly written image is whole (SimpleITK's writers do not report a short write)."""
    short = False
    if compressed:
        try:
            back = sitk.ReadImage(str(path))
        except RuntimeError:
            short = True
        else:
            short = back.GetSize() != image.GetSize()
    else:
        short = path.stat().st_size < raw_bytes
    if short:
        raise OSError(errno.ENOSPC, "short write", str(path))


def image_verifies(name: str) -> bool:
    """Whether a stored image can be read whole (an output is reused only then)."""
    if not name or not media_path(name).is_file():
        return False
    try:
        sitk.ReadImage(str(media_path(name)))
    except RuntimeError:
        return False
    return True


def write_label_image(labels: sitk.Image, name: str) -> Path:
    """Write a label image (gzipped NIfTI) in the smallest unsigned type that holds its largest label,
    safely (see :func:`write_image`).

    Readers take any integer type; a 120 x 120 x 90 map compresses in 3 ms as UInt8/UInt16 against
    11 ms as UInt32.

    Returns:
        The local path written.
    """
    largest = int(sitk.GetArrayViewFromImage(labels).max(initial=0))
    for pixel_type, limit in ((sitk.sitkUInt8, 0xFF), (sitk.sitkUInt16, 0xFFFF)):
        if largest <= limit:
            labels = sitk.Cast(labels, pixel_type)
            break
    return write_image(labels, name, compress=True)


_JOURNAL: ContextVar[_FileJournal | None] = ContextVar("stored_file_journal", default=None)


def undo_file_writes_on_error(func: Callable[P, R]) -> Callable[P, R]:
    """Run an action with a file journal: the reader masks it writes or deletes are put back if it raises."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with _FileJournal() as journal:
            token = _JOURNAL.set(journal)
            try:
                return func(*args, **kwargs)
            finally:
                _JOURNAL.reset(token)

    return wrapper


def _journal() -> _FileJournal:
    journal = _JOURNAL.get()
    if journal is None:  # a programming error: every action that writes masks is decorated
        raise RuntimeError(
            "reader masks are written only inside an action run with undo_file_writes_on_error"
        )
    return journal


def store_reader_mask(lesion: Lesion, timepoint: Timepoint, mask: sitk.Image, reference: sitk.Image) -> str:
    """Store (or replace) the reader-drawn binary mask of a lesion at a visit (journalled).

    The file name is fixed per lesion and visit, so a later correction replaces the earlier contour; the
    observation row's change is what the audit trail records.

    Returns:
        The stored name.

    Raises:
        InvalidInputError: the mask is not on the series grid.
        InvalidStateError: another writer stored the same name at the same moment.
    """
    if not same_grid(mask, reference):
        raise InvalidInputError("A lesion mask lies on another grid than the series volume.")
    binary = sitk.Cast(mask > 0, sitk.sitkUInt8)
    handle, path = tempfile.mkstemp(suffix=".nii.gz")
    os.close(handle)
    try:
        sitk.WriteImage(binary, path, useCompression=True)
        with open(path, "rb") as src:
            data = src.read()
    finally:
        os.unlink(path)
    name = reader_mask_name(lesion.pk, timepoint.pk)
    journal = _journal()
    journal.remember(name)
    if default_storage.exists(name):
        default_storage.delete(name)
    ensure_free_space(len(data))
    with disk_space_errors():
        stored = default_storage.save(name, ContentFile(data))
    if stored != name:  # a concurrent writer took the name: keep the naming contract explicit
        default_storage.delete(stored)
        raise InvalidStateError(f"The contour of {lesion.label} is being saved by someone else; try again.")
    return name


def delete_reader_mask(lesion_id: int, timepoint_id: int) -> None:
    """Delete the reader-drawn mask of a lesion at a visit, if any (journalled)."""
    name = reader_mask_name(lesion_id, timepoint_id)
    if default_storage.exists(name):
        _journal().remember(name)
        default_storage.delete(name)


class _FileJournal:
    """Stored-file writes of one action, undone if the action fails."""

    def __init__(self) -> None:
        self._previous: list[tuple[str, bytes | None]] = []

    def __enter__(self) -> _FileJournal:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            return
        for name, data in reversed(self._previous):
            if default_storage.exists(name):
                default_storage.delete(name)
            if data is not None:
                default_storage.save(name, ContentFile(data))

    def remember(self, name: str) -> None:
        """Keep what is stored under ``name`` now (or that nothing is), to put it back on failure."""
        data = None
        if default_storage.exists(name):
            with default_storage.open(name, "rb") as src:
                data = src.read()
        self._previous.append((name, data))


def zip_folder(name: str) -> IO[bytes]:
    """The files of a stored folder as a zip (stored, not compressed again: volumes are gzipped already),
    inside a folder of the same name, in a temporary file positioned at its start (a response streams and
    closes it)."""
    folder = media_path(name)
    handle = tempfile.TemporaryFile()  # noqa: SIM115  (returned open)
    with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_STORED) as archive:
        for path in sorted(folder.iterdir()):
            if path.is_file():
                archive.write(path, f"{folder.name}/{path.name}")
    handle.seek(0)
    return handle


def run_output_path(run: SegmentationRun, filename: str) -> Path:
    """Local path of one output file of a run (it may not exist yet)."""
    return media_path(run_file_name(run, filename))


__all__ = [
    "LESION_MAP",
    "RUN_FILE_KINDS",
    "LESION_MAP_REFERENCE",
    "READER_MASK_DIR",
    "RUN_LABELS",
    "delete_reader_mask",
    "disk_space_errors",
    "ensure_free_space",
    "image_verifies",
    "load_observation_mask",
    "load_series_image",
    "media_path",
    "new_series_folder",
    "observation_mask_source",
    "read_image",
    "read_image_field",
    "reader_mask_name",
    "run_file_name",
    "run_file_path",
    "run_output_path",
    "same_grid",
    "series_source_dir",
    "stored_name",
    "store_reader_mask",
    "undo_file_writes_on_error",
    "write_file",
    "write_image",
    "write_label_image",
]
