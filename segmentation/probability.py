"""Lesion probability in a compact fixed-point type: uint16, stored value = probability x 65535.

The network's blended probability is float32 on the cropped model grid (the sliding window needs the
float sums). From there on it is kept as uint16: half the memory of float32 on the native grid (a
512 x 512 x 208 series: 109 MB instead of 218 MB), half the bytes of ``probability.nii``, and it is
resampled and thresholded in that type.

Why uint16 fixed point and not float16 (what nnU-Net stores): SimpleITK has no float16 pixel type,
and over 0..1 fixed point is the finer of the two (a step of 1.5e-5 everywhere, where float16's step
near 1 is 4.9e-4). uint8 (a step of 3.9e-3) would break the 1e-3 accuracy contract between the CPU
backends (:mod:`segmentation.onnx_backend`). The error a stored value carries is at most half a step
(rounding) plus one step where ITK's linear resampling truncates to the integer type: below 3.1e-5.

A threshold ``t`` on the probability is the stored level ``ceil(t x 65535)``: for an integer level
``k``, ``floor(v) >= k`` exactly when ``v >= k``, so the truncation of the resampling moves no voxel
across it.

``probability.nii`` is written as uint16 with the NIfTI scale ``scl_slope = 1/65535``, so that any
NIfTI reader (nibabel, ITK/SimpleITK, 3D Slicer, FSL) reads the probability itself, as floats.
SimpleITK cannot write the scale fields (it writes NaN, "no scaling"), hence nibabel for the writing.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import SimpleITK as sitk

#: The stored value of probability 1.
SCALE = 65535
#: SimpleITK's pixel type of a stored probability map.
PIXEL_ID = sitk.sitkUInt16
#: numpy's type of a stored probability map.
DTYPE = np.uint16


def quantise(probability: np.ndarray) -> np.ndarray:
    """A float probability array (0..1) in the compact type; values outside 0..1 are clipped."""
    scaled = np.multiply(probability, np.float32(SCALE), dtype=np.float32)
    np.clip(scaled, 0.0, float(SCALE), out=scaled)
    return np.rint(scaled, out=scaled).astype(DTYPE)


def level(threshold: float) -> int:
    """The smallest stored value whose probability reaches ``threshold``."""
    return math.ceil(float(threshold) * SCALE - 1e-9)


def is_compact(array: np.ndarray) -> bool:
    """Whether ``array`` holds stored values (uint16) rather than float probabilities."""
    return array.dtype == DTYPE


def to_float(array: np.ndarray) -> np.ndarray:
    """Float32 probabilities of a stored (uint16) array; a float array is returned as float32."""
    if is_compact(array):
        return array.astype(np.float32) * np.float32(1.0 / SCALE)
    return np.asarray(array, dtype=np.float32)


def write_nifti(image: sitk.Image, path: str | Path) -> Path:
    """Write a stored probability map as uint16 NIfTI with ``scl_slope = 1/65535`` (readers see floats).

    The affine is the image's geometry with LPS (ITK) turned into RAS (NIfTI); sform and qform both
    say "scanner" (code 1), as SimpleITK's own writer does.
    """
    import nibabel as nib

    if image.GetPixelID() != PIXEL_ID or image.GetDimension() != 3:
        raise ValueError(
            f"a stored probability map is a 3D uint16 image, got {image.GetPixelIDTypeAsString()}"
        )
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction * np.asarray(image.GetSpacing(), dtype=float)
    affine[:3, 3] = image.GetOrigin()
    affine[:2] *= -1  # LPS -> RAS
    data = sitk.GetArrayViewFromImage(image).transpose(2, 1, 0)  # (z, y, x) -> (i, j, k)
    out = nib.Nifti1Image(data, affine)
    out.header.set_data_dtype(DTYPE)
    out.header.set_slope_inter(1.0 / SCALE, 0.0)
    out.header.set_xyzt_units("mm")
    out.set_sform(affine, code=1)
    out.set_qform(affine, code=1)
    path = Path(path)
    out.to_filename(str(path))
    return path


__all__ = ["DTYPE", "PIXEL_ID", "SCALE", "is_compact", "level", "quantise", "to_float", "write_nifti"]
