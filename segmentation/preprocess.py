"""Preprocessing stages of the segmentation model, as in a MONAI bundle.

Stages, in order, each a function whose parameters live in the model's ``config.json`` under
``preprocessing`` (see :class:`PreprocessConfig`):

1. :func:`reorient` to a canonical orientation (``RAS`` by default);
2. :func:`resample_to_spacing` at the model's voxel size;
3. :func:`n4_bias_correction` (SimpleITK N4 fitted on a shrunk image, so it takes seconds);
4. :func:`head_mask` + :func:`crop_to_box` to the head, with a margin;
5. :func:`normalise_intensity`: percentiles inside the head to 0-255 (the paper's range), background 0,
   then divided by ``input_divisor`` for the network.

:func:`preprocess` runs them all and returns a :class:`PreprocessedImage` that remembers the geometry of
every step, so :func:`to_native` can map a model-space probability map back onto the native grid.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from segmentation.errors import ImagingError


class PreprocessError(ImagingError, ValueError):
    """The image cannot be preprocessed (empty, no head found, degenerate geometry).

    An :class:`~segmentation.errors.ImagingError`: its message is written for the person who sent the image.
    """


class EmptyImageError(PreprocessError):
    """The image holds no signal (all voxels equal, e.g. all zeros): there is no brain to segment."""


@dataclass(frozen=True)
class PreprocessConfig:
    """Parameters of every preprocessing stage (``config.json`` -> ``preprocessing``).

    Attributes:
        orientation: Canonical orientation code for :func:`SimpleITK.DICOMOrient` (``RAS``: i -> right,
            j -> anterior, k -> superior).
        spacing_mm: Model voxel size (x, y, z) in mm.
        n4_enabled: Run N4 bias-field correction.
        n4_shrink_factor: Downsampling factor of the image N4 is fitted on (speed).
        n4_iterations: Iterations per fitting level.
        n4_convergence_threshold: N4 convergence threshold.
        crop_margin_mm: Margin kept around the head mask when cropping (mm).
        head_threshold_fraction: Fraction of the Otsu threshold that separates head from air.
        lower_percentile: Intensity percentile (inside the head) mapped to 0.
        upper_percentile: Intensity percentile (inside the head) mapped to 255.
        input_divisor: The 0-255 image is divided by this before entering the network.
    """

    orientation: str = "RAS"
    spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    n4_enabled: bool = True
    n4_shrink_factor: int = 4
    n4_iterations: tuple[int, ...] = (30, 30, 20)
    n4_convergence_threshold: float = 1e-3
    crop_margin_mm: float = 4.0
    head_threshold_fraction: float = 0.5
    lower_percentile: float = 0.5
    upper_percentile: float = 99.9
    input_divisor: float = 255.0

    def __post_init__(self) -> None:
        if len(self.spacing_mm) != 3 or min(self.spacing_mm) <= 0:
            raise PreprocessError(f"spacing_mm must be three positive numbers, got {self.spacing_mm}")
        code = str(self.orientation).upper()
        axis_of = {"R": 0, "L": 0, "A": 1, "P": 1, "S": 2, "I": 2}
        if len(code) != 3 or sorted(axis_of.get(c, -1) for c in code) != [0, 1, 2]:
            raise PreprocessError(
                f"orientation must name each axis once (R/L, A/P, S/I), e.g. RAS or LPS; got {self.orientation!r}"
            )
        if self.n4_shrink_factor < 1:
            raise PreprocessError(f"n4_shrink_factor must be >= 1, got {self.n4_shrink_factor}")
        if not 0 <= self.lower_percentile < self.upper_percentile <= 100:
            raise PreprocessError("need 0 <= lower_percentile < upper_percentile <= 100")
        if self.input_divisor <= 0:
            raise PreprocessError(f"input_divisor must be > 0, got {self.input_divisor}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PreprocessConfig:
        """Build from the ``preprocessing`` mapping of a model config (unknown keys are refused)."""
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise PreprocessError(f"unknown preprocessing keys: {sorted(unknown)}")
        values = dict(data)
        for key in ("spacing_mm", "n4_iterations"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping."""
        d = asdict(self)
        d["spacing_mm"] = list(self.spacing_mm)
        d["n4_iterations"] = list(self.n4_iterations)
        return d


# --------------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------------


def reorient(image: sitk.Image, orientation: str = "RAS") -> sitk.Image:
    """Permute/flip the axes so the image has the canonical ``orientation`` (no resampling)."""
    return sitk.DICOMOrient(image, orientation)


def resample_to_spacing(
    image: sitk.Image, spacing_mm: tuple[float, float, float], interpolator: int = sitk.sitkLinear
) -> sitk.Image:
    """Resample to ``spacing_mm`` (x, y, z), covering the same physical extent; float32 output.

    Skipped (a float32 copy is returned) when the spacing already matches within 1 %.
    """
    old_spacing = np.asarray(image.GetSpacing(), dtype=float)
    new_spacing = np.asarray(spacing_mm, dtype=float)
    if np.allclose(old_spacing, new_spacing, rtol=0.01):
        return sitk.Cast(image, sitk.sitkFloat32)
    old_size = np.asarray(image.GetSize(), dtype=float)
    new_size = np.maximum(np.round(old_size * old_spacing / new_spacing), 1).astype(int)
    # Keep the physical centre of the field of view where it was.
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    old_center = np.asarray(image.GetOrigin()) + direction @ ((old_size - 1) * old_spacing / 2)
    new_origin = old_center - direction @ ((new_size - 1) * new_spacing / 2)
    return sitk.Resample(
        image,
        [int(s) for s in new_size],
        sitk.Transform(),
        interpolator,
        [float(v) for v in new_origin],
        [float(v) for v in new_spacing],
        image.GetDirection(),
        0.0,
        sitk.sitkFloat32,
    )


def head_mask(image: sitk.Image, threshold_fraction: float = 0.5) -> sitk.Image:
    """Head (or brain, for skull-stripped input) mask: Otsu threshold x ``threshold_fraction``,
    largest connected component, holes filled slice by slice and in 3D.

    Raises:
        EmptyImageError: When the image is constant (e.g. all zeros).
        PreprocessError: When nothing above the threshold is found.
    """
    arr = sitk.GetArrayViewFromImage(image)
    lo, hi = float(arr.min()), float(arr.max())
    if not np.isfinite(lo) or not np.isfinite(hi) or hi - lo <= 0:
        raise EmptyImageError(f"the image is constant ({lo:g} everywhere): there is no head to segment")
    otsu = sitk.OtsuThresholdImageFilter()
    otsu.SetInsideValue(0)
    otsu.SetOutsideValue(1)
    otsu.Execute(sitk.Cast(image, sitk.sitkFloat32))
    threshold = lo + (otsu.GetThreshold() - lo) * threshold_fraction
    # Otsu can split a large, smooth background instead of head vs air; never go below 5 % of the
    # bright end, which is still far under any tissue (CSF on T1 is ~20 % of white matter).
    p99 = float(np.percentile(arr[:: max(1, arr.shape[0] // 32)], 99.0))
    threshold = max(threshold, lo + 0.05 * (p99 - lo))
    fg = np.asarray(arr > threshold)
    labels, n = ndi.label(fg)
    if n == 0:
        raise PreprocessError("no head found above the background threshold")
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    mask = labels == int(np.argmax(sizes))
    # Pad before closing: scipy erodes from a zero border, which would eat a head touching the edge.
    mask = ndi.binary_closing(np.pad(mask, 2), iterations=2)[2:-2, 2:-2, 2:-2]
    mask = ndi.binary_fill_holes(mask)
    out = sitk.GetImageFromArray(mask.astype(np.uint8))
    out.CopyInformation(image)
    return out


def n4_bias_correction(
    image: sitk.Image,
    mask: sitk.Image | None = None,
    shrink_factor: int = 4,
    iterations: tuple[int, ...] = (30, 30, 20),
    convergence_threshold: float = 1e-3,
) -> sitk.Image:
    """N4 bias-field correction, fitted on the image shrunk by ``shrink_factor`` for speed.

    The bias field is fitted on the shrunk image, then evaluated at full resolution with
    ``GetLogBiasFieldAsImage`` and divided out; the result is float32.
    """
    img = sitk.Cast(image, sitk.sitkFloat32)
    # N4 works on positive intensities: shift so the minimum is 1.
    arr_min = float(sitk.GetArrayViewFromImage(img).min())
    if arr_min < 1.0:
        img = img + (1.0 - arr_min)
    if mask is None:
        mask = head_mask(img)
    shrink = [int(shrink_factor)] * 3
    small = sitk.Shrink(img, shrink)
    small_mask = sitk.Shrink(mask, shrink)
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations([int(i) for i in iterations])
    corrector.SetConvergenceThreshold(float(convergence_threshold))
    corrector.Execute(small, small_mask)
    log_bias = corrector.GetLogBiasFieldAsImage(img)
    corrected = img / sitk.Exp(log_bias)
    if arr_min < 1.0:
        corrected = corrected - (1.0 - arr_min)
    return sitk.Cast(corrected, sitk.sitkFloat32)


@dataclass(frozen=True)
class CropBox:
    """Index box of a crop: ``start`` (x, y, z) and ``size`` (x, y, z) in the uncropped image."""

    start: tuple[int, int, int]
    size: tuple[int, int, int]


def head_box(mask: sitk.Image, margin_mm: float) -> CropBox:
    """Bounding box of the mask, grown by ``margin_mm`` and clipped to the image."""
    arr = sitk.GetArrayViewFromImage(mask)
    nz = np.nonzero(arr)
    if len(nz[0]) == 0:
        raise PreprocessError("empty head mask: nothing to crop to")
    lo_zyx = np.array([a.min() for a in nz])
    hi_zyx = np.array([a.max() for a in nz]) + 1
    margin = np.ceil(margin_mm / np.asarray(mask.GetSpacing())[::-1]).astype(int)
    lo_zyx = np.maximum(lo_zyx - margin, 0)
    hi_zyx = np.minimum(hi_zyx + margin, np.asarray(arr.shape))
    start = tuple(int(v) for v in lo_zyx[::-1])
    size = tuple(int(v) for v in (hi_zyx - lo_zyx)[::-1])
    return CropBox(start=start, size=size)  # type: ignore[arg-type]


def crop_to_box(image: sitk.Image, box: CropBox) -> sitk.Image:
    """Crop (keeping physical positions) to ``box``."""
    return sitk.RegionOfInterest(image, list(box.size), list(box.start))


def normalise_intensity(
    image: sitk.Image,
    mask: sitk.Image,
    lower_percentile: float = 0.5,
    upper_percentile: float = 99.9,
) -> np.ndarray:
    """Map the ``[lower, upper]`` percentiles inside ``mask`` to 0-255 (clipped); background set to 0.

    Returns:
        float32 array (z, y, x) in 0-255.

    Raises:
        EmptyImageError: When the masked intensities have no spread.
    """
    arr = sitk.GetArrayFromImage(image).astype(np.float32)
    m = sitk.GetArrayViewFromImage(mask) > 0
    values = arr[m]
    if values.size == 0:
        raise EmptyImageError("the head mask is empty: no brain to normalise")
    lo, hi = np.percentile(values, [lower_percentile, upper_percentile])
    if hi - lo <= 0:
        raise EmptyImageError(f"no intensity spread inside the head ({lo:g} .. {hi:g})")
    out = np.clip((arr - lo) / (hi - lo), 0.0, 1.0) * 255.0
    out[~m] = 0.0  # background removed, as in the paper
    return out.astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Whole pipeline
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreprocessedImage:
    """The model input and everything needed to map outputs back.

    Attributes:
        array: Network input, float32 (z, y, x), already divided by ``input_divisor``.
        model_space: The cropped model-space image (geometry of ``array``), float32, 0-255.
        resampled_reference: The uncropped, reoriented, resampled grid (geometry only matters).
        crop: Where ``array`` sits in ``resampled_reference``.
        native_reference: The input image's grid (what outputs are mapped back to).
        head_mask: Head mask on the ``model_space`` grid (uint8).
        timings_s: Seconds per stage.
    """

    array: np.ndarray
    model_space: sitk.Image
    resampled_reference: sitk.Image
    crop: CropBox
    native_reference: sitk.Image
    head_mask: sitk.Image
    timings_s: dict[str, float] = field(default_factory=dict)


def _reference_only(image: sitk.Image) -> sitk.Image:
    ref = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    ref.CopyInformation(image)
    return ref


def preprocess(image: sitk.Image, config: PreprocessConfig) -> PreprocessedImage:
    """Run every stage of the model's preprocessing on one 3D image.

    Raises:
        PreprocessError: When the image is not 3D, or is empty / has no head.
    """
    if image.GetDimension() != 3:
        raise PreprocessError(f"expected a 3D image, got {image.GetDimension()}D")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise PreprocessError("expected a scalar (single-channel) image")
    timings: dict[str, float] = {}
    t = time.perf_counter()
    arr = sitk.GetArrayViewFromImage(image)
    if float(arr.max()) - float(arr.min()) <= 0:
        raise EmptyImageError(f"the image is constant ({float(arr.min()):g} everywhere): there is no brain")
    oriented = reorient(image, config.orientation)
    timings["reorient"] = time.perf_counter() - t

    t = time.perf_counter()
    resampled = resample_to_spacing(oriented, config.spacing_mm)
    timings["resample"] = time.perf_counter() - t

    t = time.perf_counter()
    mask = head_mask(resampled, config.head_threshold_fraction)
    box = head_box(mask, config.crop_margin_mm)
    cropped = crop_to_box(resampled, box)
    cropped_mask = crop_to_box(mask, box)
    timings["crop"] = time.perf_counter() - t

    t = time.perf_counter()
    if config.n4_enabled:
        shrink = max(1, min(config.n4_shrink_factor, min(cropped.GetSize()) // 8))
        cropped = n4_bias_correction(
            cropped, cropped_mask, shrink, config.n4_iterations, config.n4_convergence_threshold
        )
    timings["n4"] = time.perf_counter() - t

    t = time.perf_counter()
    norm = normalise_intensity(cropped, cropped_mask, config.lower_percentile, config.upper_percentile)
    model_space = sitk.GetImageFromArray(norm)
    model_space.CopyInformation(cropped)
    timings["normalise"] = time.perf_counter() - t
    return PreprocessedImage(
        array=norm / np.float32(config.input_divisor),
        model_space=model_space,
        resampled_reference=_reference_only(resampled),
        crop=box,
        native_reference=_reference_only(image),
        head_mask=cropped_mask,
        timings_s=timings,
    )


def to_native(
    array_zyx: np.ndarray, pre: PreprocessedImage, interpolator: int = sitk.sitkLinear
) -> sitk.Image:
    """Map a model-space map (cropped grid) back onto the native image grid, 0 outside the crop.

    Physical positions are kept (reorientation and resampling only changed the grid), so this is one
    resampling with the identity transform, straight from the cropped array: it is given its place in
    the uncropped grid (its origin) and a border of one zero voxel where that grid goes on past the
    crop, which makes the linear interpolation across the crop's edge what it would be in the
    uncropped grid, without building that grid. The output keeps the array's type (a float map comes back as float32; a stored
    probability map, :mod:`segmentation.probability`, as uint16; ITK truncates there, see that module).
    """
    ref = pre.resampled_reference
    start = [int(v) for v in pre.crop.start]
    # The zero border goes where the uncropped grid goes on; at the grid's own edge there is none.
    before = [int(s > 0) for s in start]
    after = [int(s + n < full) for s, n, full in zip(start, pre.crop.size, ref.GetSize(), strict=True)]
    padded = np.pad(array_zyx, list(zip(before[::-1], after[::-1], strict=True)))
    cropped = sitk.GetImageFromArray(padded)
    cropped.SetSpacing(ref.GetSpacing())
    cropped.SetDirection(ref.GetDirection())
    cropped.SetOrigin(ref.TransformIndexToPhysicalPoint([s - b for s, b in zip(start, before, strict=True)]))
    pixel = sitk.sitkFloat32 if np.issubdtype(array_zyx.dtype, np.floating) else cropped.GetPixelID()
    return sitk.Resample(cropped, pre.native_reference, sitk.Transform(), interpolator, 0.0, pixel)


def mask_to_model_space(mask: sitk.Image, pre: PreprocessedImage) -> np.ndarray:
    """Resample a native-grid binary mask onto the model-space grid of ``pre`` (linear, > 0.5); uint8."""
    ref = sitk.Image(list(pre.model_space.GetSize()), sitk.sitkFloat32)
    ref.CopyInformation(pre.model_space)
    res = sitk.Resample(sitk.Cast(mask > 0, sitk.sitkFloat32), ref, sitk.Transform(), sitk.sitkLinear, 0.0)
    return (sitk.GetArrayFromImage(res) > 0.5).astype(np.uint8)
