"""RTSTRUCT, DICOM SEG and NIfTI label output, read back by pydicom, rt-utils and highdicom.

Oracles: the label image the test drew (SEG and RTSTRUCT must return it voxel for voxel: the RTSTRUCT's
contours run on voxel edges), rt-utils' own builder reading the RTSTRUCT from the series folder, and
highdicom's own reader for the SEG. Plastimatch reads the RTSTRUCT in test_rtstruct_plastimatch.py.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from segmentation.contours import (
    DEFAULT_COLORS,
    read_label_nifti,
    read_rtstruct,
    read_seg,
    write_label_nifti,
    write_rtstruct,
    write_seg,
)
from segmentation.errors import ContourExportError, ContourReadError, MissingAttributeError
from segmentation.io import read_series

#: Lesions as (label value, name, centre (slice, row, column), radius mm); diameters 5 to 12 mm.
LESIONS = [(1, "L1", (8, 20, 20), 6.0), (2, "L2", (15, 44, 40), 4.0), (5, "L3", (12, 30, 50), 2.5)]


def draw_lesions(series, lesions=LESIONS, *, ring: bool = False) -> sitk.Image:
    """Spheres in physical mm on the series grid (a ring-shaped, cystic lesion when ``ring``)."""
    spacing = series.image.GetSpacing()
    z, y, x = np.indices(sitk.GetArrayViewFromImage(series.image).shape, dtype=float)
    arr = np.zeros(z.shape, dtype=np.uint16)
    for value, _, (cz, cy, cx), radius in lesions:
        r = np.sqrt(
            ((z - cz) * spacing[2]) ** 2 + ((y - cy) * spacing[1]) ** 2 + ((x - cx) * spacing[0]) ** 2
        )
        arr[(r <= radius) & ((r > radius / 2) if ring else True)] = value
    labels = sitk.GetImageFromArray(arr)
    labels.CopyInformation(series.image)
    return labels


def names(lesions=LESIONS) -> dict[int, str]:
    return {value: name for value, name, _, _ in lesions}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float(np.logical_and(a, b).sum()) / float(a.sum() + b.sum())


@pytest.fixture
def series(mr_series):
    return read_series(mr_series[0])


# --- DICOM SEG ---------------------------------------------------------------------------------


def test_seg_round_trip_is_identical_and_valid(tmp_path, series) -> None:
    labels = draw_lesions(series)
    path = write_seg(
        labels,
        series,
        tmp_path / "seg.dcm",
        lesion_names=names(),
        algorithm_name="demo-unetr",
        algorithm_version="0.1",
    )
    ds = pydicom.dcmread(path)
    assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == series.info.series_instance_uid
    assert ds.StudyInstanceUID == series.info.study_instance_uid
    assert [s.SegmentLabel for s in ds.SegmentSequence] == ["L1", "L2", "L3"]
    assert [s.TrackingID for s in ds.SegmentSequence] == ["L1", "L2", "L3"]
    assert ds.SegmentSequence[0].SegmentAlgorithmName == "demo-unetr"
    back = read_seg(path, series)
    expected = sitk.GetArrayFromImage(labels)
    for value, name, _, _ in LESIONS:
        np.testing.assert_array_equal(back.mask(name), expected == value)
    assert back.colors[1] == DEFAULT_COLORS[0]
    # highdicom's own volume reader agrees, voxel for voxel
    seg = hd.seg.segread(path)
    by_source = seg.get_pixels_by_source_instance(
        [str(d.SOPInstanceUID) for d in series.source_datasets], assert_missing_frames_are_empty=True
    )
    np.testing.assert_array_equal(by_source[..., 1].astype(bool), expected == 2)


def test_seg_on_enhanced_multiframe_source(tmp_path, write_series, make_image) -> None:
    folder, files = write_series(
        make_image(direction=sitk.VersorTransform((1.0, 0.3, 0.0), 0.5).GetMatrix()), multiframe=True
    )
    series = read_series(files[0])
    labels = draw_lesions(series)
    path = write_seg(
        labels, series, tmp_path / "seg.dcm", lesion_names=names(), algorithm_name="a", algorithm_version="1"
    )
    back = read_seg(path, series)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back.labels) > 0, sitk.GetArrayFromImage(labels) > 0)
    assert pydicom.dcmread(path).ReferencedSeriesSequence[0].ReferencedInstanceSequence[
        0
    ].ReferencedSOPInstanceUID == (series.source_datasets[0].SOPInstanceUID)


def test_seg_of_another_series_is_refused(tmp_path, series, write_series) -> None:
    path = write_seg(
        draw_lesions(series),
        series,
        tmp_path / "seg.dcm",
        lesion_names=names(),
        algorithm_name="a",
        algorithm_version="1",
    )
    other = read_series(write_series(name="other")[0])
    with pytest.raises(ContourReadError):
        read_seg(path, other)


def test_reading_a_non_seg_file_as_seg(tmp_path, series, mr_series) -> None:
    with pytest.raises(ContourReadError):
        read_seg(mr_series[1][0], series)


# --- RTSTRUCT ----------------------------------------------------------------------------------


@pytest.mark.parametrize("ring", [False, True], ids=["solid", "cystic-ring"])
def test_rtstruct_round_trip_within_contour_tolerance(tmp_path, series, mr_series, ring) -> None:
    from rt_utils import RTStructBuilder

    labels = draw_lesions(series, ring=ring)
    colors = {1: (255, 0, 0), 2: (0, 255, 0), 5: (0, 0, 255)}
    path = write_rtstruct(labels, mr_series[0], tmp_path / "rt.dcm", lesion_names=names(), colors=colors)
    ds = pydicom.dcmread(path)
    assert ds.Modality == "RTSTRUCT"
    assert [r.ROIName for r in ds.StructureSetROISequence] == ["L1", "L2", "L3"]
    assert [list(c.ROIDisplayColor) for c in ds.ROIContourSequence] == [[255, 0, 0], [0, 255, 0], [0, 0, 255]]
    assert ds.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID == series.info.frame_of_reference_uid
    referenced = (
        ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    )
    assert referenced.SeriesInstanceUID == series.info.series_instance_uid
    assert {c.ReferencedSOPInstanceUID for c in referenced.ContourImageSequence} == {
        str(d.SOPInstanceUID) for d in series.source_datasets
    }
    expected = sitk.GetArrayFromImage(labels)
    back = read_rtstruct(path, series)
    # independent reader: rt-utils' builder from the series folder (its masks are [row, column, slice])
    rt = RTStructBuilder.create_from(str(mr_series[0]), str(path))
    assert rt.get_roi_names() == ["L1", "L2", "L3"]
    for value, name, _, radius in LESIONS:
        assert 2 * radius >= 5
        # contours on voxel edges, filled at voxel centres: every voxel comes back
        np.testing.assert_array_equal(back.mask(name), expected == value)
        # rt-utils rounds the corners to pixel centres and fills the polygon with its border, so it
        # reads the lesion up to half a voxel larger all round (plastimatch is the reader sites use:
        # tests/segmentation/test_rtstruct_plastimatch.py)
        assert dice(rt.get_roi_mask_by_name(name).transpose(2, 0, 1), expected == value) >= 0.85
    assert back.colors == {1: (255, 0, 0), 2: (0, 255, 0), 3: (0, 0, 255)}


def test_rtstruct_on_oblique_series(tmp_path, write_series, make_image) -> None:
    folder, _ = write_series(
        make_image(direction=sitk.VersorTransform((0.3, 0.2, 0.1), 0.4).GetMatrix()), name="obl"
    )
    series = read_series(folder)
    labels = draw_lesions(series)
    path = write_rtstruct(labels, series, tmp_path / "rt.dcm", lesion_names=names())
    back = read_rtstruct(path, series)
    expected = sitk.GetArrayFromImage(labels)
    for value, name, _, _ in LESIONS:
        np.testing.assert_array_equal(back.mask(name), expected == value)


def test_rtstruct_for_a_series_lacking_study_time_says_so(tmp_path, write_series) -> None:
    folder, _ = write_series(StudyTime=None)
    series = read_series(folder, require_rtstruct_attributes=False)
    with pytest.raises(MissingAttributeError) as info:
        write_rtstruct(draw_lesions(series), series, tmp_path / "rt.dcm", lesion_names=names())
    assert info.value.keywords == ["StudyTime"]
    assert not (tmp_path / "rt.dcm").exists()


def test_rtstruct_refuses_multiframe_and_contours_non_square_pixels(
    tmp_path, write_series, make_image
) -> None:
    _, files = write_series(multiframe=True, name="mf")
    multiframe = read_series(files[0])
    with pytest.raises(ContourExportError, match="single-frame"):
        write_rtstruct(draw_lesions(multiframe), multiframe, tmp_path / "a.dcm", lesion_names=names())
    folder, _ = write_series(make_image(spacing_mm=(0.5, 0.7, 1.0)), name="ns")
    non_square = read_series(folder)
    labels = draw_lesions(non_square)
    path = write_rtstruct(labels, non_square, tmp_path / "b.dcm", lesion_names=names())
    back = read_rtstruct(path, non_square)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back.labels) > 0, sitk.GetArrayFromImage(labels) > 0)


def test_reading_a_non_rtstruct_file(tmp_path, series, mr_series) -> None:
    with pytest.raises(ContourReadError):
        read_rtstruct(mr_series[1][0], series)


# --- bad label images (both writers) -------------------------------------------------------------


def _write_both(labels, series, tmp_path, lesion_names):
    for writer in (
        lambda: write_rtstruct(labels, series, tmp_path / "rt.dcm", lesion_names=lesion_names),
        lambda: write_seg(
            labels,
            series,
            tmp_path / "seg.dcm",
            lesion_names=lesion_names,
            algorithm_name="a",
            algorithm_version="1",
        ),
    ):
        with pytest.raises(ContourExportError):
            writer()
    assert not (tmp_path / "rt.dcm").exists() and not (tmp_path / "seg.dcm").exists()


def test_unnamed_lesion(tmp_path, series) -> None:
    _write_both(draw_lesions(series), series, tmp_path, {1: "L1", 2: "L2"})


def test_named_lesion_absent_from_the_image(tmp_path, series) -> None:
    _write_both(draw_lesions(series), series, tmp_path, {**names(), 9: "L9"})


def test_duplicate_lesion_names(tmp_path, series) -> None:
    _write_both(draw_lesions(series), series, tmp_path, {1: "L1", 2: "L1", 5: "L3"})


def test_empty_label_image(tmp_path, series) -> None:
    labels = sitk.Image(series.image.GetSize(), sitk.sitkUInt8)
    labels.CopyInformation(series.image)
    _write_both(labels, series, tmp_path, {})


def test_float_label_image(tmp_path, series) -> None:
    _write_both(sitk.Cast(draw_lesions(series), sitk.sitkFloat32), series, tmp_path, names())


def test_label_image_not_in_series_geometry(tmp_path, series) -> None:
    labels = draw_lesions(series)
    labels.SetSpacing((0.6, 0.6, 1.0))
    _write_both(labels, series, tmp_path, names())
    shifted = draw_lesions(series)
    shifted.SetOrigin((-16.0, -20.0, 5.5))  # half a slice off: planes do not coincide
    _write_both(shifted, series, tmp_path, names())


# --- NIfTI ---------------------------------------------------------------------------------------


def test_label_nifti_keeps_native_geometry_and_values(tmp_path, series) -> None:
    labels = draw_lesions(series)
    path = write_label_nifti(labels, tmp_path / "labels" / "mask.nii.gz")
    back = read_label_nifti(path)
    assert back.GetSize() == labels.GetSize()
    np.testing.assert_allclose(back.GetOrigin(), labels.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(back.GetSpacing(), labels.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(back.GetDirection(), labels.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(labels))
    with pytest.raises(ContourExportError):
        write_label_nifti(sitk.Cast(labels, sitk.sitkFloat32), tmp_path / "bad.nii.gz")


def test_writers_and_readers_accept_folders_and_file_paths(tmp_path, series, mr_series) -> None:
    folder, files = mr_series
    labels = draw_lesions(series)
    seg_path = write_seg(
        labels, files, tmp_path / "seg.dcm", lesion_names=names(), algorithm_name="a", algorithm_version="1"
    )
    rt_path = write_rtstruct(
        labels, [pydicom.dcmread(p) for p in files], tmp_path / "rt.dcm", lesion_names=names()
    )
    expected = sitk.GetArrayFromImage(labels)
    np.testing.assert_array_equal(read_seg(seg_path, folder).mask("L2"), expected == 2)
    assert dice(read_rtstruct(rt_path, folder).mask("L1"), expected == 1) >= 0.95
