"""Label maps of a run are stored in the smallest unsigned type holding their labels, values unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from trials.storage import write_label_image


@pytest.mark.parametrize(
    ("largest", "pixel_type"),
    [
        (0, sitk.sitkUInt8),
        (255, sitk.sitkUInt8),
        (256, sitk.sitkUInt16),
        (65535, sitk.sitkUInt16),
        (65536, sitk.sitkUInt32),
    ],
)
def test_label_image_is_stored_in_the_smallest_type_with_its_values_and_geometry(
    tmp_path, settings, largest, pixel_type
) -> None:
    array = np.zeros((4, 5, 6), dtype=np.uint32)
    array[1, 2, 3] = largest
    array[2, 2, 2] = min(largest, 7)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.5, 0.6, 2.0))
    image.SetOrigin((-10.0, 5.0, 3.0))
    image.SetDirection((0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    settings.MEDIA_ROOT = str(tmp_path)

    path = write_label_image(image, "masks/run_1/lesions.nii.gz")

    stored = sitk.ReadImage(str(path))
    assert stored.GetPixelID() == pixel_type
    assert np.array_equal(sitk.GetArrayFromImage(stored).astype(np.uint32), array)
    assert np.allclose(stored.GetSpacing(), image.GetSpacing())
    assert np.allclose(stored.GetOrigin(), image.GetOrigin())
    assert np.allclose(stored.GetDirection(), image.GetDirection())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_components_labelled_again_with_a_smaller_minimum_are_unchanged(seed) -> None:
    """What lets the pipeline store segment_image's labels as they are (record_segmentation labelled=True):
    labelling the components of a mask again, with the trial's minimum volume at most the one already
    applied, gives the same labels."""
    from rano.measure import label_components

    rng = np.random.default_rng(seed)
    mask = sitk.GetImageFromArray((rng.random((20, 24, 28)) > 0.93).astype(np.uint8))
    mask.SetSpacing((1.0, 1.5, 2.0))
    once = label_components(mask, 6.0)  # model minimum 6 mm3
    assert sitk.GetArrayViewFromImage(once).max() > 3
    for trial_minimum in (6.0, 5.0, 0.0):
        again = label_components(sitk.Cast(once > 0, sitk.sitkUInt8), trial_minimum)
        assert np.array_equal(sitk.GetArrayFromImage(again), sitk.GetArrayFromImage(once))
