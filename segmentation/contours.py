"""Lesion contours out: NIfTI label image, RTSTRUCT (rt-utils) and DICOM SEG (highdicom), and readers.

The label image is an integer image in the native geometry of the series (what
:func:`segmentation.io.read_series` returns): 0 is background, each lesion has its own value, and
``lesion_names`` maps each value to the lesion's stable label (``{1: "L1", 2: "L2"}``).

- RTSTRUCT: one ROI per lesion, named by its label and coloured, referencing every image of the series
  (treatment-planning systems such as RayStation read it). Contours run along the voxel edges (the
  outline of the voxels, not through their centres), one per 4-connected region of a slice, holes
  joined by keyhole bridges (:mod:`segmentation.outlines` says why), so a reader that fills the voxels
  whose centres lie inside (plastimatch, planning systems, :func:`read_rtstruct`) gets back every voxel
  of the lesion. The dataset's header comes from rt-utils; the ROI sequences are written here.
- DICOM SEG: a BINARY segmentation with one segment per lesion (label as Segment Label and Tracking
  ID), referencing the source images; it reads back voxel-identical.

Readers return a :class:`ContourSet` whose label image numbers the lesions 1..n in file order, with
their names, so round-trip tests compare lesions by name.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset

from segmentation.errors import ContourExportError, ContourReadError, MissingAttributeError
from segmentation.io import GEOMETRY_ATTRIBUTES, RTSTRUCT_ATTRIBUTES, LoadedSeries, read_series
from segmentation.outlines import fill_even_odd, keyhole_outlines

#: Distinct colours (RGB) cycled through for lesions without an explicit colour.
DEFAULT_COLORS: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
)

MANUFACTURER = "MetTrack"
#: SNOMED CT codes for what a segment is (PS3.16 CID 7150 category, CID 7151 type).
_CATEGORY = ("49755003", "SCT", "Morphologically Abnormal Structure")
_TYPE = ("14799000", "SCT", "Neoplasm, metastatic")
#: RT ROI Interpreted Type of every lesion (PS3.3 C.8.8.8): the gross tumour seen on the image.
ROI_INTERPRETED_TYPE = "GTV"
#: Series Number offsets of the derived objects from the source series' (see :func:`series_number`).
SEG_SERIES_OFFSET = 1000
SR_SERIES_OFFSET = 1001
RTSTRUCT_SERIES_OFFSET = 1002
#: Geometry agreement needed between label image and series (mm, and direction cosines).
_GEOMETRY_TOL = 1e-3


@dataclass(frozen=True)
class ContourSet:
    """Lesion masks read back from an RTSTRUCT or SEG.

    Attributes:
        labels: uint16 label image in the series geometry; value i is the lesion ``names[i]``.
        names: Label value -> lesion name (ROI Name or Segment Label).
        colors: Label value -> RGB colour as stored (RTSTRUCT ROI Display Color; SEG colours are
            converted from CIELab and may differ by rounding).
    """

    labels: sitk.Image
    names: dict[int, str]
    colors: dict[int, tuple[int, int, int]]

    def mask(self, name: str) -> np.ndarray:
        """Boolean array [slice, row, column] of the lesion called ``name``."""
        for value, lesion in self.names.items():
            if lesion == name:
                return sitk.GetArrayViewFromImage(self.labels) == value
        raise KeyError(name)


# --- NIfTI -----------------------------------------------------------------------------------------


def write_label_nifti(labels: sitk.Image, path: str | Path) -> Path:
    """Write a lesion label image as compressed NIfTI in its own (native) geometry.

    Args:
        labels: Integer 3D label image (0 = background).
        path: Output file; ``.nii.gz`` is usual.

    Returns:
        The written path.

    Raises:
        ContourExportError: If the image is not a 3D integer image or has values outside uint16.
    """
    arr = _label_array(labels)
    out = sitk.GetImageFromArray(arr.astype(np.uint16))
    out.CopyInformation(labels)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(out, str(target), useCompression=True)
    return target


def read_label_nifti(path: str | Path) -> sitk.Image:
    """Read a label NIfTI written by :func:`write_label_nifti` (as uint16)."""
    return sitk.Cast(sitk.ReadImage(str(path)), sitk.sitkUInt16)


# --- shared checks ---------------------------------------------------------------------------------


def _label_array(labels: sitk.Image) -> np.ndarray:
    if labels.GetDimension() != 3 or labels.GetNumberOfComponentsPerPixel() != 1:
        raise ContourExportError("The lesion label image must be a 3D scalar image.")
    arr = sitk.GetArrayFromImage(labels)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ContourExportError(
            f"The lesion label image must be integer, not {labels.GetPixelIDTypeAsString()}."
        )
    if arr.size and (arr.min() < 0 or arr.max() > np.iinfo(np.uint16).max):
        raise ContourExportError("Lesion label values must lie between 0 and 65535.")
    return arr


def _checked_lesions(arr: np.ndarray, lesion_names: Mapping[int, str]) -> list[int]:
    present = {int(v) for v in np.unique(arr) if v != 0}
    unnamed = sorted(present - set(lesion_names))
    if unnamed:
        raise ContourExportError(f"Label values {unnamed} have no lesion name; every lesion needs one.")
    empty = sorted(set(lesion_names) - present)
    if empty:
        raise ContourExportError(
            f"Lesions {[lesion_names[v] for v in empty]} have no voxel in the label image; nothing to contour."
        )
    names = [lesion_names[v] for v in sorted(present)]
    if len(set(names)) != len(names):
        raise ContourExportError(f"Lesion names must be unique; got {names}.")
    if not present:
        raise ContourExportError("The label image contains no lesion; there is nothing to export.")
    return sorted(present)


SeriesLike = LoadedSeries | str | Path | Sequence[Dataset] | Sequence[str | Path]


def _series_datasets(series: SeriesLike) -> list[Dataset]:
    """Return the source headers from a LoadedSeries, a series folder or file, datasets, or file paths."""
    if isinstance(series, LoadedSeries):
        return list(series.source_datasets)
    if isinstance(series, str | Path):
        return list(read_series(series).source_datasets)
    items = list(series)
    if items and all(isinstance(item, str | Path) for item in items):
        return [pydicom.dcmread(item, stop_before_pixels=True) for item in items]  # type: ignore[arg-type]
    return items  # type: ignore[return-value]


def _as_loaded(series: LoadedSeries | str | Path) -> LoadedSeries:
    return series if isinstance(series, LoadedSeries) else read_series(series)


def _require_headers(datasets: Sequence[Dataset], keywords: Sequence[str]) -> None:
    if not datasets:
        raise ContourExportError("No source DICOM images were given; contours must reference a DICOM series.")
    missing = sorted({k for ds in datasets for k in keywords if k not in ds})
    if missing:
        raise MissingAttributeError(
            f"The source series lacks {', '.join(missing)}, which RTSTRUCT/SEG export must copy from it.",
            missing,
        )


def _slice_index(labels: sitk.Image, position_mm: Sequence[float]) -> int:
    """Index along the label image's third axis of a plane at ``position_mm``; -1 if it is off-grid."""
    continuous = labels.TransformPhysicalPointToContinuousIndex(tuple(float(v) for v in position_mm))
    index = [round(c) for c in continuous]
    if max(abs(c - i) for c, i in zip(continuous, index, strict=True)) > 1e-2:
        return -1
    if index[0] != 0 or index[1] != 0 or not 0 <= index[2] < labels.GetSize()[2]:
        return -1
    return index[2]


def _check_plane_geometry(
    labels: sitk.Image, ds: Dataset, orientation: Sequence[float], spacing: Sequence[float]
) -> None:
    direction = np.asarray(labels.GetDirection()).reshape(3, 3)
    if (int(ds.Columns), int(ds.Rows)) != tuple(labels.GetSize()[:2]) or not (
        np.allclose(direction[:, 0], orientation[:3], atol=_GEOMETRY_TOL)
        and np.allclose(direction[:, 1], orientation[3:], atol=_GEOMETRY_TOL)
        and np.allclose(labels.GetSpacing()[:2], (spacing[1], spacing[0]), atol=_GEOMETRY_TOL)
    ):
        raise ContourExportError(
            "The label image is not in the native geometry of the series (matrix, orientation or pixel "
            "spacing differ); map the prediction back to the series geometry first."
        )


# --- RTSTRUCT --------------------------------------------------------------------------------------


def write_rtstruct(
    labels: sitk.Image,
    series_dir: SeriesLike,
    out_path: str | Path,
    *,
    lesion_names: Mapping[int, str],
    colors: Mapping[int, Sequence[int]] | None = None,
    series_description: str = "MetTrack lesions",
    provenance: str = "",
) -> Path:
    """Write an RTSTRUCT with one ROI per lesion, referencing the source MR series (rt-utils).

    Args:
        labels: Lesion label image in the series' native geometry.
        series_dir: The source series: a folder holding it (read and validated with
            :func:`segmentation.io.read_series`), a :class:`~segmentation.io.LoadedSeries`, or its
            single-frame datasets (headers suffice) or file paths.
        out_path: Output file.
        lesion_names: Label value -> ROI name (the stable lesion label, e.g. ``"L1"``).
        colors: Label value -> RGB (0-255); :data:`DEFAULT_COLORS` in label order otherwise.
        series_description: Series Description of the RTSTRUCT.
        provenance: What produced the contours (model name, version, full weights checksum, label),
            written as the Structure Set Description and, shortened, as each ROI's generation
            description.

    Returns:
        The written path.

    Raises:
        ContourExportError: Bad label image, unnamed or empty lesions, a multi-frame series, or a label
            image not in the series geometry.
        MissingAttributeError: The series lacks an attribute the RTSTRUCT copies (StudyTime, StudyID...).
    """
    from rt_utils import ds_helper  # heavy (OpenCV), only needed here

    arr = _label_array(labels)
    lesions = _checked_lesions(arr, lesion_names)
    datasets = _series_datasets(series_dir)
    if any(int(ds.get("NumberOfFrames", 1) or 1) > 1 for ds in datasets):
        raise ContourExportError(
            "RTSTRUCT export needs a single-frame series; use DICOM SEG for multi-frame images."
        )
    _require_headers(datasets, (*RTSTRUCT_ATTRIBUTES, *GEOMETRY_ATTRIBUTES))
    spacing = [float(v) for v in datasets[0].PixelSpacing]
    orientation = [float(v) for v in datasets[0].ImageOrientationPatient]
    _check_plane_geometry(labels, datasets[0], orientation, spacing)
    normal = np.cross(orientation[:3], orientation[3:])
    ordered = sorted(
        datasets, key=lambda ds: float(np.dot(normal, [float(v) for v in ds.ImagePositionPatient]))
    )
    slice_of = [_slice_index(labels, ds.ImagePositionPatient) for ds in ordered]
    if -1 in slice_of or sorted(slice_of) != list(range(labels.GetSize()[2])):
        raise ContourExportError(
            "The label image's slices do not coincide with the series' slices; map the prediction back to "
            "the series geometry first."
        )
    with warnings.catch_warnings():
        # rt-utils sets the dataset's encoding through attributes pydicom 3 deprecates
        warnings.simplefilter("ignore", DeprecationWarning)
        ds = ds_helper.create_rtstruct_dataset(ordered)
    frame_uid = str(ds.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID)
    image_of_slice = {k: image for k, image in zip(slice_of, ordered, strict=True)}
    for number, value in enumerate(lesions, start=1):
        color = colors.get(value) if colors else None
        rgb = [int(c) for c in (color or DEFAULT_COLORS[(number - 1) % len(DEFAULT_COLORS)])]
        ds.StructureSetROISequence.append(
            _structure_set_roi(number, lesion_names[value], frame_uid, provenance)
        )
        roi_contour = Dataset()
        roi_contour.ROIDisplayColor = rgb
        roi_contour.ContourSequence = _contour_sequence(labels, arr == value, image_of_slice)
        roi_contour.ReferencedROINumber = number
        ds.ROIContourSequence.append(roi_contour)
        observation = Dataset()
        observation.ObservationNumber = number
        observation.ReferencedROINumber = number
        observation.RTROIInterpretedType = ROI_INTERPRETED_TYPE
        observation.ROIInterpreter = ""
        ds.RTROIObservationsSequence.append(observation)
    _complete_rtstruct_header(ds, ordered[0], frame_uid)
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = "MetTrack lesion contours"
    if "InstitutionName" in ds:
        del ds.InstitutionName  # rt-utils writes its own institution, which is not ours to claim
    ds.SeriesDescription = series_description
    ds.StructureSetLabel = "MetTrack"
    if provenance:
        ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: the label's dash is not in Latin-1
        ds.StructureSetDescription = provenance[:1024]  # ST
    target = Path(out_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(target, enforce_file_format=True)
    return target


def _complete_rtstruct_header(ds: Dataset, source: Dataset, frame_uid: str) -> None:
    """The Type 1 and 2 attributes rt-utils' header leaves out (dciodvfy reports each as an error).

    General Study: Referring Physician's Name and Accession Number as the source has them (empty when it
    has none: both are Type 2). RT Series: Operators' Name, empty (no person operates MetTrack) and a
    Series Number of the structure set's own. Frame of Reference module: the source's Frame of Reference
    UID and Position Reference Indicator, which the structure set shares.
    """
    ds.ReferringPhysicianName = source.get("ReferringPhysicianName", "")
    ds.AccessionNumber = source.get("AccessionNumber", "")
    ds.OperatorsName = ""
    ds.SeriesNumber = series_number(source, RTSTRUCT_SERIES_OFFSET)
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = source.get("PositionReferenceIndicator", "")


def series_number(source: Dataset, offset: int) -> int:
    """Series Number of a derived object: the source's (1 when it has none) plus the object's offset.

    The offsets (:data:`SEG_SERIES_OFFSET`, :data:`SR_SERIES_OFFSET`, :data:`RTSTRUCT_SERIES_OFFSET`)
    keep MetTrack's series apart from each other and from the site's in a PACS's series list.
    """
    try:
        base = int(source.get("SeriesNumber") or 1)
    except (TypeError, ValueError):
        base = 1
    return base + offset


def _structure_set_roi(number: int, name: str, frame_uid: str, provenance: str) -> Dataset:
    """One Structure Set ROI Sequence item (PS3.3 C.8.8.5)."""
    item = Dataset()
    item.ROINumber = number
    item.ReferencedFrameOfReferenceUID = frame_uid
    item.ROIName = name
    item.ROIGenerationAlgorithm = "AUTOMATIC"
    if provenance:
        item.ROIGenerationDescription = provenance[:64]  # LO
    return item


def _index_to_mm(labels: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """(matrix, origin) mapping continuous (column, row, slice) indices to patient mm (LPS)."""
    direction = np.asarray(labels.GetDirection(), dtype=float).reshape(3, 3)
    return direction * np.asarray(labels.GetSpacing(), dtype=float), np.asarray(
        labels.GetOrigin(), dtype=float
    )


def _contour_sequence(labels: sitk.Image, mask: np.ndarray, image_of_slice: Mapping[int, Dataset]) -> Any:
    """Contour Sequence (PS3.3 C.8.8.6) of one lesion: its voxel-edge outlines on every slice.

    Each 4-connected region of a slice is one CLOSED_PLANAR contour along its voxel edges, referencing
    the image of the slice, with its holes joined by keyhole bridges
    (:func:`segmentation.outlines.keyhole_outlines`: readers that OR the contours of a slice and readers
    that XOR them fill it alike).
    """
    from pydicom.sequence import Sequence as DicomSequence
    from pydicom.valuerep import format_number_as_ds

    to_mm, origin = _index_to_mm(labels)
    contours = DicomSequence()
    for k in np.flatnonzero(mask.any(axis=(1, 2))):
        image = image_of_slice[int(k)]
        for outline in keyhole_outlines(mask[k]):
            # pixel corners -> continuous (column, row, slice) index: corner (i, j) is (j - 0.5, i - 0.5)
            index = np.column_stack([outline[:, 1] - 0.5, outline[:, 0] - 0.5, np.full(len(outline), k)])
            points = index @ to_mm.T + origin
            referenced = Dataset()
            referenced.ReferencedSOPClassUID = image.SOPClassUID
            referenced.ReferencedSOPInstanceUID = image.SOPInstanceUID
            contour = Dataset()
            contour.ContourImageSequence = DicomSequence([referenced])
            contour.ContourGeometricType = "CLOSED_PLANAR"
            contour.NumberOfContourPoints = len(points)
            contour.ContourNumber = len(contours) + 1
            contour.ContourData = [format_number_as_ds(float(v)) for v in points.ravel()]
            contours.append(contour)
    return contours


def _rasterise_roi(labels: sitk.Image, contour_sequence: Any) -> np.ndarray:
    """Fill an ROI's contours as a (slices, rows, columns) mask, the way plastimatch does.

    Each contour goes to the slice its points lie on (contours off the slice grid are skipped); on each
    slice, voxel centres inside an odd number of its contours are in the ROI (even-odd rule: a contour
    inside another is a hole). Contours of fewer than 3 points enclose nothing.
    """
    to_mm, origin = _index_to_mm(labels)
    to_index = np.linalg.inv(to_mm)
    columns, rows, slices = labels.GetSize()
    by_slice: dict[int, list[np.ndarray]] = {}
    for contour in contour_sequence:
        points = np.reshape(np.asarray(contour.get("ContourData", []), dtype=float), (-1, 3))
        if len(points) < 3:
            continue
        index = (points - origin) @ to_index.T  # (column, row, slice)
        k = int(round(float(index[:, 2].mean())))
        if not 0 <= k < slices or np.abs(index[:, 2] - k).max() > 1e-2:
            continue
        by_slice.setdefault(k, []).append(index[:, [1, 0]])  # (row, column)
    mask = np.zeros((slices, rows, columns), dtype=bool)
    for k, polygons in by_slice.items():
        mask[k] = fill_even_odd(polygons, (rows, columns))
    return mask


def read_rtstruct(path: str | Path, series: LoadedSeries | str | Path) -> ContourSet:
    """Rasterise every ROI of an RTSTRUCT onto its series, as plastimatch and planning systems do.

    Every voxel whose centre lies inside the ROI's contours on its slice by the even-odd rule belongs
    to the ROI (see :func:`_rasterise_roi`); the RTSTRUCT's structure is checked with rt-utils.

    Args:
        path: The RTSTRUCT file.
        series: The series it references, loaded by :func:`segmentation.io.read_series` or its folder.

    Returns:
        The ROIs as a label image in the series geometry (a later ROI wins where ROIs overlap).

    Raises:
        ContourReadError: Not an RTSTRUCT, or it references images outside the series.
    """
    from rt_utils import RTStructBuilder

    try:
        ds = pydicom.dcmread(path)
        RTStructBuilder.validate_rtstruct(ds)
    except Exception as exc:  # rt-utils raises bare Exception
        raise ContourReadError(f"{Path(path).name} is not a valid RTSTRUCT ({exc}).") from exc
    series = _as_loaded(series)
    try:
        RTStructBuilder.validate_rtstruct_series_references(ds, list(series.source_datasets))
    except Exception as exc:  # rt-utils raises bare Exception
        raise ContourReadError(f"The RTSTRUCT does not belong to this series ({exc}).") from exc
    out = np.zeros(sitk.GetArrayViewFromImage(series.image).shape, dtype=np.uint16)
    names: dict[int, str] = {}
    colors: dict[int, tuple[int, int, int]] = {}
    roi_contours = {int(c.ReferencedROINumber): c for c in ds.ROIContourSequence}
    for value, roi in enumerate(ds.StructureSetROISequence, start=1):
        names[value] = str(roi.ROIName)
        roi_contour = roi_contours.get(int(roi.ROINumber))
        if roi_contour is None:
            continue
        out[_rasterise_roi(series.image, roi_contour.get("ContourSequence", []))] = value
        if "ROIDisplayColor" in roi_contour:
            colors[value] = tuple(int(c) for c in roi_contour.ROIDisplayColor)  # type: ignore[assignment]
    image = sitk.GetImageFromArray(out)
    image.CopyInformation(series.image)
    return ContourSet(labels=image, names=names, colors=colors)


# --- DICOM SEG -------------------------------------------------------------------------------------


def _frame_planes(
    datasets: Sequence[Dataset],
) -> list[tuple[Sequence[float], Sequence[float], Sequence[float]]]:
    """(position, orientation, pixel spacing) per source frame, in the order highdicom pairs frames."""
    if len(datasets) == 1 and int(datasets[0].get("NumberOfFrames", 1) or 1) > 1:
        ds = datasets[0]
        shared = ds.SharedFunctionalGroupsSequence[0]
        planes = []
        for item in ds.PerFrameFunctionalGroupsSequence:

            def group(name: str, item: Dataset = item) -> Dataset:
                return (item if name in item else shared)[name][0]

            planes.append(
                (
                    group("PlanePositionSequence").ImagePositionPatient,
                    group("PlaneOrientationSequence").ImageOrientationPatient,
                    group("PixelMeasuresSequence").PixelSpacing,
                )
            )
        return planes
    _require_headers(datasets, GEOMETRY_ATTRIBUTES)
    return [(ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.PixelSpacing) for ds in datasets]


def write_seg(
    labels: sitk.Image,
    source_datasets: SeriesLike,
    out_path: str | Path,
    *,
    lesion_names: Mapping[int, str],
    algorithm_name: str,
    algorithm_version: str,
    colors: Mapping[int, Sequence[int]] | None = None,
    series_description: str = "MetTrack lesions",
    algorithm_parameters: Mapping[str, str] | None = None,
    tracking_uids: Mapping[int, str] | None = None,
) -> Path:
    """Write a BINARY DICOM SEG with one segment per lesion, referencing the source images (highdicom).

    Args:
        labels: Lesion label image in the series' native geometry.
        source_datasets: The source series: single-frame datasets or one multi-frame dataset (headers
            suffice), their file paths, a series folder, or a :class:`~segmentation.io.LoadedSeries`.
        out_path: Output file.
        lesion_names: Label value -> Segment Label (e.g. ``"L1"``), also used as Tracking ID.
        algorithm_name: Algorithm Name, e.g. the model version's name.
        algorithm_version: Algorithm Version, e.g. the weights checksum or release.
        colors: Label value -> RGB (0-255); :data:`DEFAULT_COLORS` in label order otherwise.
        series_description: Series Description of the SEG.
        algorithm_parameters: Written as the Algorithm Parameters of every segment's algorithm
            identification (e.g. the full weights checksum, which Algorithm Version (LO, 64
            characters) cannot hold together with the version).
        tracking_uids: Label value -> Tracking UID of the lesion (the same at every visit, and in the
            SR: :func:`segmentation.sr.tracking_uid`); a new UID for lesions without one.

    Returns:
        The written path.

    Raises:
        ContourExportError: Bad label image, unnamed or empty lesions, or a label image not in the
            series geometry.
        MissingAttributeError: The source images lack an attribute the SEG must reference.
    """
    import highdicom as hd  # heavy, only needed here
    from pydicom.sr.codedict import codes

    arr = _label_array(labels)
    lesions = _checked_lesions(arr, lesion_names)
    datasets = _series_datasets(source_datasets)
    _require_headers(datasets, ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"))
    planes = _frame_planes(datasets)
    _check_plane_geometry(
        labels, datasets[0], [float(v) for v in planes[0][1]], [float(v) for v in planes[0][2]]
    )
    slice_of = [_slice_index(labels, position) for position, _, _ in planes]
    if -1 in slice_of:
        raise ContourExportError(
            "The label image's slices do not coincide with the source images; map the prediction back to "
            "the series geometry first."
        )
    # label-map style input: segment numbers must run 1..n, so renumber the lesions through a lookup table
    # (a stacked one-channel-per-lesion array would be n times larger and several times slower)
    lookup = np.zeros(int(arr.max()) + 1, dtype=np.uint16)
    lookup[lesions] = np.arange(1, len(lesions) + 1)
    frames = lookup[arr[slice_of]]  # frame i of the SEG input pairs with source frame/image i
    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name,
        family=codes.cid7162.ArtificialIntelligence,
        version=algorithm_version,
        parameters=dict(algorithm_parameters) if algorithm_parameters else None,
    )
    descriptions = []
    for number, value in enumerate(lesions, start=1):
        rgb = colors.get(value) if colors else None
        rgb = rgb or DEFAULT_COLORS[(number - 1) % len(DEFAULT_COLORS)]
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=lesion_names[value],
                segmented_property_category=hd.sr.CodedConcept(_CATEGORY[0], _CATEGORY[1], _CATEGORY[2]),
                segmented_property_type=hd.sr.CodedConcept(_TYPE[0], _TYPE[1], _TYPE[2]),
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
                tracking_id=lesion_names[value],
                tracking_uid=(tracking_uids or {}).get(value) or hd.UID(),
                display_color=hd.color.CIELabColor.from_rgb(*(int(c) for c in rgb)),
            )
        )
    with warnings.catch_warnings():
        # de-identified sources carry a subject id as Patient Name; highdicom warns it is one component
        warnings.simplefilter("ignore", UserWarning)
        seg = hd.seg.Segmentation(
            source_images=datasets,
            pixel_array=frames,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(),
            series_number=series_number(datasets[0], SEG_SERIES_OFFSET),
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer=MANUFACTURER,
            manufacturer_model_name=algorithm_name,
            software_versions=algorithm_version,
            device_serial_number="0",
            series_description=series_description,
        )
    target = Path(out_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if algorithm_parameters and any(not str(v).isascii() for v in algorithm_parameters.values()):
        seg.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: the label's dash is not in Latin-1
    seg.save_as(target)
    return target


def read_seg(path: str | Path, series: LoadedSeries | str | Path) -> ContourSet:
    """Read a DICOM SEG back onto its source series (highdicom).

    Args:
        path: The SEG file.
        series: The source series, loaded by :func:`segmentation.io.read_series` or its folder/file.

    Returns:
        Segments as a label image (value = segment number) in the series geometry.

    Raises:
        ContourReadError: Not a SEG, or it does not reference this series.
    """
    import highdicom as hd

    try:
        seg = hd.seg.segread(path)
    except Exception as exc:  # highdicom raises ValueError/AttributeError/TypeError for non-SEG input
        raise ContourReadError(f"{Path(path).name} is not a readable DICOM SEG ({exc}).") from exc
    series = _as_loaded(series)
    datasets = list(series.source_datasets)
    referenced = {str(item.SeriesInstanceUID) for item in seg.get("ReferencedSeriesSequence", [])}
    if str(datasets[0].SeriesInstanceUID) not in referenced:
        raise ContourReadError("The SEG does not reference this series (its Referenced Series differ).")
    planes = _frame_planes(datasets)
    try:
        if len(datasets) == 1 and int(datasets[0].get("NumberOfFrames", 1) or 1) > 1:
            pixels = seg.get_pixels_by_source_frame(
                source_sop_instance_uid=str(datasets[0].SOPInstanceUID),
                source_frame_numbers=list(range(1, len(planes) + 1)),
                combine_segments=True,
                assert_missing_frames_are_empty=True,  # empty frames are omitted when writing
            )
        else:
            pixels = seg.get_pixels_by_source_instance(
                source_sop_instance_uids=[str(ds.SOPInstanceUID) for ds in datasets],
                combine_segments=True,
                assert_missing_frames_are_empty=True,  # empty frames are omitted when writing
            )
    except (ValueError, KeyError, AttributeError) as exc:
        raise ContourReadError(f"The SEG does not reference this series ({exc}).") from exc
    slice_of = [_slice_index(series.image, position) for position, _, _ in planes]
    out = np.zeros(sitk.GetArrayViewFromImage(series.image).shape, dtype=np.uint16)
    out[slice_of] = pixels.astype(np.uint16)
    names: dict[int, str] = {}
    colors: dict[int, tuple[int, int, int]] = {}
    for number in seg.segment_numbers:
        description = seg.get_segment_description(number)
        names[int(number)] = str(description.segment_label)
        if "RecommendedDisplayCIELabValue" in description:
            lab = hd.color.CIELabColor.from_dicom_value(description.RecommendedDisplayCIELabValue)
            red, green, blue = lab.to_rgb(clip=True)
            colors[int(number)] = (int(red), int(green), int(blue))
    image = sitk.GetImageFromArray(out)
    image.CopyInformation(series.image)
    return ContourSet(labels=image, names=names, colors=colors)
