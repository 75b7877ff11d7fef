"""Exceptions raised at the imaging boundary (reading, validating, de-identifying and writing images).

Every class derives from :class:`ImagingError`, whose ``user_message`` is written for a site user (a
radiographer or study coordinator uploading a scan), not for a developer: it says what is wrong with
the upload and, where possible, what to send instead. The pipeline stores that text on the failed job
and shows it in the dashboard and the API, so it never quotes patient attributes (name, IDs, dates of
birth); it may quote UIDs, geometry, cleaned series descriptions (segmentation.descriptors: MR terms only)
and the names of files inside the upload.

Invalid input is a permanent failure: none of these errors is worth retrying.
"""

from __future__ import annotations


class ImagingError(Exception):
    """Base class of every imaging-boundary error.

    Args:
        user_message: A complete sentence a site user understands, saying what is wrong and what to do.
    """

    def __init__(self, user_message: str) -> None:
        super().__init__(user_message)
        self.user_message = user_message


# --- upload archives -------------------------------------------------------------------------------


class ArchiveError(ImagingError):
    """The uploaded zip archive cannot be used."""


class CorruptArchiveError(ArchiveError):
    """The upload is not a readable zip archive."""


class UnsafeArchiveError(ArchiveError):
    """The zip archive contains something that must never be unpacked on a server."""


class PathTraversalError(UnsafeArchiveError):
    """A member name is absolute or climbs out of the extraction folder (``../``)."""


class SymlinkInArchiveError(UnsafeArchiveError):
    """A member is a symbolic link (it could point anywhere on the server)."""


class TooManyFilesError(UnsafeArchiveError):
    """The archive holds more members than any single MR series needs."""


class ArchiveTooLargeError(UnsafeArchiveError):
    """The archive unpacks to too many bytes, or compresses suspiciously well (a zip bomb)."""


# --- what the upload contains ----------------------------------------------------------------------


class InputNotFoundError(ImagingError):
    """The path given to the reader does not exist."""


class NotDicomError(ImagingError):
    """The upload contains no DICOM image (and is not a NIfTI file either)."""


class CorruptDicomError(ImagingError):
    """DICOM files of the upload are damaged (cut short, unreadable header or pixel data).

    Attributes:
        files: Names of the damaged files inside the upload.
    """

    def __init__(self, user_message: str, files: list[str]) -> None:
        super().__init__(user_message)
        self.files = files


class NotMRError(ImagingError):
    """The series is DICOM but not magnetic resonance (e.g. CT, PET, an RTSTRUCT)."""


class MultipleSeriesError(ImagingError):
    """The upload holds several image series and none was chosen.

    Attributes:
        series: One ``(series_instance_uid, series_description, modality, number_of_files)`` tuple
            per series found, so a caller can ask the user which one to use.
    """

    def __init__(self, user_message: str, series: list[tuple[str, str, str, int]]) -> None:
        super().__init__(user_message)
        self.series = series


class SeriesNotFoundError(ImagingError):
    """The series UID asked for is not in the upload."""


class UnsupportedImageError(ImagingError):
    """The series is MR but of a kind the pipeline cannot use (colour, 4D, unsupported encoding)."""


class MissingAttributeError(ImagingError):
    """A DICOM attribute needed to place the image in space or to write contours back is absent.

    Attributes:
        keywords: The missing attribute keywords (e.g. ``["StudyTime", "StudyID"]``).
    """

    def __init__(self, user_message: str, keywords: list[str]) -> None:
        super().__init__(user_message)
        self.keywords = keywords


# --- geometry --------------------------------------------------------------------------------------


class GeometryError(ImagingError):
    """The slices of the series do not form one regular 3D volume."""


class MissingSlicesError(GeometryError):
    """There is a gap in the slice positions (a slice was not exported or not uploaded)."""


class DuplicateSliceError(GeometryError):
    """Two slices sit at the same position (often two series or two echoes mixed together)."""


class InconsistentOrientationError(GeometryError):
    """Slices of one series have different Image Orientation (Patient)."""


class InconsistentSpacingError(GeometryError):
    """Slices of one series have different Pixel Spacing or matrix size."""


class SingleSliceError(GeometryError):
    """The upload is a single 2D slice, not a 3D volume."""


class AbsurdDimensionsError(GeometryError):
    """Matrix size, slice count or voxel spacing are outside anything a brain MRI can have."""


# --- writing ---------------------------------------------------------------------------------------


class ImageWriteError(ImagingError):
    """An image or series cannot be written as asked (e.g. an unsupported pixel type)."""


class ContourExportError(ImagingError):
    """RTSTRUCT or DICOM SEG output cannot be made for this label image and series."""


class ContourReadError(ImagingError):
    """An RTSTRUCT or DICOM SEG file cannot be read back against its series."""


class DeidentificationError(ImagingError):
    """A dataset cannot be de-identified (e.g. an empty subject id)."""


class RegionError(ImagingError):
    """A reader's region edit (a seed to grow from, two seeds to split at) gives no usable lesion."""


# --- model directories (raised by segmentation.model; here so that callers need not import torch) ----


class ModelError(ValueError):
    """A model directory or config cannot be used."""


class ModelConfigError(ModelError):
    """``config.json`` is missing, unreadable or incomplete."""


class ModelIntegrityError(ModelError):
    """``weights.pt`` does not match the sha256 recorded in ``config.json``."""


class ModelWeightsMismatchError(ModelError):
    """The weights do not fit the architecture in the config (missing/extra/wrong-size tensors)."""


class StaleExportError(ModelIntegrityError):
    """The ONNX export was made from other weights than the model directory's ``weights.pt`` now holds."""


class BackendUnavailableError(ModelError):
    """The inference backend asked for cannot run this model here (no export, no runtime)."""
