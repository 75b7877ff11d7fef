"""Synthetic DICOM writer: any 3D SimpleITK image to a realistic MR series on disk.

Tests and the demo work on real DICOM files made by this module rather than on mocks. The series carries
every Type 1 and Type 2 attribute of the modules an MR Image IOD requires (PS3.3 A.4: Patient, General
Study, General Series, Frame of Reference, General Equipment, General Image, Image Plane, Image Pixel,
Contrast/Bolus, MR Image, SOP Common), including those rt-utils copies into an RTSTRUCT (StudyDate,
StudyTime, StudyID, SeriesNumber ...).

Geometry follows the image exactly: the image's first axis is the DICOM row direction (column index
increases along it), the second axis the column direction, slices are stacked along the third axis.
Any direction matrix works (axial, sagittal, coronal, oblique); a left-handed matrix cannot be expressed
by single-frame DICOM (whose slice normal is row x column) and is refused.
"""

from __future__ import annotations

import datetime as dt
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    MRImageStorage,
    RLELossless,
    generate_uid,
)

from segmentation.errors import ImageWriteError

#: Transfer syntaxes accepted by ``compress``: JPEG 2000 lossless (pylibjpeg-openjpeg) and RLE lossless.
COMPRESSIONS: dict[str, UID] = {"jpeg2000": JPEG2000Lossless, "rle": RLELossless}

_INT16 = np.iinfo(np.int16)


def _geometry(image: sitk.Image) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return (row direction, column direction, slice step vector mm, origin mm) of a 3D image."""
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    if np.linalg.det(direction) < 0:
        raise ImageWriteError(
            "The image has a left-handed direction matrix; single-frame DICOM cannot express it. "
            "Flip its last axis (sitk.Flip) before writing."
        )
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    return direction[:, 0], direction[:, 1], direction[:, 2] * spacing[2], np.asarray(image.GetOrigin())


def _pixels(image: sitk.Image) -> tuple[np.ndarray, float, float]:
    """Return (stored integer array [slice, row, column], rescale slope, rescale intercept).

    Integer images are stored as they are, so the series reads back with identical voxels. Floating-point
    images are quantised linearly to int16 with Rescale Slope/Intercept (as several MR vendors do), which
    readers that apply the rescale undo to within half a quantisation step.
    """
    arr = sitk.GetArrayFromImage(image)
    if arr.dtype in (np.int16, np.uint16, np.uint8, np.int8):
        return (arr.astype(np.int16) if arr.dtype == np.int8 else arr), 1.0, 0.0
    if np.issubdtype(arr.dtype, np.integer):
        if arr.min() >= _INT16.min and arr.max() <= _INT16.max:
            return arr.astype(np.int16), 1.0, 0.0
        raise ImageWriteError(f"Integer values {arr.min()}..{arr.max()} do not fit the 16 bits MR uses.")
    if not np.issubdtype(arr.dtype, np.floating) or not np.all(np.isfinite(arr)):
        raise ImageWriteError(f"Cannot write pixel type {image.GetPixelIDTypeAsString()} as MR DICOM.")
    lo, hi = float(arr.min()), float(arr.max())
    if np.array_equal(arr, np.round(arr)) and lo >= _INT16.min and hi <= _INT16.max:
        return arr.astype(np.int16), 1.0, 0.0
    slope = (hi - lo) / 65000.0 if hi > lo else 1.0
    intercept = lo + 32500.0 * slope  # maps lo to -32500 and hi to +32500
    stored = np.round((arr - intercept) / slope).astype(np.int16)
    return stored, slope, intercept


def _ds_string(value: float) -> str:
    """Format a float for a DS element (at most 16 characters)."""
    text = f"{value:.10g}"
    return text if len(text) <= 16 else f"{value:.6g}"


@dataclass(frozen=True)
class _Series:
    """What every slice of one written series shares."""

    patient_id: str
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    date: str
    time: str
    modality: str
    description: str


def _sop_common(ds: Dataset, series: _Series) -> None:
    """SOP Common module (PS3.3 C.12.1)."""
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.InstanceCreationDate, ds.InstanceCreationTime = series.date, series.time


def _patient_and_study(ds: Dataset, series: _Series) -> None:
    """Patient (C.7.1.1) and General Study (C.7.2.1) modules."""
    ds.PatientName = series.patient_id
    ds.PatientID = series.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyInstanceUID = series.study_uid
    ds.StudyDate, ds.StudyTime = series.date, series.time
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.StudyDescription = "MRI brain with contrast"


def _series_and_equipment(ds: Dataset, series: _Series) -> None:
    """General Series (C.7.3.1), Frame of Reference (C.7.4.1) and General Equipment (C.7.5.1) modules."""
    ds.Modality = series.modality
    ds.SeriesInstanceUID = series.series_uid
    ds.SeriesNumber = 1
    ds.SeriesDate, ds.SeriesTime = series.date, series.time
    ds.SeriesDescription = series.description
    ds.ProtocolName = series.description
    ds.PatientPosition = "HFS"
    ds.BodyPartExamined = "HEAD"
    ds.FrameOfReferenceUID = series.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = "MetTrack synthetic"
    ds.ManufacturerModelName = "synthetic_mr"
    ds.SoftwareVersions = "1"
    ds.DeviceSerialNumber = "0"


def _general_image(ds: Dataset, series: _Series, k: int) -> None:
    """General Image (C.7.6.1) and General Acquisition (C.7.10.1) modules of slice ``k``."""
    ds.InstanceNumber = k + 1
    ds.AcquisitionNumber = 1
    ds.ContentDate, ds.ContentTime = series.date, series.time
    ds.AcquisitionDate, ds.AcquisitionTime = series.date, series.time
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]


def _image_plane(
    ds: Dataset,
    spacing: Sequence[float],
    row_dir: np.ndarray,
    col_dir: np.ndarray,
    position: np.ndarray,
) -> None:
    """Image Plane module (C.7.6.2) of a slice at ``position`` (mm)."""
    ds.PixelSpacing = [_ds_string(spacing[1]), _ds_string(spacing[0])]  # row spacing, column spacing
    ds.ImageOrientationPatient = [_ds_string(v) for v in (*row_dir, *col_dir)]
    ds.ImagePositionPatient = [_ds_string(v) for v in position]
    ds.SliceThickness = _ds_string(spacing[2])
    ds.SpacingBetweenSlices = _ds_string(spacing[2])
    ds.SliceLocation = _ds_string(float(np.dot(position, np.cross(row_dir, col_dir))))


def _image_pixel(ds: Dataset, stored: np.ndarray, k: int, slope: float, intercept: float) -> None:
    """Image Pixel module (C.7.6.3) of slice ``k``, with the rescale when the values need one."""
    bits = 8 if stored.dtype == np.uint8 else 16
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(stored.shape[1]), int(stored.shape[2])
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 1 if stored.dtype == np.int16 else 0
    if slope != 1.0 or intercept != 0.0:
        ds.RescaleSlope, ds.RescaleIntercept = _ds_string(slope), _ds_string(intercept)
        ds.RescaleType = "US"
    ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()


def _contrast_and_mr_image(ds: Dataset) -> None:
    """Contrast/Bolus (C.7.6.4) and MR Image (C.8.3.1) modules: a post-gadolinium 3D T1, as the pipeline
    expects."""
    ds.ContrastBolusAgent = "GADOLINIUM"
    ds.ContrastBolusRoute = "IV"
    # an MPRAGE: gradient echo after an inversion pulse, so Inversion Time (Type 2C, only with IR) belongs
    ds.ScanningSequence = ["GR", "IR"]
    ds.SequenceVariant = ["SK", "SP", "MP"]
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "3D"
    ds.SequenceName = "*tfl3d1"
    ds.RepetitionTime = "2300"
    ds.EchoTime = "2.98"
    ds.InversionTime = "900"
    ds.EchoTrainLength = 1
    ds.NumberOfAverages = "1"
    ds.ImagingFrequency = "123.2"
    ds.ImagedNucleus = "1H"
    ds.MagneticFieldStrength = "3"
    ds.FlipAngle = "9"


def write_dicom_series(
    image: sitk.Image,
    out_dir: str | Path,
    *,
    patient_id: str,
    study_uid: str | None = None,
    series_uid: str | None = None,
    series_description: str = "T1 post-contrast",
    modality: str = "MR",
    compress: bool | str = False,
    multiframe: bool = False,
    **tags: Any,
) -> list[Path]:
    """Write a 3D image as a DICOM MR series (one file per slice, or one enhanced multi-frame file).

    Args:
        image: 3D image; spacing, origin and direction become Pixel Spacing, Image Position/Orientation.
        out_dir: Folder to write into (created if needed). Files are named ``IM_0001.dcm``...
        patient_id: Patient ID and Patient Name to write.
        study_uid: Study Instance UID; a new one if None.
        series_uid: Series Instance UID; a new one if None.
        series_description: Series Description (0008,103E).
        modality: Modality (0008,0060); anything but ``MR`` is written with the MR SOP class too, which
            is enough to test that ingest refuses non-MR series.
        compress: False for Explicit VR Little Endian, True or ``"jpeg2000"`` for JPEG 2000 lossless,
            ``"rle"`` for RLE lossless.
        multiframe: True writes one Legacy Converted Enhanced MR Image (multi-frame, functional groups)
            built by highdicom from the single-frame datasets.
        **tags: DICOM keyword -> value set on every dataset after the defaults (e.g.
            ``PatientName="Doe^Jane"``, ``MagneticFieldStrength=3``); the value None deletes the
            attribute (to test how ingest handles a series that lacks one).

    Returns:
        The written file paths, in slice order (first = at the image origin).

    Raises:
        ImageWriteError: If the image is not 3D scalar, is left-handed, has a pixel type MR cannot
            store, or ``compress`` names an unknown compression.
    """
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ImageWriteError("Only 3D single-component images can be written as an MR series.")
    if compress is True:
        compress = "jpeg2000"
    if compress and compress not in COMPRESSIONS:
        raise ImageWriteError(f"Unknown compression {compress!r}; use one of {sorted(COMPRESSIONS)}.")
    row_dir, col_dir, step_mm, origin_mm = _geometry(image)
    stored, slope, intercept = _pixels(image)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now()
    series = _Series(
        patient_id=patient_id,
        study_uid=study_uid or generate_uid(),
        series_uid=series_uid or generate_uid(),
        frame_of_reference_uid=generate_uid(),
        date=now.strftime("%Y%m%d"),
        time=now.strftime("%H%M%S"),
        modality=modality,
        description=series_description,
    )
    series_uid = series.series_uid
    # one display window for the whole series (computed once: per-slice volume statistics cost seconds)
    window = (
        _ds_string(float(stored.mean()) * slope + intercept),
        _ds_string(max(float(np.ptp(stored)) * slope, 1.0)),
    )
    datasets: list[Dataset] = []
    for k in range(stored.shape[0]):
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 100"
        _sop_common(ds, series)
        _patient_and_study(ds, series)
        _series_and_equipment(ds, series)
        _general_image(ds, series, k)
        _image_plane(ds, image.GetSpacing(), row_dir, col_dir, origin_mm + k * step_mm)
        _image_pixel(ds, stored, k, slope, intercept)
        _contrast_and_mr_image(ds)
        ds.WindowCenter, ds.WindowWidth = window
        for keyword, value in tags.items():
            if value is None:
                if keyword in ds:
                    delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        if compress:
            # keep the SOP Instance UID: the series must stay the one the test wrote
            ds.compress(COMPRESSIONS[str(compress)], generate_instance_uid=False)
        datasets.append(ds)

    if multiframe:
        return [_write_multiframe(datasets, out, series_uid)]
    paths = []
    for k, ds in enumerate(datasets):
        path = out / f"IM_{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _write_multiframe(datasets: Sequence[Dataset], out: Path, series_uid: str) -> Path:
    """Convert single-frame datasets to one Legacy Converted Enhanced MR Image and save it."""
    from highdicom.legacy import LegacyConvertedEnhancedMRImage  # heavy import, only needed here

    with warnings.catch_warnings():
        # highdicom warns about single-component person names; a subject id is exactly that
        warnings.simplefilter("ignore", UserWarning)
        enhanced = LegacyConvertedEnhancedMRImage(
            legacy_datasets=list(datasets),
            series_instance_uid=series_uid,
            series_number=int(datasets[0].SeriesNumber),
            sop_instance_uid=generate_uid(),
            instance_number=1,
        )
    # The single-frame datasets converted here were never stored, so the Referenced Series Sequence
    # (Common Instance Reference) would point a PACS at instances it cannot have; dciodvfy reports it
    # as an error too, as it counts the per-frame Conversion Source Attributes as no reference.
    del enhanced.ReferencedSeriesSequence
    path = out / "IM_0001.dcm"
    enhanced.save_as(path)
    return path
