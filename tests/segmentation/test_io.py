"""Reading and validating MRI uploads: every bad input raises its own error and stores nothing.

Every test works on real files written by the test (DICOM by the synthetic writer, then edited with
pydicom where a defect is needed). Geometry is checked against SimpleITK/GDCM's independent reader or
against the image the series was written from.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from segmentation.errors import (
    AbsurdDimensionsError,
    CorruptArchiveError,
    CorruptDicomError,
    DuplicateSliceError,
    GeometryError,
    ImagingError,
    InconsistentOrientationError,
    InconsistentSpacingError,
    InputNotFoundError,
    MissingAttributeError,
    MissingSlicesError,
    MultipleSeriesError,
    NotDicomError,
    NotMRError,
    SeriesNotFoundError,
    SingleSliceError,
    UnsupportedImageError,
)
from segmentation.io import LoadedSeries, ingest_series, read_series

BRATS_T1C = Path(__file__).resolve().parents[3] / "shared" / "data" / "BraTS-MET-00110-000-t1c.nii.gz"


def assert_same_geometry_and_voxels(loaded: sitk.Image, reference: sitk.Image) -> None:
    assert loaded.GetSize() == reference.GetSize()
    np.testing.assert_allclose(loaded.GetSpacing(), reference.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(loaded.GetOrigin(), reference.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(loaded.GetDirection(), reference.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(loaded), sitk.GetArrayFromImage(reference))


def edit(path: Path, **values: object) -> None:
    """Change attributes of one written DICOM file in place."""
    ds = pydicom.dcmread(path)
    for keyword, value in values.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(path)


def zip_folder(folder: Path, target: Path) -> Path:
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(folder).as_posix())
    return target


def assert_nothing_stored(upload: Path, tmp_path: Path, error: type[ImagingError]) -> ImagingError:
    """Ingest must fail with exactly ``error`` and leave the store folder empty."""
    store = tmp_path / "store"
    store.mkdir(exist_ok=True)
    with pytest.raises(error) as info:
        ingest_series(upload, store / "series-1", subject_id="BM-001")
    assert type(info.value) is error
    assert list(store.iterdir()) == []
    assert info.value.user_message
    return info.value


# --- reading good input -------------------------------------------------------------------------


@pytest.mark.skipif(not BRATS_T1C.exists(), reason="shared BraTS-METS image not present")
def test_real_nifti_loads_with_its_geometry_and_round_trips_through_dicom(tmp_path, write_series) -> None:
    reference = sitk.ReadImage(str(BRATS_T1C))  # nibabel-independent oracle: SimpleITK's NIfTI reader
    loaded = read_series(BRATS_T1C)
    assert loaded.info.source_format == "nifti"
    assert loaded.image.GetSize() == (240, 240, 155)
    assert loaded.image.GetPixelID() == sitk.sitkInt16
    assert_same_geometry_and_voxels(loaded.image, reference)
    folder, files = write_series(loaded.image, name="brats")
    assert len(files) == 155
    back = read_series(folder)
    assert_same_geometry_and_voxels(back.image, reference)


def test_series_info_reports_uids_and_acquisition_facts(write_series, mr_image) -> None:
    folder, files = write_series(
        mr_image, MagneticFieldStrength="1.5", SeriesDescription="AX T1 MPRAGE +C", Manufacturer="Acme"
    )
    first = pydicom.dcmread(files[0])
    info = read_series(folder).info
    assert info.study_instance_uid == first.StudyInstanceUID
    assert info.series_instance_uid == first.SeriesInstanceUID
    assert info.frame_of_reference_uid == first.FrameOfReferenceUID
    assert info.modality == "MR"
    assert info.magnetic_field_strength_t == 1.5
    assert info.slice_thickness_mm == 1.0
    assert info.series_description == "AX T1 MPRAGE +C"
    assert info.contrast_bolus_agent == "GADOLINIUM"
    assert info.manufacturer == "Acme"
    assert info.number_of_slices == 24
    assert info.size == (64, 64, 24)
    assert info.spacing_mm == (0.5, 0.5, 1.0)
    assert info.origin_mm == (-16.0, -20.0, 5.0)
    assert not info.is_multiframe


@pytest.mark.parametrize("backend", ["sitk", "pydicom"])
def test_shuffled_file_names_load_in_slice_order_with_both_backends(
    tmp_path, write_series, mr_image, backend
) -> None:
    folder, files = write_series(mr_image)
    # file names must not matter: rename in reverse order into nested folders
    shuffled = tmp_path / "shuffled"
    for i, path in enumerate(reversed(files)):
        target = shuffled / f"sub{i % 3}" / f"{i:03d}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    loaded = read_series(shuffled, backend=backend)
    assert_same_geometry_and_voxels(loaded.image, mr_image)
    positions = [float(ds.ImagePositionPatient[2]) for ds in loaded.source_datasets]
    assert positions == sorted(positions)
    assert [p.parent.parent for p in loaded.source_paths] == [shuffled] * 24


def test_oblique_series_geometry_matches_gdcm(write_series, make_image) -> None:
    direction = sitk.VersorTransform((0.3, 0.2, 0.1), 0.4).GetMatrix()
    folder, _ = write_series(make_image(spacing_mm=(0.8, 0.8, 1.5), direction=direction))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    assert_same_geometry_and_voxels(read_series(folder).image, reader.Execute())


def test_compressed_series_loads_identically(write_series, mr_image) -> None:
    folder, _ = write_series(mr_image, compress="jpeg2000")
    loaded = read_series(folder)
    assert loaded.info.transfer_syntax_uid == "1.2.840.10008.1.2.4.90"
    assert_same_geometry_and_voxels(loaded.image, mr_image)


def test_enhanced_multiframe_loads_identically(write_series, make_image) -> None:
    image = make_image(direction=sitk.VersorTransform((0.0, 1.0, 0.2), 0.3).GetMatrix())
    _, files = write_series(image, multiframe=True)
    loaded = read_series(files[0])
    assert loaded.info.is_multiframe
    assert len(loaded.source_datasets) == 1
    assert_same_geometry_and_voxels(loaded.image, image)


@pytest.mark.parametrize("multiframe", [False, True], ids=["single-frame", "multi-frame"])
def test_stored_copy_keeps_every_pixel(tmp_path, write_series, make_image, multiframe) -> None:
    # 160 x 160 int16 planes (50 KB each, 2.5 MB in one multi-frame file): the multi-frame pixel data is
    # larger than the size above which ingest leaves values on disk until it writes the stored copy.
    image = make_image(shape=(20, 160, 160))
    folder, _ = write_series(image, multiframe=multiframe)
    upload = zip_folder(folder, tmp_path / "upload.zip")
    stored = ingest_series(upload, tmp_path / "store", subject_id="BM-007")
    assert all("PixelData" not in ds for ds in stored.series.source_datasets)  # headers only, as read_series
    reread = read_series(stored.stored_dir)
    assert reread.info.is_multiframe is multiframe
    assert_same_geometry_and_voxels(reread.image, image)
    assert_same_geometry_and_voxels(stored.series.image, image)
    assert str(pydicom.dcmread(stored.series.source_paths[0]).PatientID) == "BM-007"
    assert set(stored.timings_s) == {"read", "store"}


def test_zip_upload_loads_and_extract_to_keeps_the_files(tmp_path, mr_series, mr_image) -> None:
    folder, _ = mr_series
    upload = zip_folder(folder, tmp_path / "upload.zip")
    loaded = read_series(upload)
    assert_same_geometry_and_voxels(loaded.image, mr_image)
    assert loaded.source_paths == ()  # temporary extraction is gone
    kept = read_series(upload, extract_to=tmp_path / "kept")
    assert all(p.exists() for p in kept.source_paths) and len(kept.source_paths) == 24


def test_non_dicom_files_and_non_image_objects_in_an_upload_are_ignored(
    write_series, mr_series, mr_image
) -> None:
    folder, _ = mr_series
    (folder / "README.txt").write_text("exported by PACS\n")
    # an RTSTRUCT next to the images is not a second image series
    from rt_utils import RTStructBuilder

    rtstruct = RTStructBuilder.create_new(str(folder))
    rtstruct.ds.save_as(folder / "rtstruct.dcm")
    assert_same_geometry_and_voxels(read_series(folder).image, mr_image)


def test_ingest_stores_deidentified_copies_atomically(tmp_path, write_series, mr_image) -> None:
    folder, files = write_series(mr_image, PatientName="Doe^Jane", PatientID="MRN-55123")
    upload = zip_folder(folder, tmp_path / "upload.zip")
    stored = ingest_series(upload, tmp_path / "store" / "s1", subject_id="BM-007")
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["s1"]  # no staging left behind
    assert len(list(stored.stored_dir.iterdir())) == 24
    assert_same_geometry_and_voxels(read_series(stored.stored_dir).image, mr_image)
    ds = pydicom.dcmread(stored.series.source_paths[0])
    assert str(ds.PatientName) == "BM-007" and ds.PatientID == "BM-007"
    assert stored.series.info.series_instance_uid == pydicom.dcmread(files[0]).SeriesInstanceUID


def test_ingest_nifti_rewrites_the_image(tmp_path, mr_image) -> None:
    source = tmp_path / "in.nii.gz"
    sitk.WriteImage(mr_image, str(source))
    stored = ingest_series(source, tmp_path / "store" / "s1", subject_id="BM-007")
    assert [p.name for p in stored.series.source_paths] == ["image.nii.gz"]
    assert_same_geometry_and_voxels(sitk.ReadImage(str(stored.series.source_paths[0])), mr_image)


def test_loaded_series_is_frozen(mr_series) -> None:
    loaded = read_series(mr_series[0])
    assert isinstance(loaded, LoadedSeries)
    with pytest.raises(AttributeError):
        loaded.info = None  # type: ignore[misc]


# --- rule for several series -------------------------------------------------------------------


def test_several_series_are_listed_and_one_can_be_chosen(tmp_path, write_series, make_image) -> None:
    upload = tmp_path / "upload"
    write_series(make_image(seed=1), name="upload/a", series_description="T1 post-contrast")
    _, files_b = write_series(make_image(seed=2), name="upload/b", series_description="FLAIR")
    error = assert_nothing_stored(upload, tmp_path, MultipleSeriesError)
    assert "T1 post-contrast" in error.user_message and "FLAIR" in error.user_message
    assert sorted(d for _, d, _, _ in error.series) == ["FLAIR", "T1 post-contrast"]  # type: ignore[attr-defined]
    chosen = read_series(upload, series_uid=pydicom.dcmread(files_b[0]).SeriesInstanceUID)
    assert chosen.info.series_description == "FLAIR"
    assert_same_geometry_and_voxels(chosen.image, make_image(seed=2))
    with pytest.raises(SeriesNotFoundError, match="FLAIR"):
        read_series(upload, series_uid="1.2.3.4")


# --- bad input: one error class each, nothing stored --------------------------------------------


def test_missing_path(tmp_path) -> None:
    with pytest.raises(InputNotFoundError):
        read_series(tmp_path / "nope")


def _write_dicomdir(folder: Path, out: Path) -> Path:
    """A valid DICOMDIR (pydicom's File-set writer) indexing the series in ``folder``, written to ``out``."""
    from pydicom.fileset import FileSet

    file_set = FileSet()
    for path in sorted(folder.glob("*.dcm")):
        file_set.add(pydicom.dcmread(path))
    file_set.write(out)
    return out / "DICOMDIR"


@pytest.mark.parametrize("name", ["DICOMDIR", "DICOMDIR.dcm", "index"])
def test_a_dicomdir_under_any_name_is_ignored_in_a_folder_upload(tmp_path, mr_series, mr_image, name) -> None:
    dicomdir = _write_dicomdir(mr_series[0], tmp_path / "export")
    if name != "DICOMDIR":
        dicomdir = dicomdir.rename(dicomdir.with_name(name))
    assert_same_geometry_and_voxels(read_series(tmp_path / "export").image, mr_image)
    # and next to the plain files of the series
    shutil.copy(dicomdir, mr_series[0] / name)
    assert_same_geometry_and_voxels(read_series(mr_series[0]).image, mr_image)


@pytest.mark.parametrize("name", ["DICOMDIR", "DICOMDIR.dcm"])
def test_a_single_dicomdir_file_is_not_called_damaged(tmp_path, mr_series, name) -> None:
    dicomdir = _write_dicomdir(mr_series[0], tmp_path / "export")
    upload = shutil.copy(dicomdir, tmp_path / name)
    with pytest.raises(NotDicomError, match="DICOMDIR") as info:
        read_series(upload)
    assert "damaged" not in str(info.value)


def test_not_dicom_folder(tmp_path) -> None:
    upload = tmp_path / "upload"
    upload.mkdir()
    (upload / "scan.jpg").write_bytes(b"\xff\xd8\xff\xe0 not an MRI")
    (upload / "notes.txt").write_text("hello")
    assert_nothing_stored(upload, tmp_path, NotDicomError)


def test_not_dicom_single_file(tmp_path) -> None:
    upload = tmp_path / "scan.bin"
    upload.write_bytes(bytes(range(256)) * 8)
    assert_nothing_stored(upload, tmp_path, NotDicomError)


def test_damaged_zip(tmp_path, mr_series) -> None:
    upload = zip_folder(mr_series[0], tmp_path / "upload.zip")
    upload.write_bytes(upload.read_bytes()[:-200])  # cut off the central directory
    assert_nothing_stored(upload, tmp_path, CorruptArchiveError)


def test_corrupt_nifti(tmp_path) -> None:
    upload = tmp_path / "scan.nii.gz"
    upload.write_bytes(b"definitely not gzip")
    assert_nothing_stored(upload, tmp_path, NotDicomError)


@pytest.mark.parametrize("which", [0, 11, 23], ids=["first", "middle", "last"])
@pytest.mark.parametrize("keep_bytes", [132, 700, 1300])
def test_a_slice_cut_short_is_named_never_dropped(tmp_path, mr_series, which, keep_bytes) -> None:
    """A damaged first or last slice leaves no gap to notice: it must not be skipped as "not DICOM"."""
    folder, files = mr_series
    files[which].write_bytes(files[which].read_bytes()[:keep_bytes])
    upload = zip_folder(folder, tmp_path / "upload.zip")
    error = assert_nothing_stored(upload, tmp_path, CorruptDicomError)
    assert error.files == [files[which].name] and files[which].name in error.user_message


def test_a_slice_with_truncated_pixel_data_is_named(tmp_path, mr_series) -> None:
    folder, files = mr_series
    files[23].write_bytes(files[23].read_bytes()[:-100])  # header intact, pixel data 100 bytes short
    error = assert_nothing_stored(folder, tmp_path, CorruptDicomError)
    assert files[23].name in error.user_message and "cut short" in error.user_message
    assert str(tmp_path) not in error.user_message and "ITK" not in error.user_message


def test_dicom_named_like_nifti_is_not_read_as_nifti(tmp_path, write_series, make_image) -> None:
    """SimpleITK picks a reader by content: a DICOM file named .nii.gz must not be read as NIfTI,
    which would skip the DICOM checks (modality MR above all) and store it as a NIfTI upload."""
    _, files = write_series(make_image(), multiframe=True)
    upload = tmp_path / "scan.nii.gz"
    shutil.copy(files[0], upload)
    assert_nothing_stored(upload, tmp_path, NotDicomError)


def test_nifti_header_declaring_gigabytes_is_refused_before_reading(tmp_path) -> None:
    """A 1 kB .nii.gz declaring 1024^3 voxels: refused from its header, nothing unpacked."""
    import gzip

    header = np.zeros(348, np.uint8)
    header[:4] = np.frombuffer(np.int32(348).tobytes(), np.uint8)  # sizeof_hdr
    dims = np.array([3, 1024, 1024, 1024, 1, 1, 1, 1], np.int16)
    header[40:56] = np.frombuffer(dims.tobytes(), np.uint8)
    header[70:72] = np.frombuffer(np.int16(2).tobytes(), np.uint8)  # datatype uint8
    header[72:74] = np.frombuffer(np.int16(8).tobytes(), np.uint8)  # bitpix
    pixdim = np.array([1, 1, 1, 1, 1, 1, 1, 1], np.float32)
    header[76:108] = np.frombuffer(pixdim.tobytes(), np.uint8)
    header[108:112] = np.frombuffer(np.float32(352).tobytes(), np.uint8)  # vox_offset
    header[344:348] = np.frombuffer(b"n+1\0", np.uint8)
    upload = tmp_path / "bomb.nii.gz"
    with gzip.open(upload, "wb") as out:
        out.write(header.tobytes() + bytes(4) + bytes(1000))
    error = assert_nothing_stored(upload, tmp_path, AbsurdDimensionsError)
    assert "1073741824 voxels" in error.user_message


def test_gzip_nifti_named_nii_says_so(tmp_path, mr_image) -> None:
    written = tmp_path / "scan.nii.gz"
    sitk.WriteImage(mr_image, str(written))
    upload = tmp_path / "scan.nii"
    shutil.copy(written, upload)
    error = assert_nothing_stored(upload, tmp_path, NotDicomError)
    assert "name it .nii.gz" in error.user_message


def test_ct_series_is_refused(write_series) -> None:
    folder, _ = write_series(modality="CT")
    error = assert_nothing_stored(folder, folder.parent, NotMRError)
    assert "CT" in error.user_message


def test_missing_slice_names_where(write_series) -> None:
    folder, files = write_series()
    files[10].unlink()
    error = assert_nothing_stored(folder, folder.parent, MissingSlicesError)
    # slice 10 sat at z = 5 + 10 * 1 mm; the gap is between instances 10 and 12 (z 14 and 16 mm)
    assert "instance 10" in error.user_message and "instance 12" in error.user_message
    assert "14.00 mm" in error.user_message and "16.00 mm" in error.user_message


def test_duplicate_slice(write_series) -> None:
    folder, files = write_series()
    edit(files[6], ImagePositionPatient=pydicom.dcmread(files[5]).ImagePositionPatient)
    assert_nothing_stored(folder, folder.parent, DuplicateSliceError)


def test_inconsistent_orientation(write_series) -> None:
    folder, files = write_series()
    edit(files[4], ImageOrientationPatient=[1, 0, 0, 0, 0.9950042, -0.0998334])
    error = assert_nothing_stored(folder, folder.parent, InconsistentOrientationError)
    assert "instance 5" in error.user_message


def test_inconsistent_pixel_spacing(write_series) -> None:
    folder, files = write_series()
    edit(files[7], PixelSpacing=[0.6, 0.6])
    assert_nothing_stored(folder, folder.parent, InconsistentSpacingError)


def test_inconsistent_matrix_size(write_series, make_image) -> None:
    folder, files = write_series()
    small = make_image(shape=(1, 32, 32))
    other_dir = folder.parent / "other"
    from segmentation.synthetic_mr import write_dicom_series

    (replacement,) = write_dicom_series(small, other_dir, patient_id="X")
    ds = pydicom.dcmread(replacement)
    reference = pydicom.dcmread(files[3])
    for keyword in ("SeriesInstanceUID", "StudyInstanceUID", "ImagePositionPatient", "InstanceNumber"):
        setattr(ds, keyword, reference.get(keyword))
    ds.save_as(files[3])
    shutil.rmtree(other_dir)
    assert_nothing_stored(folder, folder.parent, InconsistentSpacingError)


def test_irregular_slice_spacing(write_series) -> None:
    folder, files = write_series()
    position = [float(v) for v in pydicom.dcmread(files[8]).ImagePositionPatient]
    edit(files[8], ImagePositionPatient=[position[0], position[1], position[2] + 0.3])
    assert_nothing_stored(folder, folder.parent, GeometryError)


def test_single_dicom_slice(write_series) -> None:
    folder, files = write_series()
    for path in files[1:]:
        path.unlink()
    assert_nothing_stored(folder, folder.parent, SingleSliceError)


def test_single_nifti_slice(tmp_path) -> None:
    upload = tmp_path / "slice.nii.gz"
    sitk.WriteImage(sitk.Image(64, 64, sitk.sitkInt16), str(upload))
    assert_nothing_stored(upload, tmp_path, SingleSliceError)


def test_4d_nifti_is_unsupported(tmp_path) -> None:
    upload = tmp_path / "dwi.nii.gz"
    sitk.WriteImage(sitk.Image([32, 32, 8, 3], sitk.sitkInt16), str(upload))
    assert_nothing_stored(upload, tmp_path, UnsupportedImageError)


@pytest.mark.parametrize(
    ("shape", "spacing"),
    [((24, 8, 8), (1.0, 1.0, 1.0)), ((24, 32, 32), (1.0, 1.0, 45.0)), ((24, 32, 32), (0.001, 0.001, 1.0))],
    ids=["tiny-matrix", "45mm-slices", "micron-pixels"],
)
def test_absurd_dimensions(write_series, make_image, shape, spacing) -> None:
    folder, _ = write_series(make_image(shape=shape, spacing_mm=spacing))
    assert_nothing_stored(folder, folder.parent, AbsurdDimensionsError)


def test_absurd_nifti_dimensions(tmp_path, make_image) -> None:
    upload = tmp_path / "big.nii.gz"
    image = make_image(shape=(2, 32, 32))  # 2 slices: not a 3D brain volume
    sitk.WriteImage(image, str(upload))
    assert_nothing_stored(upload, tmp_path, AbsurdDimensionsError)


@pytest.mark.parametrize("keyword", ["StudyTime", "StudyID", "SeriesNumber", "StudyDate"])
def test_series_without_an_attribute_rtstruct_needs(write_series, keyword) -> None:
    folder, _ = write_series(**{keyword: None})
    error = assert_nothing_stored(folder, folder.parent, MissingAttributeError)
    assert error.keywords == [keyword]  # type: ignore[attr-defined]
    assert keyword in error.user_message and "RTSTRUCT" in error.user_message
    relaxed = read_series(folder, require_rtstruct_attributes=False)
    assert relaxed.info.missing_rtstruct_attributes == (keyword,)


def test_slice_without_position(write_series) -> None:
    folder, files = write_series()
    edit(files[2], ImagePositionPatient=None)
    error = assert_nothing_stored(folder, folder.parent, MissingAttributeError)
    assert error.keywords == ["ImagePositionPatient"]  # type: ignore[attr-defined]


def test_colour_series_is_unsupported(write_series) -> None:
    folder, files = write_series()
    for path in files:
        edit(path, SamplesPerPixel=3)
    assert_nothing_stored(folder, folder.parent, UnsupportedImageError)


def test_only_non_image_dicom(tmp_path, mr_series) -> None:
    from rt_utils import RTStructBuilder

    folder, _ = mr_series
    upload = tmp_path / "only-rtstruct"
    upload.mkdir()
    RTStructBuilder.create_new(str(folder)).ds.save_as(upload / "rs.dcm")
    error = assert_nothing_stored(upload, tmp_path, NotDicomError)
    assert "no image" in error.user_message
