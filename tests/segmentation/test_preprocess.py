"""Preprocessing stages and the mapping back to native geometry."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from segmentation.errors import ImagingError
from segmentation.preprocess import (
    EmptyImageError,
    PreprocessConfig,
    PreprocessError,
    head_box,
    head_mask,
    n4_bias_correction,
    normalise_intensity,
    preprocess,
    reorient,
    resample_to_spacing,
    to_native,
)


def _ellipsoid_head(shape_zyx=(40, 56, 48), spacing=(1.5, 1.2, 2.0), value=500.0) -> sitk.Image:
    """A constant-intensity ellipsoid on a dark background, in an LPS axial geometry."""
    z, y, x = np.indices(shape_zyx, dtype=float)
    c = [(s - 1) / 2 for s in shape_zyx]
    inside = ((z - c[0]) / (0.4 * shape_zyx[0])) ** 2 + ((y - c[1]) / (0.4 * shape_zyx[1])) ** 2 + (
        (x - c[2]) / (0.4 * shape_zyx[2])
    ) ** 2 <= 1
    img = sitk.GetImageFromArray((inside * value + 5.0).astype(np.float32))
    img.SetSpacing(spacing)
    img.SetOrigin((-30.0, 12.0, -40.0))
    return img


def test_reorient_to_ras_keeps_physical_positions() -> None:
    img = _ellipsoid_head()
    out = reorient(img, "RAS")
    assert out.GetDirection() == pytest.approx((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    p = img.TransformIndexToPhysicalPoint((3, 7, 11))
    assert out[out.TransformPhysicalPointToIndex(p)] == img[3, 7, 11]


def test_resample_to_spacing_keeps_the_field_of_view_centre() -> None:
    img = _ellipsoid_head()
    out = resample_to_spacing(img, (2.0, 2.0, 2.0))
    assert out.GetSpacing() == (2.0, 2.0, 2.0)
    assert out.GetPixelID() == sitk.sitkFloat32

    def centre(im: sitk.Image) -> np.ndarray:
        return np.asarray(im.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in im.GetSize()]))

    assert np.allclose(centre(out), centre(img), atol=1e-6)
    extent_in = np.asarray(img.GetSize()) * img.GetSpacing()
    extent_out = np.asarray(out.GetSize()) * out.GetSpacing()
    assert np.all(np.abs(extent_out - extent_in) <= 2.0)  # within one output voxel


def test_n4_removes_a_known_multiplicative_bias() -> None:
    img = _ellipsoid_head(shape_zyx=(48, 48, 48), spacing=(2.0, 2.0, 2.0))
    arr = sitk.GetArrayFromImage(img)
    z, y, x = np.indices(arr.shape, dtype=float) / 47.0
    biased = sitk.GetImageFromArray((arr * np.exp(0.8 * (x - 0.5) + 0.5 * (z - 0.5) ** 2)).astype(np.float32))
    biased.CopyInformation(img)
    mask = head_mask(biased)
    inside = sitk.GetArrayViewFromImage(mask) > 0
    # Erode: partial-volume edge voxels are not what N4 is judged on.
    eroded = sitk.BinaryErode(mask, [2, 2, 2])
    core = inside & (sitk.GetArrayFromImage(eroded) > 0)
    before = sitk.GetArrayFromImage(biased)[core]
    after = sitk.GetArrayFromImage(n4_bias_correction(biased, mask, shrink_factor=2))[core]
    cv_before = before.std() / before.mean()
    cv_after = after.std() / after.mean()
    assert cv_before > 0.08
    assert cv_after < 0.5 * cv_before


def test_head_mask_and_box_hold_the_whole_head() -> None:
    img = _ellipsoid_head()
    mask = head_mask(img)
    arr = sitk.GetArrayViewFromImage(img) > 100
    assert np.array_equal(sitk.GetArrayViewFromImage(mask) > 0, arr)
    box = head_box(mask, margin_mm=4.0)
    nz = np.nonzero(arr)
    for axis_xyz in range(3):
        axis_zyx = 2 - axis_xyz
        assert box.start[axis_xyz] <= nz[axis_zyx].min()
        assert box.start[axis_xyz] + box.size[axis_xyz] > nz[axis_zyx].max()


def test_normalise_maps_percentiles_to_0_255_and_clears_background() -> None:
    rng = np.random.default_rng(0)
    img = _ellipsoid_head()
    arr = sitk.GetArrayFromImage(img)
    arr[arr > 100] = rng.uniform(100, 1100, size=int((arr > 100).sum()))
    noisy = sitk.GetImageFromArray(arr)
    noisy.CopyInformation(img)
    mask = head_mask(noisy)
    out = normalise_intensity(noisy, mask, 1.0, 99.0)
    inside = sitk.GetArrayViewFromImage(mask) > 0
    assert out.min() == 0.0 and out.max() == 255.0
    assert (out[~inside] == 0).all()
    lo, hi = np.percentile(arr[inside], [1.0, 99.0])
    v = arr[inside][10]
    assert out[inside][10] == pytest.approx(np.clip((v - lo) / (hi - lo), 0, 1) * 255, rel=1e-4)


def test_preprocess_and_back_to_native_geometry() -> None:
    img = _ellipsoid_head()
    pre = preprocess(img, PreprocessConfig(spacing_mm=(2.0, 2.0, 2.0), n4_shrink_factor=2))
    assert pre.model_space.GetSpacing() == (2.0, 2.0, 2.0)
    assert pre.array.dtype == np.float32 and pre.array.min() >= 0.0 and pre.array.max() <= 1.0
    assert set(pre.timings_s) == {"reorient", "resample", "crop", "n4", "normalise"}
    # The model-space head mask mapped back must land on the native head (geometry is preserved).
    back = to_native(sitk.GetArrayFromImage(pre.head_mask).astype(np.float32), pre)
    assert back.GetSize() == img.GetSize() and back.GetOrigin() == img.GetOrigin()
    assert back.GetDirection() == img.GetDirection()
    native = sitk.GetArrayViewFromImage(img) > 100
    mapped = sitk.GetArrayViewFromImage(back) > 0.5
    dice = 2 * (native & mapped).sum() / (native.sum() + mapped.sum())
    assert dice > 0.9


def test_all_zero_image_is_refused_clearly() -> None:
    img = sitk.Image(32, 32, 32, sitk.sitkInt16)
    with pytest.raises(EmptyImageError, match="constant"):
        preprocess(img, PreprocessConfig())
    # An ImagingError, so the pipeline shows the message to the person who uploaded the image.
    assert issubclass(EmptyImageError, ImagingError)


def test_2d_image_is_refused() -> None:
    with pytest.raises(PreprocessError, match="3D"):
        preprocess(sitk.Image(32, 32, sitk.sitkFloat32), PreprocessConfig())


def test_config_round_trip_and_unknown_keys() -> None:
    cfg = PreprocessConfig(spacing_mm=(2.0, 2.0, 2.0), n4_iterations=(10, 10))
    assert PreprocessConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(PreprocessError, match="unknown preprocessing keys"):
        PreprocessConfig.from_dict({"spacing": [1, 1, 1]})
    with pytest.raises(PreprocessError, match="spacing_mm"):
        PreprocessConfig(spacing_mm=(1.0, -1.0, 1.0))
