"""A run's lesions as DICOM for a PACS or a planning system: RTSTRUCT and SEG, and the run's files.

Each ROI / segment is named by the lesion's stable label (L1, L2, ...) and references the stored,
de-identified source series, so a PACS or treatment-planning system shows the AI lesions on the images
they came from (rt-utils writes the RTSTRUCT, highdicom the SEG).
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import SimpleITK as sitk

from segmentation.contours import write_rtstruct, write_seg
from segmentation.errors import ContourExportError, ImagingError
from segmentation.modeldir import algorithm_version
from segmentation.modeldir import provenance as model_provenance
from segmentation.sr import tracking_uid
from trials.models import Lesion, SegmentationRun
from trials.records.imaging import update_segmentation_run
from trials.storage import (
    LESION_MAP,
    RUN_FILE_KINDS,
    run_file_name,
    run_output_path,
    series_source_dir,
    write_file,
)

#: Room asked for before writing one DICOM object of a run (an RTSTRUCT or SEG of a brain is a few MB).
_DICOM_ROOM_BYTES = 64 * 1024**2


def _verify_dicom(path: Path) -> None:
    """A written DICOM file reads back (raises OSError for a short write)."""
    try:
        pydicom.dcmread(path, stop_before_pixels=True)
    except (pydicom.errors.InvalidDicomError, EOFError, ValueError) as exc:
        raise OSError(errno.ENOSPC, f"short write ({type(exc).__name__})", str(path)) from exc


def lesion_tracking_uid(lesion: Lesion) -> str:
    """The lesion's Tracking UID, the same at every visit and in its SEG segments and SR groups: derived
    from its primary key and creation time (unique across MetTrack installations, never stored)."""
    return tracking_uid(f"mettrack-lesion:{lesion.pk}:{lesion.created_at.isoformat()}")


def run_tracking_uids(run: SegmentationRun, labels: dict[int, str]) -> dict[int, str]:
    """Lesion map value -> Tracking UID of the patient's lesion with that label."""
    lesions = Lesion.objects.filter(patient_id=run.series.timepoint.patient_id, label__in=labels.values())
    uid_of = {lesion.label: lesion_tracking_uid(lesion) for lesion in lesions}
    return {value: uid_of[label] for value, label in labels.items() if label in uid_of}


def export_run_contours(
    run: SegmentationRun, *, actor: Any | None = None, correlation_id: str = ""
) -> SegmentationRun | None:
    """Write an analysed run's lesions as DICOM RTSTRUCT and SEG next to its mask.

    Each ROI / segment is named by the lesion's stable label (L1, L2, ...) and references the stored,
    de-identified source series, so a PACS or treatment-planning system shows the AI lesions on the
    images they came from. Done once per run: a run with both files stored is returned unchanged.

    SEG and RTSTRUCT are written independently: a series one format cannot encode (RTSTRUCT needs a
    single-frame series) still gets the other.

    Returns:
        The updated run, or None when there is nothing to write: the series was uploaded as NIfTI (no
        DICOM to reference), the run has no lesion map, or it found no lesion.

    Raises:
        ContourExportError: rt-utils or highdicom could not encode these lesions on this series (whatever
            could be written is stored first; the message names what was not).
    """
    if run.rtstruct_file and run.seg_file:
        return run
    series = run.series
    source_dir = series_source_dir(series)
    map_path = run_output_path(run, LESION_MAP)
    if not map_path.exists() or not any(source_dir.glob("*.dcm")):
        return None
    lesion_map = sitk.ReadImage(str(map_path))
    numbers = sorted(int(v) for v in np.unique(sitk.GetArrayViewFromImage(lesion_map)) if v)
    if not numbers:
        return None
    names = {n: f"L{n}" for n in numbers}
    description = f"MetTrack lesions ({run.model_version.name})"
    # Headers only, read once for both writers: the stored copy was validated when it was uploaded.
    headers = [pydicom.dcmread(path, stop_before_pixels=True) for path in sorted(source_dir.glob("*.dcm"))]
    version = run.model_version
    label = str((version.config or {}).get("label", "")) if isinstance(version.config, dict) else ""
    provenance = model_provenance(version.name, version.version, run.model_weights_sha256, label)
    writers: dict[str, Callable[[Path], Any]] = {  # kind (see RUN_FILE_KINDS) -> writer
        "seg": lambda out: write_seg(
            lesion_map, headers, out, lesion_names=names, algorithm_name=version.name,
            algorithm_version=algorithm_version(version.version, run.model_weights_sha256),
            algorithm_parameters={"weights_sha256": run.model_weights_sha256, "label": label},
            series_description=description, tracking_uids=run_tracking_uids(run, names),
        ),
        "rtstruct": lambda out: write_rtstruct(
            lesion_map, headers, out, lesion_names=names, series_description=description,
            provenance=provenance,
        ),
    }  # fmt: skip
    stored: dict[str, str] = {}  # run field -> file name
    written: list[str] = []
    errors: list[str] = []
    for kind, write in writers.items():
        if getattr(run, f"{kind}_file"):
            continue
        name = run_file_name(run, RUN_FILE_KINDS[kind][0])
        try:
            # Written whole or not at all: a DICOM file cut short by a full disk is never kept.
            write_file(name, write, _verify_dicom, needed_bytes=_DICOM_ROOM_BYTES)
        except ImagingError as exc:
            errors.append(f"{kind.upper()}: {exc.user_message}")
            continue
        stored[f"{kind}_file"] = name
        written.append(kind.upper())
    if stored:
        run = update_segmentation_run(
            run,
            **stored,
            actor=actor,
            reason="lesions exported as DICOM " + " and ".join(written),
            correlation_id=correlation_id,
        )
    if errors:
        raise ContourExportError(" ".join(errors))
    return run


__all__ = ["export_run_contours", "lesion_tracking_uid", "run_tracking_uids"]
