"""Synthetic DICOM writer: realistic MR series at any geometry, checked with independent readers.

The oracle for geometry and voxels is SimpleITK/GDCM's own series reader with GDCM's own slice sorting
(``GetGDCMSeriesFileNames``), which shares no code with the writer.
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import JPEG2000Lossless, RLELossless

from segmentation.errors import ImageWriteError
from segmentation.synthetic_mr import write_dicom_series

SAGITTAL = (0, 0, -1, 1, 0, 0, 0, -1, 0)  # rows along anterior->posterior, columns head->foot, slices L->R


def _oblique() -> tuple[float, ...]:
    return sitk.VersorRigid3DTransform(
        (0.2, -0.15, 0.1, float(np.sqrt(1 - 0.2**2 - 0.15**2 - 0.1**2)))
    ).GetMatrix()


def _gdcm_read(folder):
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


#: Mandatory attributes of the MR Image IOD modules (PS3.3 A.4) the writer promises, including the ones
#: rt-utils copies into an RTSTRUCT without a default.
MANDATORY = [
    "SOPClassUID",
    "SOPInstanceUID",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "Modality",
    "SeriesInstanceUID",
    "SeriesNumber",
    "FrameOfReferenceUID",
    "PositionReferenceIndicator",
    "Manufacturer",
    "InstanceNumber",
    "ImageType",
    "PixelSpacing",
    "ImageOrientationPatient",
    "ImagePositionPatient",
    "SliceThickness",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "PixelData",
    "ScanningSequence",
    "SequenceVariant",
    "ScanOptions",
    "MRAcquisitionType",
    "EchoTime",
    "EchoTrainLength",
    "ContrastBolusAgent",
    "PatientPosition",
]


@pytest.mark.parametrize(
    ("spacing", "direction"),
    [
        ((0.5, 0.5, 1.0), (1, 0, 0, 0, 1, 0, 0, 0, 1)),
        ((1.0, 1.0, 1.0), SAGITTAL),
        ((0.9, 0.9, 1.2), _oblique()),
    ],
    ids=["axial-0.5x0.5x1", "sagittal-1mm", "oblique"],
)
def test_series_reads_back_identically_with_gdcm(write_series, make_image, spacing, direction) -> None:
    image = make_image(spacing_mm=spacing, direction=direction)
    folder, files = write_series(image)
    assert len(files) == image.GetSize()[2]
    back = _gdcm_read(folder)
    assert back.GetSize() == image.GetSize()
    np.testing.assert_allclose(back.GetSpacing(), image.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))


def test_every_mandatory_attribute_is_written(mr_series) -> None:
    _, files = mr_series
    for path in (files[0], files[-1]):
        ds = pydicom.dcmread(path)
        missing = [k for k in MANDATORY if k not in ds]
        assert missing == []
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4"  # MR Image Storage
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    uids = {pydicom.dcmread(p).SOPInstanceUID for p in files}
    assert len(uids) == len(files)


def test_rt_utils_builds_an_rtstruct_on_the_written_series(mr_series) -> None:
    from rt_utils import RTStructBuilder

    folder, files = mr_series
    rtstruct = RTStructBuilder.create_new(str(folder))  # AttributeError here if a study attribute is missing
    mask = np.zeros((64, 64, len(files)), dtype=bool)
    mask[20:30, 20:30, 5:10] = True
    rtstruct.add_roi(mask=mask, name="L1")
    assert rtstruct.get_roi_names() == ["L1"]


@pytest.mark.parametrize(("compress", "syntax"), [("jpeg2000", JPEG2000Lossless), ("rle", RLELossless)])
def test_compressed_series_is_lossless(write_series, mr_image, compress, syntax) -> None:
    folder, files = write_series(mr_image, compress=compress)
    ds = pydicom.dcmread(files[3])
    assert ds.file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(ds.pixel_array, sitk.GetArrayFromImage(mr_image)[3])
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(_gdcm_read(folder)), sitk.GetArrayFromImage(mr_image)
    )


def test_multiframe_variant_is_one_enhanced_file_with_all_frames(write_series, mr_image) -> None:
    _, files = write_series(mr_image, multiframe=True)
    assert len(files) == 1
    ds = pydicom.dcmread(files[0])
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4.4"  # Legacy Converted Enhanced MR Image Storage
    assert int(ds.NumberOfFrames) == mr_image.GetSize()[2]
    # frames may be stored in any order; each frame's plane position says which slice it is
    expected = sitk.GetArrayFromImage(mr_image)
    seen = []
    for frame, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        index = mr_image.TransformPhysicalPointToIndex(position)
        np.testing.assert_allclose(mr_image.TransformIndexToPhysicalPoint(index), position, atol=1e-4)
        assert index[:2] == (0, 0)
        np.testing.assert_array_equal(ds.pixel_array[frame], expected[index[2]])
        seen.append(index[2])
    assert sorted(seen) == list(range(mr_image.GetSize()[2]))


def test_float_image_is_quantised_with_rescale_within_half_a_step(write_series, make_image) -> None:
    image = sitk.Cast(make_image(), sitk.sitkFloat32) * 0.013 + 0.5
    folder, files = write_series(image)
    ds = pydicom.dcmread(files[0])
    slope = float(ds.RescaleSlope)
    back = sitk.GetArrayFromImage(_gdcm_read(folder))
    assert np.max(np.abs(back - sitk.GetArrayFromImage(image))) <= slope / 2 + 1e-6


def test_tags_override_and_none_deletes(write_series) -> None:
    _, files = write_series(PatientName="Doe^Jane", MagneticFieldStrength="1.5", StudyTime=None)
    ds = pydicom.dcmread(files[0])
    assert str(ds.PatientName) == "Doe^Jane"
    assert float(ds.MagneticFieldStrength) == 1.5
    assert "StudyTime" not in ds


@pytest.mark.parametrize(
    ("build", "kwargs", "fragment"),
    [
        (lambda m: sitk.Image(16, 16, sitk.sitkInt16), {}, "3D"),
        (lambda m: _left_handed(m()), {}, "left-handed"),
        (lambda m: m(), {"compress": "lzw"}, "Unknown compression"),
        (lambda m: sitk.Image([16, 16, 4], sitk.sitkVectorFloat32, 3), {}, "3D single-component"),
        (lambda m: sitk.Image(16, 16, 4, sitk.sitkInt32) + 100000, {}, "16 bits"),
    ],
    ids=["2d", "left-handed", "bad-compression", "vector", "int32-overflow"],
)
def test_bad_requests_raise_image_write_error(tmp_path, make_image, build, kwargs, fragment) -> None:
    with pytest.raises(ImageWriteError, match=fragment):
        write_dicom_series(build(make_image), tmp_path / "out", patient_id="X", **kwargs)


def _left_handed(image: sitk.Image) -> sitk.Image:
    image.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, -1))
    return image
