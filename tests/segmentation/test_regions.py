"""segmentation.regions: a reader's region edits (grow from a seed, split at two seeds) on plain images."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from segmentation.errors import RegionError
from segmentation.regions import grow_region, split_region


def _ball_image(radius_mm: float = 6.0, spacing=(1.0, 1.0, 2.0)) -> tuple[sitk.Image, np.ndarray]:
    """A bright ball (1000) in dim tissue (200) inside a zero background, on an anisotropic grid."""
    size_xyz = (48, 48, 24)
    z, y, x = np.meshgrid(
        *(np.arange(n) * s for n, s in zip(size_xyz[::-1], spacing[::-1], strict=True)), indexing="ij"
    )
    centre = (24.0, 24.0, 24.0)
    ball = (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2 <= radius_mm**2
    head = (x - 24) ** 2 + (y - 24) ** 2 <= 20**2
    rng = np.random.default_rng(0)
    array = np.where(ball, 1000.0, np.where(head, 200.0, 0.0)) + rng.normal(0, 10, ball.shape) * head
    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.SetSpacing(spacing)
    return image, ball


def test_grown_region_is_the_ball_the_seed_is_in() -> None:
    image, ball = _ball_image()
    mask = grow_region(image, (24, 24, 12))
    grown = sitk.GetArrayFromImage(mask).astype(bool)
    dice = 2 * np.count_nonzero(grown & ball) / (np.count_nonzero(grown) + np.count_nonzero(ball))
    assert dice > 0.95
    assert mask.GetSpacing() == image.GetSpacing()


@pytest.mark.parametrize(
    ("seed", "kwargs", "message"),
    [
        ((99, 0, 0), {}, "outside the image"),
        ((1, 1, 1), {}, "background"),
        ((24, 24, 12), {"max_volume_mm3": 100.0}, "leaked"),
    ],
)
def test_unusable_seeds_are_refused_with_a_reason(seed, kwargs, message) -> None:
    image, _ = _ball_image()
    with pytest.raises(RegionError, match=message):
        grow_region(image, seed, **kwargs)


def test_split_gives_each_voxel_to_the_nearer_seed_in_millimetres() -> None:
    # A bar along x on a 1 x 1 x 2 mm grid (distances are physical, not in voxels).
    image, _ = _ball_image()
    array = np.zeros((24, 48, 48), dtype=np.uint8)
    array[10:14, 20:28, 8:40] = 1  # a bar 32 voxels long in x
    mask = sitk.GetImageFromArray(array)
    mask.CopyInformation(image)
    left, right = split_region(mask, (10, 24, 12), (37, 24, 12))
    left_a, right_a = sitk.GetArrayFromImage(left), sitk.GetArrayFromImage(right)
    # Seeds at x = 10 and x = 37 (same y, z): the cut is the plane between them, x 23 | 24.
    expected_left = array.copy()
    expected_left[:, :, 24:] = 0
    assert np.array_equal(left_a, expected_left)
    assert np.array_equal(right_a, array - expected_left)


@pytest.mark.parametrize(
    ("seeds", "message"),
    [(((10, 24, 12), (10, 24, 12)), "differ"), (((1, 1, 1), (37, 24, 12)), "not inside")],
)
def test_split_needs_two_different_seeds_inside_the_lesion(seeds, message) -> None:
    array = np.zeros((24, 48, 48), dtype=np.uint8)
    array[10:14, 20:28, 8:40] = 1
    with pytest.raises(RegionError, match=message):
        split_region(sitk.GetImageFromArray(array), *seeds, name="L3")
