"""Label maps of a run are stored in the smallest unsigned type holding their labels, values unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from trials.pipeline import _write_label_image


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
    tmp_path, largest, pixel_type
) -> None:
    array = np.zeros((4, 5, 6), dtype=np.uint32)
    array[1, 2, 3] = largest
    array[2, 2, 2] = min(largest, 7)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.5, 0.6, 2.0))
    image.SetOrigin((-10.0, 5.0, 3.0))
    image.SetDirection((0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    path = tmp_path / "lesions.nii.gz"

    _write_label_image(image, path)

    stored = sitk.ReadImage(str(path))
    assert stored.GetPixelID() == pixel_type
    assert np.array_equal(sitk.GetArrayFromImage(stored).astype(np.uint32), array)
    assert np.allclose(stored.GetSpacing(), image.GetSpacing())
    assert np.allclose(stored.GetOrigin(), image.GetOrigin())
    assert np.allclose(stored.GetDirection(), image.GetDirection())
