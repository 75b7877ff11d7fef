"""Viewer imaging helpers: PNG encoder checked by an independent decoder (SimpleITK's PNG reader),
contour edges against a hand count, window/level mapping."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk

from trials.views.imaging import (
    CachedVolume,
    SliceOutOfRangeError,
    contour_segments,
    encode_png_gray,
    physical_to_index,
    window_slice,
)


def test_png_round_trip_through_simpleitk(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(37, 53), dtype=np.uint8)  # odd sizes: rows are not padded
    path = tmp_path / "slice.png"
    path.write_bytes(encode_png_gray(pixels))
    decoded = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    assert decoded.shape == (37, 53)
    np.testing.assert_array_equal(decoded, pixels)


@pytest.mark.parametrize("bad", [np.zeros((4, 4), dtype=np.float32), np.zeros((2, 2, 2), dtype=np.uint8)])
def test_png_refuses_non_2d_uint8(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="2D uint8"):
        encode_png_gray(bad)


def test_contour_of_single_pixel_and_square() -> None:
    one = np.zeros((5, 5), dtype=bool)
    one[2, 3] = True
    segments = contour_segments(one)
    assert sorted(map(tuple, segments)) == sorted([(3, 2, 4, 2), (3, 3, 4, 3), (3, 2, 3, 3), (4, 2, 4, 3)])
    square = np.zeros((6, 6), dtype=bool)
    square[1:4, 2:5] = True  # 3 x 3: perimeter 12 unit edges, all on the square's outline
    segments = contour_segments(square)
    assert len(segments) == 12
    for x0, y0, x1, y1 in segments:
        assert x0 in (2, 5) or y0 in (1, 4)
        assert abs(x1 - x0) + abs(y1 - y0) == 1


def test_contour_at_image_border_is_closed() -> None:
    full = np.ones((2, 2), dtype=bool)
    assert len(contour_segments(full)) == 8


def _volume(array: np.ndarray) -> CachedVolume:
    return CachedVolume(array, (1.0, 1.0, 2.0), (10.0, 20.0, 30.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), 100.0, 50.0)


def test_window_level_maps_linearly_and_clips() -> None:
    array = np.array([[[-100.0, 0.0, 50.0, 100.0, 500.0]]], dtype=np.float32)
    out = window_slice(_volume(array), 0, window=100.0, level=50.0)
    # [level - window/2, level + window/2] = [0, 100] -> [0, 255]
    assert out.tolist() == [[0, 0, 127, 255, 255]]
    default = window_slice(_volume(array), 0, None, None)  # the volume's own default window
    np.testing.assert_array_equal(default, out)
    with pytest.raises(SliceOutOfRangeError):
        window_slice(_volume(array), 1, None, None)


def test_physical_to_index_inverts_the_geometry() -> None:
    volume = _volume(np.zeros((4, 4, 4), dtype=np.float32))
    assert physical_to_index(volume, [12.0, 23.0, 36.0]) == pytest.approx([2.0, 3.0, 3.0])


def test_sagittal_volume_is_shown_axially(settings: Any, tmp_path: Path) -> None:
    from trials.views.imaging import clear_cache, load_volume

    settings.MEDIA_ROOT = tmp_path
    clear_cache()
    rng = np.random.default_rng(1)
    axial = rng.random((5, 6, 7)).astype(np.float32)  # (z, y, x) of an LPS axial grid
    image = sitk.GetImageFromArray(axial)
    image.SetSpacing((0.9, 1.1, 2.5))
    image.SetOrigin((-3.0, 4.0, 10.0))
    # The same voxels stored as a sagittal acquisition (index axes permuted and flipped).
    sitk.WriteImage(sitk.DICOMOrient(image, "SPL"), str(tmp_path / "sag.nii.gz"))
    volume = load_volume("sag.nii.gz")
    np.testing.assert_array_equal(volume.array, axial)
    assert volume.spacing_mm == pytest.approx((0.9, 1.1, 2.5))
    assert volume.origin_mm == pytest.approx((-3.0, 4.0, 10.0))
    assert physical_to_index(volume, [-3.0 + 0.9 * 2, 4.0 + 1.1 * 3, 10.0 + 2.5 * 4]) == pytest.approx(
        [2, 3, 4]
    )


def test_clicked_index_maps_back_to_the_stored_grid(settings: Any, tmp_path: Path) -> None:
    from trials.views.imaging import clear_cache, display_index_to_native, load_volume

    settings.MEDIA_ROOT = tmp_path
    clear_cache()
    axial = np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7)  # every voxel value unique
    image = sitk.GetImageFromArray(axial)
    image.SetSpacing((0.9, 1.1, 2.5))
    stored = sitk.DICOMOrient(image, "SPL")
    sitk.WriteImage(stored, str(tmp_path / "sag.nii.gz"))
    displayed = load_volume("sag.nii.gz").array
    for ijk in [(0, 0, 0), (2, 3, 4), (6, 5, 4)]:
        native = display_index_to_native("sag.nii.gz", ijk)
        assert stored[native] == displayed[ijk[2], ijk[1], ijk[0]]


def test_mask_drawn_on_the_viewer_grid_maps_back_to_the_stored_grid(settings: Any, tmp_path: Path) -> None:
    from trials.views.imaging import clear_cache, display_mask_to_native, load_volume

    settings.MEDIA_ROOT = tmp_path
    clear_cache()
    axial = np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7)  # every voxel value unique
    image = sitk.GetImageFromArray(axial)
    image.SetSpacing((0.9, 1.1, 2.5))
    stored = sitk.DICOMOrient(image, "SPL")  # a sagittal acquisition
    sitk.WriteImage(stored, str(tmp_path / "sag.nii.gz"))
    displayed = load_volume("sag.nii.gz").array
    drawn = np.zeros(displayed.shape, dtype=bool)
    drawn[1:3, 2:5, 3] = True
    drawn[4, 0, 6] = True
    native = display_mask_to_native("sag.nii.gz", drawn)
    assert native.GetSize() == stored.GetSize() and native.GetDirection() == stored.GetDirection()
    # The same voxels: the values under the native mask are those under the drawn one.
    values = sitk.GetArrayFromImage(stored)[sitk.GetArrayFromImage(native) > 0]
    assert sorted(values.tolist()) == sorted(displayed[drawn].tolist())
    with pytest.raises(ValueError, match="shape"):
        display_mask_to_native("sag.nii.gz", drawn[:2])
