"""Part 10 encoding: the same bytes as pydicom's own writer, for pydicom's test files and ours.

The oracle is ``pydicom.dcmwrite(..., enforce_file_format=True)`` on an identical dataset (read again
from the same file and changed in the same way): equal output bytes, or the same exception.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_files
from pydicom.filebase import DicomBytesIO
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from segmentation.part10 import encode_part10, write_part10


def _readable_test_files() -> list[str]:
    """pydicom's bundled test files that pydicom itself reads with file meta (a few are not DICOM)."""
    readable = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in sorted(get_testdata_files("*.dcm")):
            try:
                ds = pydicom.dcmread(name, defer_size=256)
            except Exception:  # noqa: BLE001 - deliberately broken test files
                continue
            if getattr(ds, "file_meta", None) is not None and len(ds.file_meta):
                readable.append(name)
    return readable


TEST_FILES = _readable_test_files()
DIRECT_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


def _read_and_change(path: str) -> pydicom.Dataset:
    """Read with deferred large values, decode a few elements, change a few: what ingest does."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path, defer_size=256)
        ds.get("Rows"), ds.get("StudyDate"), ds.get("ImagePositionPatient")  # decoded, unchanged
        ds.PatientName = "BM-042"
        ds.PatientIdentityRemoved = "YES"
        if "StudyDate" in ds:
            ds.StudyDate = ""
    return ds


def _pydicom_bytes(ds: pydicom.Dataset) -> bytes:
    buffer = DicomBytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def test_the_test_files_exercise_the_direct_path() -> None:
    syntaxes = [
        pydicom.dcmread(f, stop_before_pixels=True).file_meta.get("TransferSyntaxUID") for f in TEST_FILES
    ]
    assert sum(s == ExplicitVRLittleEndian for s in syntaxes) >= 10
    assert sum(s == ImplicitVRLittleEndian for s in syntaxes) >= 5
    assert sum(s not in DIRECT_SYNTAXES for s in syntaxes) >= 10  # compressed, big endian, deflated


@pytest.mark.parametrize("path", TEST_FILES, ids=[Path(f).name for f in TEST_FILES])
def test_same_bytes_as_pydicom(path: str) -> None:
    expected_ds, actual_ds = _read_and_change(path), _read_and_change(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            expected = _pydicom_bytes(expected_ds)
        except Exception as exc:  # noqa: BLE001 - the encoder must fail the same way
            with pytest.raises(type(exc)):
                encode_part10(actual_ds)
            return
        actual = encode_part10(actual_ds)
    assert actual == expected
    # and pydicom reads it back to the same dataset
    assert pydicom.dcmread(DicomBytesIO(actual)).PatientName == "BM-042"


def test_file_meta_follows_a_changed_sop_instance_uid(tmp_path) -> None:
    path = next(f for f in TEST_FILES if Path(f).name == "MR_small.dcm")
    ds = pydicom.dcmread(path, defer_size=256)
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    write_part10(ds, tmp_path / "out.dcm")
    back = pydicom.dcmread(tmp_path / "out.dcm")
    assert back.file_meta.MediaStorageSOPInstanceUID == "1.2.826.0.1.3680043.8.498.1"
    assert back.SOPInstanceUID == "1.2.826.0.1.3680043.8.498.1"
    with pytest.raises(FileExistsError):  # never overwrites a stored file
        write_part10(ds, tmp_path / "out.dcm")


@pytest.mark.parametrize("path", TEST_FILES, ids=[Path(f).name for f in TEST_FILES])
def test_shared_encoded_cache_gives_the_same_bytes(path: str) -> None:
    """Elements written from the cache of an earlier file are the bytes pydicom writes for this one."""
    encoded: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            expected = _pydicom_bytes(_read_and_change(path))
        except Exception:  # noqa: BLE001 - files pydicom cannot write are covered above
            return
        first = encode_part10(_read_and_change(path), encoded=encoded)
        second = encode_part10(_read_and_change(path), encoded=encoded)
    assert first == expected
    assert second == expected


def test_cache_keys_tell_values_apart() -> None:
    """Equal tags with other values, types, VRs, character sets or syntaxes are encoded afresh."""

    def dataset(charset: str | None, implicit: bool, **elements: object) -> pydicom.Dataset:
        ds = pydicom.Dataset()
        if charset:
            ds.SpecificCharacterSet = charset
        for keyword, value in elements.items():
            setattr(ds, keyword, value)
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
        ds.set_original_encoding(implicit, True, ds._character_set)  # as dcmread records it
        return ds

    encoded: dict = {}
    variants = [
        dataset(None, False, PatientName="Doe^Jane", PatientID="BM-1", Rows=256),
        dataset(None, False, PatientName="Doe^John", PatientID="BM-2", Rows=512),
        dataset("ISO_IR 100", False, PatientName="Dö^Jane", PatientID="BM-1", Rows=256),
        dataset("ISO_IR 192", False, PatientName="Dö^Jane", PatientID="BM-1", Rows=256),  # other bytes
        dataset(None, True, PatientName="Doe^Jane", PatientID="BM-1", Rows=256),  # no VR written
        dataset(None, False, PatientName=None, PatientID="", Rows=256),
        dataset(
            None, False, PatientName="Doe^Jane", PatientID="BM-1", Rows=256, ImageType=["ORIGINAL", "PRIMARY"]
        ),
        dataset(
            None, False, PatientName="Doe^Jane", PatientID="BM-1", Rows=256, ImageType=["DERIVED", "PRIMARY"]
        ),
    ]
    for vr in ("US", "SS"):  # the same tag and value with either VR of an ambiguous element
        ds = dataset(None, False, PatientName="Doe^Jane")
        ds.add_new(0x00280106, vr, 5)
        variants.append(ds)
    for ds in variants:
        copy = pydicom.Dataset(ds)
        copy.file_meta = pydicom.dataset.FileMetaDataset(ds.file_meta)
        copy.set_original_encoding(*ds.original_encoding, ds._character_set)
        assert encode_part10(ds, encoded=encoded) == _pydicom_bytes(copy)
    assert len(encoded) > 10
