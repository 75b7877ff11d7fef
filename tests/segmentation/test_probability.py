"""The compact probability type: quantisation, thresholds, mapping to the native grid, NIfTI files.

Oracles: the float map itself (the compact one must stay within its stated error), the mapping the
pipeline used before (the cropped map pasted into the uncropped grid with numpy, then one
``sitk.Resample``), and nibabel and SimpleITK reading the written file back.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage as ndi

from segmentation import probability as P
from segmentation.model import PostprocessConfig
from segmentation.preprocess import PreprocessConfig, PreprocessedImage, preprocess, to_native

#: Largest error of a stored value mapped to the native grid: half a step of rounding, one of truncation.
STORED_ERROR = 1.5 / P.SCALE + 1e-7


def _oblique_head() -> sitk.Image:
    """An ellipsoid head off-centre in a sagittal, anisotropic, rotated grid (nothing lines up)."""
    shape = (44, 50, 38)
    z, y, x = np.indices(shape, dtype=float)
    inside = ((z - 20) / 17) ** 2 + ((y - 26) / 19) ** 2 + ((x - 17) / 14) ** 2 <= 1
    img = sitk.GetImageFromArray((inside * 600.0 + 4.0).astype(np.float32))
    img.SetSpacing((1.3, 1.1, 1.7))
    img.SetOrigin((-31.0, 9.0, -44.0))
    angle = np.deg2rad(17.0)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    sagittal = np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    img.SetDirection((rot @ sagittal).ravel().tolist())
    return img


@pytest.fixture(scope="module")
def pre() -> PreprocessedImage:
    return preprocess(_oblique_head(), PreprocessConfig(spacing_mm=(2.0, 2.0, 2.0), n4_shrink_factor=2))


def _smooth_map(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A smooth 0..1 map reaching the crop's edges (so the edge interpolation is exercised)."""
    rng = np.random.default_rng(seed)
    field = ndi.gaussian_filter(rng.standard_normal(shape), 2.0)
    return (1.0 / (1.0 + np.exp(-field / field.std() * 3.0))).astype(np.float32)


def _pasted_then_resampled(array: np.ndarray, pre: PreprocessedImage) -> np.ndarray:
    """The previous mapping: paste into the uncropped resampled grid, then resample onto the native one."""
    ref = pre.resampled_reference
    full = np.zeros(ref.GetSize()[::-1], dtype=np.float32)
    x0, y0, z0 = pre.crop.start
    sx, sy, sz = pre.crop.size
    full[z0 : z0 + sz, y0 : y0 + sy, x0 : x0 + sx] = array
    image = sitk.GetImageFromArray(full)
    image.CopyInformation(ref)
    out = sitk.Resample(image, pre.native_reference, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


def test_quantise_and_levels_round_trip() -> None:
    p = np.linspace(-0.1, 1.1, 10_001, dtype=np.float32)
    q = P.quantise(p)
    assert q.dtype == np.uint16 and q.min() == 0 and q.max() == P.SCALE
    inside = (p >= 0) & (p <= 1)
    assert float(np.abs(P.to_float(q)[inside] - p[inside]).max()) <= 0.5 / P.SCALE + 1e-7
    for t in (0.5, 0.98, 0.3, 1e-4):
        k = P.level(t)
        # The level is the smallest stored value whose probability reaches t.
        assert k / P.SCALE >= t - 1e-12 and (k - 1) / P.SCALE < t


def test_direct_mapping_equals_paste_then_resample(pre: PreprocessedImage) -> None:
    array = _smooth_map(pre.array.shape)
    ours = sitk.GetArrayFromImage(to_native(array, pre))
    assert ours.dtype == np.float32
    reference = _pasted_then_resampled(array, pre)
    assert ours.shape == reference.shape
    assert float(np.abs(ours - reference).max()) <= 1e-6
    assert float(reference.max()) > 0.9  # the map reached the native grid


def test_compact_map_stays_within_its_stated_error(pre: PreprocessedImage) -> None:
    array = _smooth_map(pre.array.shape, seed=3)
    native = to_native(P.quantise(array), pre)
    assert native.GetPixelID() == P.PIXEL_ID
    assert native.GetSize() == pre.native_reference.GetSize()
    compact = P.to_float(sitk.GetArrayFromImage(native))
    reference = _pasted_then_resampled(array, pre)
    assert float(np.abs(compact - reference).max()) <= STORED_ERROR


@pytest.mark.parametrize("detection", [None, 0.98])
def test_thresholds_give_the_float_mask(pre: PreprocessedImage, detection: float | None) -> None:
    """The compact map's mask is the float map's, but for voxels within the stated error of a threshold."""
    post = PostprocessConfig(threshold=0.5, detection_threshold=detection)
    array = _smooth_map(pre.array.shape, seed=5)
    reference = _pasted_then_resampled(array, pre)
    compact = sitk.GetArrayFromImage(to_native(P.quantise(array), pre))
    a = post.binarise(reference)
    b = post.binarise(compact)
    assert a.sum() > 1000
    near = np.abs(reference - 0.5) <= STORED_ERROR
    if detection is not None:
        kept = int(post.binarise(reference).sum())
        assert 0 < kept < int((reference >= 0.5).sum())  # the hysteresis dropped some components
        labels, _ = ndi.label(reference >= 0.5 - STORED_ERROR, np.ones((3, 3, 3), bool))
        peak = ndi.maximum(reference, labels, index=np.arange(labels.max() + 1))
        near |= np.abs(peak[labels] - detection) <= STORED_ERROR
    assert np.array_equal(a[~near], b[~near])


def test_probability_nifti_reads_back_as_probabilities(tmp_path: Path, pre: PreprocessedImage) -> None:
    array = _smooth_map(pre.array.shape, seed=7)
    native = to_native(P.quantise(array), pre)
    path = P.write_nifti(native, tmp_path / "probability.nii")
    expected = P.to_float(sitk.GetArrayFromImage(native))
    # nibabel: uint16 on disk, the scale applied on reading.
    img = nib.load(str(path))
    assert img.get_data_dtype() == np.uint16
    assert img.dataobj.slope == pytest.approx(1.0 / P.SCALE)
    data = np.asarray(img.get_fdata(dtype=np.float32)).transpose(2, 1, 0)
    assert float(np.abs(data - expected).max()) <= 1e-6
    # The geometry nibabel sees is the one SimpleITK writes for the same grid as a float image.
    float_image = sitk.GetImageFromArray(expected)
    float_image.CopyInformation(native)
    sitk.WriteImage(float_image, str(tmp_path / "float.nii"))
    assert np.allclose(img.affine, nib.load(str(tmp_path / "float.nii")).affine, atol=1e-4)
    # SimpleITK applies the scale too and reads floats on the same grid.
    back = sitk.ReadImage(str(path))
    assert back.GetPixelID() == sitk.sitkFloat32
    assert np.allclose(back.GetDirection(), native.GetDirection(), atol=1e-6)
    assert np.allclose(back.GetOrigin(), native.GetOrigin(), atol=1e-4)
    assert float(np.abs(sitk.GetArrayFromImage(back) - expected).max()) <= 1e-6


def test_write_refuses_a_float_map(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="uint16"):
        P.write_nifti(sitk.Image([4, 4, 4], sitk.sitkFloat32), tmp_path / "p.nii")
