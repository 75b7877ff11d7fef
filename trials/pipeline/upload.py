"""Stage 1 of a series: validate, de-identify and store an upload as the files the later stages read.

:func:`store_upload` validates the files entirely before anything is kept (the imaging module's
``ingest_series``: one MR series, readable, plausible geometry), writes the de-identified copy under
``series/series-<uuid>/source/`` and the volume the worker and the viewer read as ``volume.nii``, and
returns the ``ImagingSeries`` fields. It writes no row: the upload action
(``trials.actions.imaging.upload_series``) records the series and its job in one transaction, and calls
:func:`discard_upload` when that fails, so a rejected upload leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from segmentation.descriptors import clean_series_description
from segmentation.errors import ImagingError
from segmentation.io import ingest_series, sha256_file
from trials.choices import SeriesSource
from trials.exceptions import UploadRejectedError
from trials.models import Timepoint
from trials.storage import disk_space_errors, ensure_free_space, media_path, new_series_folder, write_image


@dataclass(frozen=True)
class StoredUpload:
    """An upload stored on disk, not yet recorded.

    Attributes:
        folder: Stored name of the series folder (``series/series-<uuid>``).
        series_instance_uid: The series' UID (derived from the pixels for a NIfTI, which has none).
        fields: The ``ImagingSeries`` fields to record.
        timings_s: Seconds per step: ``read`` (unpacking, validating and decoding the series), ``store``
            (de-identified copy), ``volume`` (the worker's NIfTI volume and its checksum).
    """

    folder: str
    series_instance_uid: str
    fields: dict[str, Any]
    timings_s: dict[str, float] = field(default_factory=dict)


def content_uid(image: sitk.Image) -> str:
    """A DICOM UID derived from pixel data and geometry (for NIfTI uploads, which carry no UID).

    The ``2.25.<integer>`` form (PS3.5 B.2) from 128 bits of a sha256, so that the same NIfTI uploaded
    twice gets the same Series Instance UID and the database refuses the duplicate.
    """
    digest = hashlib.sha256()
    digest.update(sitk.GetArrayViewFromImage(image).tobytes())
    for values in (image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()):
        digest.update(np.asarray(values, dtype=np.float64).round(6).tobytes())
    return f"2.25.{int(digest.hexdigest()[:32], 16)}"


def store_upload(
    timepoint: Timepoint,
    upload: str | Path,
    *,
    series_uid: str | None = None,
    source: str | None = None,
    actor: Any | None = None,
) -> StoredUpload:
    """Validate, de-identify and store one uploaded MR series (no database row is written).

    Args:
        timepoint: The visit the series belongs to (its subject id replaces the patient's identity).
        upload: A zip of one DICOM series, a DICOM folder or a NIfTI file (what
            :func:`segmentation.io.read_series` accepts), on local disk.
        series_uid: Series Instance UID to pick when the upload holds several series.
        source: ``SeriesSource`` value (default: from the format of the upload).
        actor: The uploading user (recorded as ``uploaded_by``).

    Raises:
        UploadRejectedError: The upload is not a usable MR series (the imaging module's message);
            nothing is left stored.
        InsufficientStorageError: The image store has no room for it; nothing is left stored.
    """
    folder = new_series_folder()
    folder_path = media_path(folder)
    # The de-identified copy and the volume take about three times the upload (a zip unpacks larger).
    ensure_free_space(3 * _size_bytes(Path(upload)))
    try:
        try:
            with disk_space_errors():
                ingested = ingest_series(
                    upload,
                    folder_path / "source",
                    subject_id=timepoint.patient.subject_id,
                    series_uid=series_uid,
                )
        except ImagingError as exc:
            raise UploadRejectedError(exc.user_message) from exc
        loaded = ingested.series
        info = loaded.info
        timings = dict(ingested.timings_s)
        started = time.perf_counter()
        # The worker (and the viewer) read one NIfTI volume: the same file whatever the upload format.
        # Uncompressed: gzip took 40 ms of a 120 x 120 x 90 upload and slows every read, while the
        # de-identified DICOM copy beside it, the archival one, is no smaller.
        volume_name = f"{folder}/volume.nii"
        write_image(loaded.image, volume_name)
        uid = info.series_instance_uid or content_uid(loaded.image)
        is_nifti = info.source_format == "nifti"
        fields = {
            "study_instance_uid": info.study_instance_uid or "",
            "modality": info.modality or "MR",
            # Free text typed at the scanner: only its MR terms are kept (PS3.15 Clean Descriptors).
            "series_description": clean_series_description(info.series_description),
            "size_voxels": list(info.size),
            "spacing_mm": list(info.spacing_mm),
            "origin_mm": list(info.origin_mm),
            "direction": list(info.direction),
            "volume_file": volume_name,
            "checksum_sha256": sha256_file(media_path(volume_name)),
            "source": source or (SeriesSource.UPLOAD_NIFTI if is_nifti else SeriesSource.UPLOAD_DICOM),
            "uploaded_by": actor if getattr(actor, "is_authenticated", False) else None,
        }
        timings["volume"] = time.perf_counter() - started
        return StoredUpload(folder=folder, series_instance_uid=uid, fields=fields, timings_s=timings)
    except BaseException:
        shutil.rmtree(folder_path, ignore_errors=True)
        raise


def _size_bytes(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.exists() else 0


def discard_upload(stored: StoredUpload) -> None:
    """Remove a stored upload's files (its recording failed)."""
    shutil.rmtree(media_path(stored.folder), ignore_errors=True)


__all__ = ["StoredUpload", "content_uid", "discard_upload", "store_upload"]
