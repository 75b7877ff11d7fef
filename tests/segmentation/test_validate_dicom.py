"""``bm-validate --dicom``: reference contours read from real DICOM files (an MR series with an RTSTRUCT,
another with a DICOM SEG), written here and read back, ROIs chosen by name pattern."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from segmentation.contours import write_rtstruct, write_seg
from segmentation.io import read_series
from segmentation.synthetic_mr import write_dicom_series
from segmentation.validate import dicom_reference_sources

NAMES = {1: "GTV_1", 2: "GTV_2", 3: "Brain"}


def _labels(shape: tuple[int, int, int]) -> np.ndarray:
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    labels = np.zeros(shape, dtype=np.uint8)
    labels[(z - 6) ** 2 + (y - 20) ** 2 + (x - 20) ** 2 <= 16] = 1
    labels[(z - 12) ** 2 + (y - 10) ** 2 + (x - 28) ** 2 <= 9] = 2
    labels[2:4, 30:36, 5:12] = 3  # not a lesion: left out by the pattern
    return labels


def _case(root: Path, name: str, kind: str) -> np.ndarray:
    shape = (16, 40, 40)
    labels = _labels(shape)
    image = sitk.GetImageFromArray((100 + 200 * (labels > 0)).astype(np.int16))
    image.SetSpacing((1.0, 1.0, 2.0))
    folder = root / name
    write_dicom_series(image, folder, patient_id=f"PSEUDO-{name}")
    series = read_series(folder)
    label_image = sitk.GetImageFromArray(labels)
    label_image.CopyInformation(series.image)
    if kind == "rtstruct":
        write_rtstruct(label_image, series, folder / "ref_rtstruct.dcm", lesion_names=NAMES)
    else:
        write_seg(
            label_image, series, folder / "ref_seg.dcm", lesion_names=NAMES, algorithm_name="reader",
            algorithm_version="1",
        )  # fmt: skip
    return np.isin(labels, [1, 2])


def test_rtstruct_and_seg_references_read_back_voxel_for_voxel(tmp_path: Path) -> None:
    expected = {"a": _case(tmp_path, "a", "rtstruct"), "b": _case(tmp_path, "b", "seg")}
    sources = dicom_reference_sources(tmp_path, "GTV*")
    assert [(s.case_id, s.patient_id) for s in sources] == [("a", "PSEUDO-a"), ("b", "PSEUDO-b")]
    for source in sources:
        image, mask = source.load()
        assert mask.GetSize() == image.GetSize() and mask.GetOrigin() == image.GetOrigin()
        assert np.array_equal(sitk.GetArrayFromImage(mask) != 0, expected[source.case_id])

    with pytest.raises(ValueError, match="no ROI in .* matches 'CTV\\*'"):
        dicom_reference_sources(tmp_path, "CTV*")[0].load()
    (tmp_path / "c").mkdir()
    with pytest.raises(ValueError, match="no RTSTRUCT or SEG"):
        dicom_reference_sources(tmp_path)
