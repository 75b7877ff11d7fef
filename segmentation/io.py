"""Reading MRI uploads (DICOM zip or folder, enhanced multi-frame DICOM, NIfTI) into one 3D image.

``read_series`` validates everything before it returns, and stores nothing: a bad upload raises one of
the specific :mod:`segmentation.errors` classes with a message for the site user. ``ingest_series`` is
the storing variant used by the pipeline: it validates, de-identifies and moves the result into place
only when every step succeeded.

Rule for uploads with several series: MetTrack never guesses. Without ``series_uid`` an upload holding
more than one image series is refused with :class:`~segmentation.errors.MultipleSeriesError`, whose
message and ``series`` attribute list every series (UID, description, modality, file count) so the user
can pick one and upload again with that series UID. Non-image DICOM objects (RTSTRUCT, SEG, SR,
presentation states, DICOMDIR, recognised by its SOP class whatever its file name) and non-DICOM files
(e.g. ``README.txt``) in an upload are ignored; a DICOMDIR sent alone is refused as holding no image.

Geometry is built from the DICOM headers, which are validated first (one orientation, one pixel
spacing and matrix, slices stacked along the slice normal at a regular step): origin = Image Position
(Patient) of the first slice along the normal, direction columns = row direction, column direction,
normal (row x column), spacing = (column spacing, row spacing, slice step). Pixels of single-frame
series are decoded by SimpleITK/GDCM by default: on the benchmark (docs/benchmarks.md) it and pydicom
load a 512 x 512 x 208 series about equally fast (both far under the 5 s target), and GDCM also decodes
JPEG Lossless (Process 14), common in PACS exports, for which pydicom has no decoder installed here. Multi-frame files
are read with pydicom, since GDCM's series reader does not assemble their frames into a volume.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
import uuid
import zipfile
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.tag import BaseTag

from segmentation.archive import safe_extract_zip
from segmentation.deid import deidentify_dataset
from segmentation.descriptors import clean_series_description
from segmentation.errors import (
    AbsurdDimensionsError,
    CorruptArchiveError,
    CorruptDicomError,
    DuplicateSliceError,
    GeometryError,
    ImagingError,
    InconsistentOrientationError,
    InconsistentSpacingError,
    InputNotFoundError,
    MissingAttributeError,
    MissingSlicesError,
    MultipleSeriesError,
    NotDicomError,
    NotMRError,
    SeriesNotFoundError,
    SingleSliceError,
    UnsupportedImageError,
)
from segmentation.part10 import write_part10

NIFTI_SUFFIXES = (".nii", ".nii.gz")

#: Plausibility limits for a brain MRI; outside them the upload is refused as absurd.
MIN_MATRIX = 16
MAX_MATRIX = 2048
MIN_SLICES = 3
MAX_SLICES = 2048
MIN_SPACING_MM = 0.05
MAX_SPACING_MM = 20.0
MAX_VOXELS = 512 * 512 * 2048

#: Attributes without which a slice cannot be placed in space.
GEOMETRY_ATTRIBUTES = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns")
#: Attributes rt-utils copies from the referenced series into an RTSTRUCT without a default (it fails
#: with AttributeError when one is absent), plus the identifiers every returned object references.
#: Type 2 attributes may be empty but must be present.
RTSTRUCT_ATTRIBUTES = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "SOPClassUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "SeriesNumber",
    "Modality",
)
#: Modalities of DICOM objects that are not images and are ignored in an upload.
_NON_IMAGE_MODALITIES = {"RTSTRUCT", "SEG", "SR", "PR", "KO", "REG", "RTPLAN", "RTDOSE", "RTRECORD", "DOC"}
#: Media Storage Directory Storage (PS3.10 7.2, PS3.3 F.3): the SOP class of a DICOMDIR.
_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"

#: Relative tolerances of the geometry checks.
_ORIENTATION_TOL = 1e-4
_SPACING_TOL_MM = 1e-3
_GAP_FACTOR = 1.5  # a step this many times the median step means slices are missing
_IRREGULAR_TOL = 0.1  # otherwise, steps may differ from the median by this fraction

Backend = Literal["sitk", "pydicom"]


@dataclass(frozen=True)
class SeriesInfo:
    """Identifying UIDs, acquisition facts and geometry of one loaded series.

    DICOM values come from the first slice (PS3.3 General Study/Series, MR Image, Contrast/Bolus
    modules); they are None for a NIfTI input or when the attribute is absent or empty.
    """

    source_format: Literal["dicom", "nifti"]
    study_instance_uid: str | None
    series_instance_uid: str | None
    frame_of_reference_uid: str | None
    sop_class_uid: str | None
    modality: str
    manufacturer: str | None
    magnetic_field_strength_t: float | None
    slice_thickness_mm: float | None
    series_description: str | None
    sequence_name: str | None
    contrast_bolus_agent: str | None
    transfer_syntax_uid: str | None
    is_multiframe: bool
    number_of_slices: int
    size: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float]
    direction: tuple[float, ...]
    missing_rtstruct_attributes: tuple[str, ...] = ()


@dataclass(frozen=True)
class LoadedSeries:
    """One validated 3D image with its description and, for DICOM, its sources.

    Attributes:
        image: The volume in native geometry (LPS, mm). Integer pixels unless the series rescales.
        info: UIDs, acquisition facts and geometry.
        source_datasets: DICOM headers (no pixel data) in slice order (one dataset for a multi-frame
            file); what RTSTRUCT and SEG writers reference. Empty for NIfTI.
        source_paths: The DICOM files in slice order, or the NIfTI file. Empty when the input was a zip
            read without ``extract_to`` (the temporary folder is gone when ``read_series`` returns).
        source_elements: When read for storing (``ingest_series``): each source dataset's elements as
            read, before validation decoded some of them, so the stored copy writes every element it
            does not change as its original bytes. Empty otherwise.
    """

    image: sitk.Image
    info: SeriesInfo
    source_datasets: tuple[Dataset, ...]
    source_paths: tuple[Path, ...]
    source_elements: tuple[dict[BaseTag, DataElement | RawDataElement], ...] = field(
        default=(), repr=False, compare=False
    )


@dataclass(frozen=True)
class _Slice:
    """Geometry of one 2D plane: a single-frame file or one frame of a multi-frame file."""

    position_mm: np.ndarray
    orientation: np.ndarray
    pixel_spacing_mm: np.ndarray  # (row spacing, column spacing) as in DICOM
    rows: int
    columns: int
    label: str  # how to name this slice in an error message
    index: int  # file index (single-frame) or frame index (multi-frame)


# --- entry points ----------------------------------------------------------------------------------


def read_series(
    path: str | Path,
    *,
    series_uid: str | None = None,
    require_rtstruct_attributes: bool = True,
    extract_to: str | Path | None = None,
    backend: Backend = "sitk",
) -> LoadedSeries:
    """Read and validate one MR series from a zip, a DICOM folder or file, or a NIfTI file.

    Args:
        path: A ``.zip`` of DICOM files, a folder (searched recursively), a single (multi-frame) DICOM
            file, or a ``.nii``/``.nii.gz`` file.
        series_uid: Series Instance UID to pick when the upload holds several series.
        require_rtstruct_attributes: Refuse a DICOM series lacking an attribute RTSTRUCT/SEG export needs
            (:data:`RTSTRUCT_ATTRIBUTES`). With False the series loads and the missing keywords are
            listed in ``info.missing_rtstruct_attributes``.
        extract_to: For a zip: unpack into this (new or empty) folder and keep it, so ``source_paths``
            stay valid. When None the zip goes to a temporary folder that is removed afterwards.
        backend: Pixel decoder for single-frame series: ``"sitk"`` (GDCM, default) or ``"pydicom"``.

    Returns:
        The validated series.

    Raises:
        InputNotFoundError, NotDicomError, NotMRError, MultipleSeriesError, SeriesNotFoundError,
        MissingAttributeError, UnsupportedImageError, the GeometryError family (MissingSlicesError,
        DuplicateSliceError, InconsistentOrientationError, InconsistentSpacingError, SingleSliceError,
        AbsurdDimensionsError), and for zips the ArchiveError family. All derive from ImagingError.
    """
    return _read(
        Path(path),
        series_uid=series_uid,
        require_rtstruct_attributes=require_rtstruct_attributes,
        extract_to=extract_to,
        backend=backend,
        keep_pixel_data=False,
    )


def _read(
    source: Path,
    *,
    series_uid: str | None,
    require_rtstruct_attributes: bool,
    extract_to: str | Path | None,
    backend: Backend,
    keep_pixel_data: bool,
) -> LoadedSeries:
    """:func:`read_series`; with ``keep_pixel_data`` the datasets keep their Pixel Data element.

    The element's value stays on disk (pydicom's deferred read) until it is used, so keeping it costs
    no memory; :func:`ingest_series` uses it to write the de-identified copy without parsing every file
    a second time. Only for files that outlive the call (``extract_to``, a folder, a file).
    """
    if not source.exists():
        raise InputNotFoundError(f"No file or folder at {source}.")
    if source.is_file() and source.name.lower().endswith(NIFTI_SUFFIXES):
        return _read_nifti(source)
    if source.is_file() and source.suffix.lower() == ".zip" and not zipfile.is_zipfile(source):
        raise CorruptArchiveError(f"{source.name} is named like a zip archive but is not a readable one.")
    if source.is_file() and zipfile.is_zipfile(source):
        if extract_to is not None:
            safe_extract_zip(source, extract_to)
            return _read_dicom_files(
                _candidate_files(Path(extract_to)),
                series_uid,
                require_rtstruct_attributes,
                backend,
                keep_pixel_data=keep_pixel_data,
            )
        with tempfile.TemporaryDirectory(prefix="mettrack-upload-") as tmp:
            folder = Path(tmp) / "upload"
            safe_extract_zip(source, folder)
            loaded = _read_dicom_files(
                _candidate_files(folder), series_uid, require_rtstruct_attributes, backend
            )
        return replace(loaded, source_paths=())
    files = _candidate_files(source) if source.is_dir() else [source]
    return _read_dicom_files(
        files, series_uid, require_rtstruct_attributes, backend, keep_pixel_data=keep_pixel_data
    )


@dataclass(frozen=True)
class IngestedSeries:
    """A validated, de-identified series stored under ``stored_dir``.

    Attributes:
        series: The loaded series; its ``source_paths`` and ``source_datasets`` are the stored,
            de-identified copies, its ``info`` UIDs the stored (possibly remapped) ones.
        stored_dir: Folder holding ``IM_0001.dcm``... (DICOM) or ``image.nii.gz`` (NIfTI).
        timings_s: Seconds per step: ``read`` (unpacking, validation and pixel decoding, what any reader
            of the series does) and ``store`` (de-identification and writing the stored copy).
    """

    series: LoadedSeries
    stored_dir: Path
    timings_s: dict[str, float] = field(default_factory=dict)


def ingest_series(
    upload: str | Path,
    dest_dir: str | Path,
    *,
    subject_id: str,
    series_uid: str | None = None,
    remap_uids: bool = False,
    require_rtstruct_attributes: bool = True,
) -> IngestedSeries:
    """Validate an upload, de-identify it and store it in ``dest_dir``, all or nothing.

    Validation happens entirely before anything is written to ``dest_dir``; the de-identified copies are
    written to a hidden staging folder beside it and renamed into place at the end, so on any error
    ``dest_dir`` does not exist afterwards.

    Args:
        upload: What :func:`read_series` accepts.
        dest_dir: Where the stored series goes; must not exist yet.
        subject_id: Trial subject id replacing Patient Name and Patient ID.
        series_uid: See :func:`read_series`.
        remap_uids: Replace the site's UIDs consistently (see :func:`segmentation.deid.deidentify_dataset`).
        require_rtstruct_attributes: See :func:`read_series`.

    Returns:
        The stored series.

    Raises:
        Any ImagingError of :func:`read_series` or de-identification; FileExistsError if ``dest_dir``
        exists.
    """
    dest = Path(dest_dir)
    if dest.exists():
        raise FileExistsError(f"Series destination {dest} already exists")
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.ingest-", dir=dest.parent))
    timings: dict[str, float] = {}
    started = time.perf_counter()
    try:
        source = Path(upload)
        loaded = _read(
            source,
            series_uid=series_uid,
            require_rtstruct_attributes=require_rtstruct_attributes,
            extract_to=work / "upload" if source.is_file() and zipfile.is_zipfile(source) else None,
            backend="sitk",
            keep_pixel_data=True,
        )
        timings["read"] = time.perf_counter() - started
        started = time.perf_counter()
        staging = work / "series"
        staging.mkdir()
        if loaded.info.source_format == "nifti":
            stored = _store_nifti(loaded, staging)
        else:
            stored = _store_dicom(loaded, staging, subject_id=subject_id, remap_uids=remap_uids)
        os.replace(staging, dest)
        timings["store"] = time.perf_counter() - started
    finally:
        started = time.perf_counter()
        shutil.rmtree(work, ignore_errors=True)
        # the unpacked upload is the reading's scratch space: removing it belongs to the read
        timings["read"] = timings.get("read", 0.0) + time.perf_counter() - started
    stored_paths = tuple(dest / p.name for p in stored.source_paths)
    return IngestedSeries(
        series=replace(stored, source_paths=stored_paths), stored_dir=dest, timings_s=timings
    )


def _store_nifti(loaded: LoadedSeries, staging: Path) -> LoadedSeries:
    # Writing the image afresh drops the source header's free-text fields (descrip, aux_file, intent
    # name), where converters sometimes put patient names.
    target = staging / "image.nii.gz"
    sitk.WriteImage(_strip_metadata(loaded.image), str(target), useCompression=True)
    return replace(loaded, source_paths=(target,))


def _store_dicom(loaded: LoadedSeries, staging: Path, *, subject_id: str, remap_uids: bool) -> LoadedSeries:
    uid_map: dict[str, str] = {}
    headers = []
    paths = []
    # The datasets read during validation, pixel data included (read from disk as it is written).
    as_read = loaded.source_elements or tuple({} for _ in loaded.source_datasets)
    encoded: dict[Any, bytes] = {}  # elements de-identification sets alike in every file, encoded once
    for index, (ds, elements) in enumerate(zip(loaded.source_datasets, as_read, strict=True), start=1):
        # Validation only read values; putting back the elements it decoded lets the copy write every
        # element de-identification leaves alone as its original bytes (segmentation.part10).
        current = dict(ds.items())
        for tag, elem in elements.items():
            if current.get(tag) is not elem:
                ds[tag] = elem
        deidentify_dataset(ds, subject_id=subject_id, remap_uids=remap_uids, uid_map=uid_map)
        target = staging / f"IM_{index:04d}.dcm"
        write_part10(ds, target, encoded=encoded)
        paths.append(target)
        if "PixelData" in ds:
            del ds.PixelData
        headers.append(ds)
    info = loaded.info
    if remap_uids:
        info = replace(
            info,
            study_instance_uid=uid_map.get(info.study_instance_uid or "", info.study_instance_uid),
            series_instance_uid=uid_map.get(info.series_instance_uid or "", info.series_instance_uid),
            frame_of_reference_uid=uid_map.get(
                info.frame_of_reference_uid or "", info.frame_of_reference_uid
            ),
        )
    return replace(loaded, info=info, source_datasets=tuple(headers), source_paths=tuple(paths))


def _strip_metadata(image: sitk.Image) -> sitk.Image:
    clean = sitk.Image(image)
    for key in clean.GetMetaDataKeys():
        clean.EraseMetaData(key)
    return clean


# --- NIfTI -----------------------------------------------------------------------------------------


def _read_nifti(path: Path) -> LoadedSeries:
    # The NIfTI reader only: SimpleITK would otherwise pick a reader by content, so a DICOM (or any
    # other format) named .nii.gz would bypass the DICOM checks (modality MR above all).
    reader = sitk.ImageFileReader()
    reader.SetImageIO("NiftiImageIO")
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        with path.open("rb") as handle:
            gzipped = handle.read(2) == b"\x1f\x8b"
        if gzipped and not path.name.lower().endswith(".gz"):
            raise NotDicomError(
                f"{path.name} is gzip-compressed but named .nii; name it .nii.gz and send it again."
            ) from exc
        raise NotDicomError(f"{path.name} is named like a NIfTI file but cannot be read as one.") from exc
    # The header is checked before the voxels are read: a small .nii.gz can declare gigabytes.
    header_size = reader.GetSize()
    if len(header_size) >= 3 and header_size[2] > 1:
        if len(header_size) == 4 and header_size[3] != 1:
            raise UnsupportedImageError(
                f"The NIfTI image is 4D with {header_size[3]} volumes; send one 3D volume."
            )
        _check_dimensions(header_size[:3], reader.GetSpacing()[:3])
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise NotDicomError(f"{path.name} is a damaged NIfTI file (its voxel data cannot be read).") from exc
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise UnsupportedImageError("The NIfTI image has several components per voxel; send a scalar 3D MRI.")
    if image.GetDimension() == 4:
        if image.GetSize()[3] != 1:
            raise UnsupportedImageError(
                f"The NIfTI image is 4D with {image.GetSize()[3]} volumes; send one 3D volume."
            )
        image = image[:, :, :, 0]
    if image.GetDimension() == 2 or image.GetSize()[2] == 1:
        raise SingleSliceError("The NIfTI file holds a single 2D slice; a 3D volume is needed.")
    if image.GetDimension() != 3:
        raise UnsupportedImageError(f"The NIfTI image has {image.GetDimension()} dimensions; 3 are needed.")
    _check_dimensions(image.GetSize(), image.GetSpacing())
    info = SeriesInfo(
        source_format="nifti",
        study_instance_uid=None,
        series_instance_uid=None,
        frame_of_reference_uid=None,
        sop_class_uid=None,
        modality="MR",
        manufacturer=None,
        magnetic_field_strength_t=None,
        slice_thickness_mm=float(image.GetSpacing()[2]),
        series_description=None,
        sequence_name=None,
        contrast_bolus_agent=None,
        transfer_syntax_uid=None,
        is_multiframe=False,
        number_of_slices=int(image.GetSize()[2]),
        **_geometry_fields(image),
    )
    return LoadedSeries(image=_strip_metadata(image), info=info, source_datasets=(), source_paths=(path,))


# --- DICOM -----------------------------------------------------------------------------------------


def _candidate_files(folder: Path) -> list[Path]:
    """Regular files under ``folder``, sorted, without hidden files, links or DICOMDIR."""
    files = []
    for path in sorted(folder.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        if path.name.startswith(".") or path.name.upper() == "DICOMDIR":
            continue
        files.append(path)
    return files


#: Values larger than this stay on disk when a dataset is read with its pixel data (pydicom defer_size).
_DEFER_BYTES = 64 * 1024


def _read_headers(
    files: Sequence[Path],
    *,
    keep_pixel_data: bool = False,
    as_read: dict[int, dict[BaseTag, DataElement | RawDataElement]] | None = None,
) -> tuple[list[tuple[Path, Dataset]], int]:
    """Read the header of every DICOM file; return (image headers, number of DICOM files found).

    With ``keep_pixel_data`` the whole file is parsed and large values (the pixel data) are deferred.
    ``as_read`` (``id(dataset)`` -> its elements before anything decoded them) is filled when given.
    """
    images: list[tuple[Path, Dataset]] = []
    damaged: list[str] = []
    dicom_count = 0
    for path in files:
        try:
            if keep_pixel_data:
                ds = pydicom.dcmread(path, defer_size=_DEFER_BYTES)
            else:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError):
            if _has_dicom_preamble(path):
                damaged.append(path.name)  # a DICOM file that cannot be read: never dropped silently
            continue  # not DICOM: skipped, and never copied into storage
        if as_read is not None:
            as_read[id(ds)] = dict(ds.items())  # raw elements: reading a value below decodes it
        dicom_count += 1
        if _is_dicomdir(ds):
            continue  # an index of the files, whatever its file name (DICOMDIR.dcm): not an image
        modality = str(ds.get("Modality", "")).upper()
        if modality in _NON_IMAGE_MODALITIES:
            continue
        if "Rows" not in ds:
            # An image (or a file whose header stops before even its modality) without a matrix is a
            # file cut short, e.g. the last slice of an interrupted export; other objects are skipped.
            if not modality or modality == "MR" or _is_image_storage(ds):
                damaged.append(path.name)
            continue
        images.append((path, ds))
    if damaged:
        shown = ", ".join(damaged[:5]) + (f" and {len(damaged) - 5} more" if len(damaged) > 5 else "")
        raise CorruptDicomError(
            f"{len(damaged)} DICOM file(s) of the upload are damaged and cannot be read ({shown}); "
            "the series would be incomplete. Please export it again from the scanner or PACS.",
            damaged,
        )
    return images, dicom_count


def _has_dicom_preamble(path: Path) -> bool:
    """Whether a file carries the DICOM Part 10 marker ("DICM" after the 128-byte preamble)."""
    try:
        with path.open("rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def _is_dicomdir(ds: Dataset) -> bool:
    """Whether a dataset is a DICOMDIR (a File-set's directory, PS3.3 F.3), by SOP class or content."""
    meta = getattr(ds, "file_meta", None)
    sop_class = str((meta.get("MediaStorageSOPClassUID", "") if meta is not None else "") or "")
    return sop_class == _DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds


def _is_image_storage(ds: Dataset) -> bool:
    """Whether the dataset's SOP class is an image storage class (MR, enhanced MR, CT, ...)."""
    sop_class = str(ds.get("SOPClassUID", "") or "")
    return sop_class.startswith("1.2.840.10008.5.1.4.1.1.") and "Image" in getattr(
        ds.get("SOPClassUID"), "name", ""
    )


def _describe(ds: Dataset) -> str:
    # Messages reach the uploader, a job's error and logs: only the cleaned description (PS3.15 Clean
    # Descriptors: MR terms kept, any other word replaced by "*").
    return clean_series_description(str(ds.get("SeriesDescription", "") or "")) or "(no description)"


def _read_dicom_files(
    files: Sequence[Path],
    series_uid: str | None,
    require_rtstruct_attributes: bool,
    backend: Backend,
    *,
    keep_pixel_data: bool = False,
) -> LoadedSeries:
    as_read: dict[int, dict[BaseTag, DataElement | RawDataElement]] | None = {} if keep_pixel_data else None
    images, dicom_count = _read_headers(files, keep_pixel_data=keep_pixel_data, as_read=as_read)
    if not images:
        if (
            len(files) == 1
            and dicom_count == 1
            and _is_dicomdir(pydicom.dcmread(files[0], stop_before_pixels=True))
        ):
            raise NotDicomError(
                f"{files[0].name} is a DICOMDIR, the index of a DICOM export, without any image; please send "
                "the whole exported folder (or a zip of it), not the DICOMDIR alone."
            )
        if dicom_count:
            raise NotDicomError(
                f"The upload contains {dicom_count} DICOM file(s) but no image (only e.g. structure sets "
                "or reports); please send the MR image series."
            )
        raise NotDicomError(
            "No DICOM file was found in the upload (and it is not a .nii/.nii.gz NIfTI file); please send "
            "the MR series as exported from the scanner or PACS."
        )
    members = _choose_series(images, series_uid)
    first = members[0][1]
    missing_rt = _check_series(members, require_rtstruct_attributes)
    frames = int(first.get("NumberOfFrames", 1) or 1)
    if frames > 1 or any(int(ds.get("NumberOfFrames", 1) or 1) > 1 for _, ds in members):
        if len(members) != 1:
            raise UnsupportedImageError(
                "The series is split over several multi-frame files; please send it as one file or as "
                "single-frame slices."
            )
        loaded = _read_multiframe(members[0][0], first, missing_rt)
    elif len(members) == 1:
        raise SingleSliceError(
            f"The series '{_describe(first)}' is a single 2D slice; MetTrack needs the whole 3D volume."
        )
    else:
        loaded = _read_single_frames(members, missing_rt, backend)
    if as_read is None:
        return loaded
    return replace(loaded, source_elements=tuple(as_read[id(ds)] for ds in loaded.source_datasets))


def _choose_series(
    images: Sequence[tuple[Path, Dataset]], series_uid: str | None
) -> list[tuple[Path, Dataset]]:
    """The files of the one series the upload holds, or of ``series_uid`` when it holds several.

    Raises:
        MissingAttributeError: a file without a Series Instance UID.
        SeriesNotFoundError: ``series_uid`` is not in the upload.
        MultipleSeriesError: several series and no ``series_uid``.
    """
    by_series: dict[str, list[tuple[Path, Dataset]]] = defaultdict(list)
    for path, ds in images:
        uid = str(ds.get("SeriesInstanceUID", "") or "")
        if not uid:
            raise MissingAttributeError(
                f"{path.name} has no Series Instance UID, so it cannot be assigned to a series.",
                ["SeriesInstanceUID"],
            )
        by_series[uid].append((path, ds))
    listing = [
        (uid, _describe(members[0][1]), str(members[0][1].get("Modality", "")), len(members))
        for uid, members in by_series.items()
    ]
    if series_uid is not None:
        if series_uid not in by_series:
            raise SeriesNotFoundError(
                f"Series {series_uid} is not in the upload; it holds: "
                + "; ".join(f"{u} ({d}, {m}, {n} files)" for u, d, m, n in listing)
            )
        members = by_series[series_uid]
    elif len(by_series) > 1:
        raise MultipleSeriesError(
            f"The upload holds {len(by_series)} image series; please choose one by its Series Instance "
            "UID: " + "; ".join(f"{u} ({d}, {m}, {n} files)" for u, d, m, n in listing),
            listing,
        )
    else:
        members = next(iter(by_series.values()))
    return members


def _check_series(
    members: Sequence[tuple[Path, Dataset]], require_rtstruct_attributes: bool
) -> tuple[str, ...]:
    """Refuse a series MetTrack cannot measure: not MR, colour, or (when asked) without the attributes its
    RTSTRUCT and SEG must copy.

    Returns:
        The RTSTRUCT attributes some file lacks (when they are not required).
    """
    first = members[0][1]
    modality = str(first.get("Modality", "") or "")
    if modality != "MR":
        raise NotMRError(
            f"The series '{_describe(first)}' has modality {modality or 'unknown'}, not MR; MetTrack measures "
            "brain metastases on post-contrast MRI only."
        )
    if int(first.get("SamplesPerPixel", 1)) != 1:
        raise UnsupportedImageError("The series is a colour (RGB) image; a greyscale MR series is needed.")
    missing_rt = tuple(k for k in RTSTRUCT_ATTRIBUTES if any(k not in ds for _, ds in members))
    if missing_rt and require_rtstruct_attributes:
        raise MissingAttributeError(
            "The series lacks the DICOM attribute(s) "
            + ", ".join(missing_rt)
            + ", which the contours sent back (RTSTRUCT, SEG) must copy from it. Please re-export the "
            "series from the scanner or PACS with the full header.",
            list(missing_rt),
        )
    return missing_rt


def _require(ds: Dataset, keywords: Sequence[str], where: str) -> None:
    missing = [k for k in keywords if k not in ds or ds[k].value in (None, "")]
    if missing:
        raise MissingAttributeError(
            f"{where} lacks {', '.join(missing)}, so the image cannot be placed in space.", missing
        )


def _read_single_frames(
    members: list[tuple[Path, Dataset]], missing_rt: tuple[str, ...], backend: Backend
) -> LoadedSeries:
    slices = []
    for index, (path, ds) in enumerate(members):
        _require(ds, GEOMETRY_ATTRIBUTES, f"File {path.name}")
        slices.append(
            _Slice(
                position_mm=np.asarray(ds.ImagePositionPatient, dtype=float),
                orientation=np.asarray(ds.ImageOrientationPatient, dtype=float),
                pixel_spacing_mm=np.asarray(ds.PixelSpacing, dtype=float),
                rows=int(ds.Rows),
                columns=int(ds.Columns),
                label=f"instance {ds.get('InstanceNumber', '?')} ({path.name})",
                index=index,
            )
        )
    ordered, origin, direction, spacing = _validated_geometry(slices)
    paths = [members[s.index][0] for s in ordered]
    headers = tuple(members[s.index][1] for s in ordered)
    if backend == "sitk":
        arr = _pixels_sitk(paths)
    elif backend == "pydicom":
        arr = _pixels_pydicom(paths)
    else:
        raise ValueError(f"Unknown pixel backend {backend!r}")
    image = _to_image(arr, origin, direction, spacing)
    info = _dicom_info(headers[0], image, is_multiframe=False, missing_rt=missing_rt)
    return LoadedSeries(image=image, info=info, source_datasets=headers, source_paths=tuple(paths))


def _pixels_sitk(paths: Sequence[Path]) -> np.ndarray:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(p) for p in paths])
    try:
        volume = reader.Execute()
    except RuntimeError as exc:
        # ITK's message names server paths and memory addresses; say which file is at fault instead.
        raise _pixel_failure(paths) from exc
    return sitk.GetArrayFromImage(volume)


def _pixel_failure(paths: Sequence[Path]) -> ImagingError:
    """The error to report when the pixel data of a series cannot be decoded (only on that path)."""
    for path in paths:
        try:
            ds = pydicom.dcmread(path)
            data = ds.get("PixelData")
        except Exception:  # noqa: BLE001 - any failure to read the file to its end means it is damaged
            data = None
        if data is None:
            return CorruptDicomError(
                f"{path.name} is damaged: its pixel data cannot be read (the file may be cut short). "
                "Please export the series again.",
                [path.name],
            )
        syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
        if syntax is not None and not syntax.is_compressed:
            expected = (
                int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1)
                * int(ds.get("NumberOfFrames", 1) or 1) * (int(ds.BitsAllocated) // 8)
            )  # fmt: skip
            if len(data) < expected:
                return CorruptDicomError(
                    f"{path.name} is damaged: it holds {len(data)} bytes of pixel data where {expected} "
                    "are needed (the file is cut short). Please export the series again.",
                    [path.name],
                )
    return UnsupportedImageError(
        "The slices' pixel data cannot be decoded (an encoding MetTrack cannot read?); please export the "
        "series uncompressed or with standard JPEG / JPEG 2000 compression."
    )


def _pixels_pydicom(paths: Sequence[Path]) -> np.ndarray:
    from pydicom.pixels import apply_rescale

    planes = []
    rescaled = False
    for path in paths:
        ds = pydicom.dcmread(path)
        try:
            plane = ds.pixel_array
        except Exception as exc:  # pydicom raises several types for missing decoders
            raise UnsupportedImageError(f"The pixel data of {path.name} cannot be decoded ({exc}).") from exc
        if float(ds.get("RescaleSlope", 1) or 1) != 1 or float(ds.get("RescaleIntercept", 0) or 0) != 0:
            plane = apply_rescale(plane, ds).astype(np.float32)
            rescaled = True
        planes.append(plane)
    arr = np.stack(planes)
    return arr.astype(np.float32) if rescaled else arr


def _read_multiframe(path: Path, header: Dataset, missing_rt: tuple[str, ...]) -> LoadedSeries:
    frames = int(header.get("NumberOfFrames", 1) or 1)
    if frames == 1:
        raise SingleSliceError("The multi-frame file holds a single frame; MetTrack needs a 3D volume.")
    shared = header.get("SharedFunctionalGroupsSequence", [Dataset()])[0]
    per_frame = header.get("PerFrameFunctionalGroupsSequence")
    if per_frame is None or len(per_frame) != frames:
        raise MissingAttributeError(
            "The multi-frame file lacks a complete Per-frame Functional Groups Sequence.",
            ["PerFrameFunctionalGroupsSequence"],
        )

    def group(item: Dataset, name: str) -> Dataset | None:
        for source in (item, shared):
            if name in source and len(source[name].value):
                return source[name].value[0]
        return None

    slices = []
    for index, item in enumerate(per_frame):
        position = group(item, "PlanePositionSequence")
        orientation = group(item, "PlaneOrientationSequence")
        measures = group(item, "PixelMeasuresSequence")
        if position is None or orientation is None or measures is None:
            raise MissingAttributeError(
                f"Frame {index + 1} of the multi-frame file has no plane position, orientation or pixel "
                "spacing, so it cannot be placed in space.",
                ["PlanePositionSequence", "PlaneOrientationSequence", "PixelMeasuresSequence"],
            )
        slices.append(
            _Slice(
                position_mm=np.asarray(position.ImagePositionPatient, dtype=float),
                orientation=np.asarray(orientation.ImageOrientationPatient, dtype=float),
                pixel_spacing_mm=np.asarray(measures.PixelSpacing, dtype=float),
                rows=int(header.Rows),
                columns=int(header.Columns),
                label=f"frame {index + 1}",
                index=index,
            )
        )
    ordered, origin, direction, spacing = _validated_geometry(slices)
    ds = pydicom.dcmread(path)
    try:
        arr = ds.pixel_array
    except Exception as exc:  # pydicom raises several types for missing decoders
        raise UnsupportedImageError(f"The pixel data of {path.name} cannot be decoded ({exc}).") from exc
    arr = arr[[s.index for s in ordered]]
    transform = group(per_frame[0], "PixelValueTransformationSequence")
    if transform is not None:
        slope = float(transform.get("RescaleSlope", 1) or 1)
        intercept = float(transform.get("RescaleIntercept", 0) or 0)
        if slope != 1 or intercept != 0:
            arr = arr.astype(np.float32) * slope + intercept
    image = _to_image(arr, origin, direction, spacing)
    info = _dicom_info(header, image, is_multiframe=True, missing_rt=missing_rt)
    thickness = _number(measures, "SliceThickness") if measures is not None else None
    if thickness is not None:
        info = replace(info, slice_thickness_mm=thickness)
    return LoadedSeries(image=image, info=info, source_datasets=(header,), source_paths=(path,))


# --- geometry --------------------------------------------------------------------------------------


def _validated_geometry(
    slices: list[_Slice],
) -> tuple[list[_Slice], np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Check the slices form one regular volume; return (ordered slices, origin, direction, spacing)."""
    reference = slices[0]
    for s in slices[1:]:
        if not np.allclose(s.orientation, reference.orientation, atol=_ORIENTATION_TOL):
            raise InconsistentOrientationError(
                f"Slices of the series are tilted differently: {s.label} has orientation "
                f"{np.round(s.orientation, 4).tolist()} but {reference.label} has "
                f"{np.round(reference.orientation, 4).tolist()}. Please send a series with one orientation."
            )
        if (s.rows, s.columns) != (reference.rows, reference.columns):
            raise InconsistentSpacingError(
                f"Slices of the series have different matrix sizes: {s.label} is {s.rows} x {s.columns}, "
                f"{reference.label} is {reference.rows} x {reference.columns}."
            )
        if not np.allclose(s.pixel_spacing_mm, reference.pixel_spacing_mm, atol=_SPACING_TOL_MM):
            raise InconsistentSpacingError(
                f"Slices of the series have different pixel spacing: {s.label} has "
                f"{s.pixel_spacing_mm.tolist()} mm but {reference.label} has "
                f"{reference.pixel_spacing_mm.tolist()} mm."
            )
    row_dir, col_dir = reference.orientation[:3], reference.orientation[3:]
    if (
        abs(np.linalg.norm(row_dir) - 1) > 1e-3
        or abs(np.linalg.norm(col_dir) - 1) > 1e-3
        or abs(np.dot(row_dir, col_dir)) > 1e-3
    ):
        raise GeometryError(
            "Image Orientation (Patient) is not two orthogonal unit vectors; the header is damaged."
        )
    normal = np.cross(row_dir, col_dir)
    ordered = sorted(slices, key=lambda s: float(np.dot(s.position_mm, normal)))
    along = np.array([np.dot(s.position_mm, normal) for s in ordered])
    steps = np.diff(along)
    for i, step in enumerate(steps):
        if step < _SPACING_TOL_MM:
            raise DuplicateSliceError(
                f"{ordered[i].label} and {ordered[i + 1].label} are at the same position ({along[i]:.2f} mm "
                "along the slice normal); the upload may mix two series or echoes."
            )
    median = float(np.median(steps))
    for i, step in enumerate(steps):
        if step > _GAP_FACTOR * median:
            missing = round(step / median) - 1
            raise MissingSlicesError(
                f"About {missing} slice(s) are missing between {ordered[i].label} at {along[i]:.2f} mm and "
                f"{ordered[i + 1].label} at {along[i + 1]:.2f} mm along the slice normal (regular step "
                f"{median:.2f} mm). Please re-send the complete series."
            )
    if np.any(np.abs(steps - median) > _IRREGULAR_TOL * median):
        raise GeometryError(
            f"Slice spacing is irregular (steps from {steps.min():.2f} to {steps.max():.2f} mm); MetTrack needs "
            "evenly spaced slices."
        )
    # slices must be stacked along the normal, not sheared (e.g. gantry tilt)
    offsets = np.array([s.position_mm for s in ordered]) - ordered[0].position_mm
    in_plane = offsets - np.outer(offsets @ normal, normal)
    if np.max(np.linalg.norm(in_plane, axis=1)) > 0.1 * float(reference.pixel_spacing_mm.min()) + 0.01:
        raise GeometryError(
            "The slices are shifted sideways from one to the next (a tilted or sheared acquisition); "
            "MetTrack needs slices stacked straight along the slice normal."
        )
    spacing = (float(reference.pixel_spacing_mm[1]), float(reference.pixel_spacing_mm[0]), median)
    size = (reference.columns, reference.rows, len(ordered))
    _check_dimensions(size, spacing)
    direction = np.column_stack([row_dir, col_dir, normal])
    return ordered, ordered[0].position_mm, direction, spacing


def _check_dimensions(size: Sequence[int], spacing: Sequence[float]) -> None:
    columns, rows, n_slices = (int(v) for v in size[:3])
    if not (MIN_MATRIX <= rows <= MAX_MATRIX and MIN_MATRIX <= columns <= MAX_MATRIX):
        raise AbsurdDimensionsError(
            f"The slices are {rows} x {columns} pixels; a brain MRI has {MIN_MATRIX} to {MAX_MATRIX} per side."
        )
    if not MIN_SLICES <= n_slices <= MAX_SLICES:
        raise AbsurdDimensionsError(
            f"The series has {n_slices} slices; a 3D brain MRI has {MIN_SLICES} to {MAX_SLICES}."
        )
    if columns * rows * n_slices > MAX_VOXELS:
        raise AbsurdDimensionsError(
            f"The volume has {columns * rows * n_slices} voxels, more than {MAX_VOXELS}."
        )
    for value in spacing[:3]:
        if not MIN_SPACING_MM <= float(value) <= MAX_SPACING_MM:
            raise AbsurdDimensionsError(
                f"A voxel spacing of {float(value):g} mm is outside {MIN_SPACING_MM} to {MAX_SPACING_MM} mm."
            )


def _to_image(
    arr: np.ndarray, origin: np.ndarray, direction: np.ndarray, spacing: tuple[float, float, float]
) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(arr))
    image.SetOrigin(tuple(float(v) for v in origin))
    image.SetDirection(tuple(float(v) for v in direction.ravel()))
    image.SetSpacing(spacing)
    return image


def _geometry_fields(image: sitk.Image) -> dict[str, tuple]:
    return {
        "size": tuple(int(v) for v in image.GetSize()),
        "spacing_mm": tuple(float(v) for v in image.GetSpacing()),
        "origin_mm": tuple(float(v) for v in image.GetOrigin()),
        "direction": tuple(float(v) for v in image.GetDirection()),
    }


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value in (None, ""):
        return None
    return str(value)


def _number(ds: Dataset, keyword: str) -> float | None:
    value = ds.get(keyword)
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _dicom_info(
    ds: Dataset, image: sitk.Image, *, is_multiframe: bool, missing_rt: tuple[str, ...]
) -> SeriesInfo:
    meta = getattr(ds, "file_meta", None)
    return SeriesInfo(
        source_format="dicom",
        study_instance_uid=_text(ds, "StudyInstanceUID"),
        series_instance_uid=_text(ds, "SeriesInstanceUID"),
        frame_of_reference_uid=_text(ds, "FrameOfReferenceUID"),
        sop_class_uid=_text(ds, "SOPClassUID"),
        modality=str(ds.get("Modality", "")),
        manufacturer=_text(ds, "Manufacturer"),
        magnetic_field_strength_t=_number(ds, "MagneticFieldStrength"),
        slice_thickness_mm=_number(ds, "SliceThickness"),
        series_description=_text(ds, "SeriesDescription"),
        sequence_name=_text(ds, "SequenceName") or _text(ds, "PulseSequenceName"),
        contrast_bolus_agent=_text(ds, "ContrastBolusAgent"),
        transfer_syntax_uid=str(meta.TransferSyntaxUID)
        if meta is not None and "TransferSyntaxUID" in meta
        else None,
        is_multiframe=is_multiframe,
        number_of_slices=int(image.GetSize()[2]),
        missing_rtstruct_attributes=missing_rt,
        **_geometry_fields(image),
    )


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def new_series_folder_name() -> str:
    """A collision-free folder name for a stored series (``series-<uuid4>``)."""
    return f"series-{uuid.uuid4().hex}"
