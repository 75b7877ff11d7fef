"""Images for the viewer and the report: cached volumes, NIfTI for the browser viewer (Niivue), and for
the report's key images window/level, a small PNG encoder and contour edges.

Volumes are reoriented to LPS on load, so slice ``k`` of the cached array is always an axial slice.

Volumes and label masks are read once with SimpleITK and kept in a small per-process LRU cache keyed by
file name and modification time, so the viewer's files of a visit and the report's key images cost array
operations, not repeated NIfTI reads.

Two visits of a patient registered to one common space (``ImagingSeries.registration``, stored by the
analysis stage) are related by :func:`pair_transform`, with which :func:`resample_onto` shows an earlier
visit on the current visit's grid (``trials.views.registered``).
"""

from __future__ import annotations

import gzip
import struct
import tempfile
import threading
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from django.core.files.storage import default_storage
from numpy.typing import NDArray

from rano.errors import MatchError
from rano.match import transform_from_parameters
from trials.models import ImagingSeries
from trials.storage import read_image

#: Volumes kept per process (the visit, its baseline and previous visit, and their masks).
_CACHE_SIZE = 6


class SliceOutOfRangeError(ValueError):
    """The requested slice index lies outside the volume."""


@dataclass(frozen=True)
class CachedVolume:
    """A volume as a (z, y, x) array with its geometry and a default window."""

    array: NDArray[np.generic]
    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float]
    direction: tuple[float, ...]
    default_window: float
    default_level: float

    @property
    def size(self) -> tuple[int, int, int]:
        """(x, y, z) voxel counts, SimpleITK order."""
        z, y, x = self.array.shape
        return (x, y, z)

    def index_to_physical(self) -> list[list[float]]:
        """3x4 affine mapping a voxel index (i, j, k, 1) to physical mm (LPS)."""
        direction = np.array(self.direction).reshape(3, 3)
        linear = direction @ np.diag(self.spacing_mm)
        return np.hstack([linear, np.array(self.origin_mm).reshape(3, 1)]).tolist()

    def physical_to_index(self) -> list[list[float]]:
        """3x4 affine mapping a physical point (x, y, z, 1) in mm to a continuous voxel index."""
        direction = np.array(self.direction).reshape(3, 3)
        inverse = np.linalg.inv(direction @ np.diag(self.spacing_mm))
        return np.hstack([inverse, (-inverse @ np.array(self.origin_mm)).reshape(3, 1)]).tolist()


_lock = threading.Lock()
_cache: OrderedDict[tuple[str, float, bool], CachedVolume] = OrderedDict()


def _mtime(name: str) -> float:
    try:
        return default_storage.get_modified_time(name).timestamp()
    except (NotImplementedError, OSError):
        return 0.0


def load_volume(name: str, *, labels: bool = False) -> CachedVolume:
    """Read (or fetch from the cache) a stored volume or label mask.

    Args:
        name: storage name of the NIfTI (e.g. ``series.volume_file.name``).
        labels: a label mask (kept as integers, no window) rather than an intensity volume.

    Raises:
        MissingImageError: nothing is stored under ``name``.
    """
    key = (name, _mtime(name), labels)
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    # Sagittal or coronal acquisitions (a 3D T1 is often sagittal) are shown axially: DICOMOrient to LPS
    # only permutes and flips axes (no resampling), so masks reoriented the same way stay aligned.
    # Rows then run anterior -> posterior and columns patient right -> left (radiological view).
    image = sitk.DICOMOrient(read_image(name), "LPS")
    if labels:
        # Native pixel types are kept (int16 MR, uint8/uint16 labels): a 512 x 512 x 300 series stays
        # 150 MB in the cache instead of 300 MB as float32; slices are converted one at a time.
        array: NDArray[Any] = sitk.GetArrayFromImage(image)
        window, level = 1.0, 0.5
    else:
        array = sitk.GetArrayFromImage(image)
        foreground = array[array > 0]
        sample = foreground if foreground.size else array.ravel()
        sample = sample[:: max(1, sample.size // 1_000_000)]  # a million voxels give the percentiles
        # Robust default window: 0.5-99.5 percentiles of the signal ignore air and a few hot voxels.
        low, high = (float(v) for v in np.percentile(sample, [0.5, 99.5])) if sample.size else (0.0, 1.0)
        window, level = max(high - low, 1e-3), (high + low) / 2
    volume = CachedVolume(
        array=array,
        spacing_mm=tuple(float(v) for v in image.GetSpacing()),  # type: ignore[arg-type]
        origin_mm=tuple(float(v) for v in image.GetOrigin()),  # type: ignore[arg-type]
        direction=tuple(float(v) for v in image.GetDirection()),
        default_window=window,
        default_level=level,
    )
    with _lock:
        _cache[key] = volume
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return volume


def clear_cache() -> None:
    """Forget every cached volume (tests, or after files are replaced in place)."""
    with _lock:
        _cache.clear()


def window_slice(
    volume: CachedVolume, k: int, window: float | None, level: float | None
) -> NDArray[np.uint8]:
    """Axial slice ``k`` (index along z) mapped to 0-255 by window/level.

    Raises:
        SliceOutOfRangeError: k outside the volume.
    """
    depth = volume.array.shape[0]
    if not 0 <= k < depth:
        raise SliceOutOfRangeError(f"Slice {k} is outside 0-{depth - 1}.")
    window = volume.default_window if window is None or window <= 0 else window
    level = volume.default_level if level is None else level
    low = level - window / 2
    scaled = (volume.array[k].astype(np.float32) - low) * (255.0 / window)
    return np.clip(scaled, 0, 255).astype(np.uint8)


def encode_png_gray(pixels: NDArray[np.uint8]) -> bytes:
    """Encode a 2D uint8 array as an 8-bit greyscale PNG (ISO/IEC 15948: IHDR, one IDAT, IEND).

    Raises:
        ValueError: not a 2D uint8 array.
    """
    if pixels.ndim != 2 or pixels.dtype != np.uint8:
        raise ValueError(f"A 2D uint8 array is needed, got {pixels.ndim}D {pixels.dtype}.")
    height, width = pixels.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    # Each scanline starts with filter type 0 (None); zlib level 6 is a good speed/size balance here.
    raw = np.hstack([np.zeros((height, 1), dtype=np.uint8), np.ascontiguousarray(pixels)]).tobytes()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )


def contour_segments(mask: NDArray[np.bool_]) -> list[list[int]]:
    """Boundary of a 2D mask as pixel-edge segments ``[x0, y0, x1, y1]`` (pixel corners, x = column).

    Every edge between a mask pixel and a non-mask pixel is one unit segment, so the drawn outline
    follows the voxels exactly (what was measured is what is shown).
    """
    padded = np.pad(mask.astype(bool), 1)
    segments: list[list[int]] = []
    # Horizontal edges: a change between rows y-1 and y along column x gives the edge at y.
    ys, xs = np.nonzero(padded[1:, 1:-1] != padded[:-1, 1:-1])
    segments.extend([int(x), int(y), int(x) + 1, int(y)] for y, x in zip(ys, xs, strict=True))
    ys, xs = np.nonzero(padded[1:-1, 1:] != padded[1:-1, :-1])
    segments.extend([int(x), int(y), int(x), int(y) + 1] for y, x in zip(ys, xs, strict=True))
    return segments


def physical_to_index(volume: CachedVolume, point_mm: list[float]) -> list[float]:
    """Continuous voxel index (i, j, k) of a physical point in mm."""
    affine = np.array(volume.physical_to_index())
    return (affine[:, :3] @ np.asarray(point_mm, dtype=float) + affine[:, 3]).tolist()


def display_index_to_native(name: str, index_ijk: tuple[int, int, int]) -> tuple[int, int, int]:
    """Map a voxel index clicked in the viewer (LPS-reoriented grid) to the stored volume's own index.

    The review services work on the stored (native) grid; the viewer shows it reoriented to axial.

    Raises:
        MissingImageError: nothing is stored under ``name``.
    """
    volume = load_volume(name)
    affine = np.array(volume.index_to_physical())
    point = affine[:, :3] @ np.asarray(index_ijk, dtype=float) + affine[:, 3]
    native = read_image(name)
    i, j, k = native.TransformPhysicalPointToIndex([float(v) for v in point])
    return (int(i), int(j), int(k))


def display_mask_to_native(name: str, array_zyx: NDArray[np.bool_]) -> sitk.Image:
    """A mask drawn in the viewer (a (z, y, x) array on the LPS-reoriented grid of the stored volume
    ``name``) as a binary UInt8 image on the stored volume's own grid.

    ``DICOMOrient`` only permutes and flips axes, so every voxel centre of one grid is a voxel centre of
    the other and nearest-neighbour resampling moves voxels without changing any.

    Raises:
        MissingImageError: nothing is stored under ``name``.
        ValueError: the array is not on the viewer's grid of ``name``.
    """
    volume = load_volume(name)
    if array_zyx.shape != volume.array.shape:
        raise ValueError(f"A mask of shape {volume.array.shape} is needed, got {array_zyx.shape}.")
    drawn = _image_of(volume, array_zyx.astype(np.uint8))
    native = read_image(name)
    return sitk.Resample(drawn, native, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


def nifti_bytes(array: NDArray[Any], like: CachedVolume, *, compress: bool) -> bytes:
    """``array`` (z, y, x, on ``like``'s grid) as NIfTI-1 bytes with ``like``'s geometry, gzipped or not.

    The viewer (Niivue) reads the file and shows the voxels in the same (LPS-reoriented) grid as the
    cached volume, so a voxel index it reports is an index of that grid (``display_index_to_native``).
    SimpleITK writes the header (LPS -> RAS in the qform/sform) rather than a hand-written one; it writes
    to files only, hence the temporary directory. Its own gzip is slow (2 s for a 256 x 256 x 160 float
    volume, level fixed), so the file is written plain and, for label maps (mostly zeros: 100 times
    smaller), gzipped here at level 1; an image is served plain (MR noise gains 2x at most, for 0.5-2.5 s).
    """
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing(like.spacing_mm)
    image.SetOrigin(like.origin_mm)
    image.SetDirection(like.direction)
    with tempfile.TemporaryDirectory(prefix="mettrack-view-") as folder:
        path = Path(folder) / "view.nii"
        sitk.WriteImage(image, str(path), useCompression=False)
        data = path.read_bytes()
    return gzip.compress(data, compresslevel=1, mtime=0) if compress else data


def segment_voxels(
    a: list[float], b: list[float]
) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.intp]]:
    """Voxels (z, y, x index arrays) on the straight segment between continuous indices ``a`` and ``b``.

    Sampled every quarter voxel and rounded: a connected line one voxel wide, which a label map can show.
    """
    start, end = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    steps = int(np.ceil(np.linalg.norm(end - start) * 4)) + 1
    points = np.rint(start + np.linspace(0.0, 1.0, steps)[:, None] * (end - start)).astype(np.intp)
    return points[:, 2], points[:, 1], points[:, 0]


@dataclass(frozen=True)
class PairTransform:
    """Affine map of physical points (mm, LPS) of the current series to the earlier series: ``A p + b``."""

    matrix: NDArray[np.float64]
    offset: NDArray[np.float64]

    def to_earlier(self) -> sitk.AffineTransform:
        """The SimpleITK transform that resamples the earlier series onto the current grid."""
        transform = sitk.AffineTransform(3)
        transform.SetMatrix([float(v) for v in self.matrix.ravel()])
        transform.SetTranslation([float(v) for v in self.offset])
        return transform

    def to_current(self, point_mm: list[float]) -> list[float]:
        """A point of the earlier series (e.g. a caliper end) in the current series' space."""
        inverse = np.linalg.inv(self.matrix)
        return (inverse @ (np.asarray(point_mm, dtype=float) - self.offset)).tolist()


def _affine(series: ImagingSeries) -> tuple[int, NDArray[np.float64], NDArray[np.float64]] | None:
    """(common-space series id, matrix, offset) of the series' stored registration, or None."""
    stored = series.registration
    if not isinstance(stored, dict) or stored.get("moving_series_id") != series.pk:
        return None
    fixed = stored.get("fixed_series_id")
    if not isinstance(fixed, int):
        return None
    try:
        transform = transform_from_parameters(stored)
    except (MatchError, TypeError, ValueError):
        return None
    return fixed, np.array(transform.GetMatrix()).reshape(3, 3), np.array(transform.GetTranslation())


def pair_transform(current: ImagingSeries, earlier: ImagingSeries) -> PairTransform | None:
    """Current-series points -> earlier-series points, or None when the two were not registered to one
    common space (then only scanner coordinates relate them)."""
    if current.timepoint.patient_id != earlier.timepoint.patient_id:
        return None
    a, b = _affine(current), _affine(earlier)
    if a is None or b is None or a[0] != b[0]:
        return None
    # p_earlier = A_e q + b_e with q = A_c^-1 (p_current - b_c): the common-space point q of p_current.
    (_, a_c, b_c), (_, a_e, b_e) = a, b
    matrix = a_e @ np.linalg.inv(a_c)
    return PairTransform(matrix=matrix, offset=b_e - matrix @ b_c)


def _image_of(volume: CachedVolume, array: NDArray[Any] | None = None) -> sitk.Image:
    """``array`` (default the volume's own) as an image with the volume's (LPS) geometry."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.array if array is None else array))
    image.SetSpacing(volume.spacing_mm)
    image.SetOrigin(volume.origin_mm)
    image.SetDirection(volume.direction)
    return image


def resample_onto(
    array: NDArray[Any],
    earlier: CachedVolume,
    current: CachedVolume,
    transform: PairTransform,
    *,
    labels: bool,
) -> NDArray[Any]:
    """``array`` on the earlier grid, resampled onto the current grid (z, y, x); 0 outside the earlier scan.

    Args:
        labels: a label map (nearest neighbour, integer values kept) rather than an image (linear).
    """
    reference = sitk.Image(list(current.size), sitk.sitkUInt8)
    reference.SetSpacing(current.spacing_mm)
    reference.SetOrigin(current.origin_mm)
    reference.SetDirection(current.direction)
    moving = _image_of(earlier, array)
    resampled = sitk.Resample(
        moving if labels else sitk.Cast(moving, sitk.sitkFloat32),
        reference,
        transform.to_earlier(),
        sitk.sitkNearestNeighbor if labels else sitk.sitkLinear,
        0.0,
    )
    return sitk.GetArrayFromImage(resampled)
