"""Encoding a dataset as a DICOM Part 10 file, as pydicom does, faster for elements kept as read.

Storing an upload writes one de-identified file per slice (90 to 400 per series). pydicom's writer costs
about 40 us per element through its generic path, even for an element it only copies: an element still
in its raw form (never decoded since it was read) is written as its original value bytes behind a new tag,
VR and length header. :func:`encode_part10` writes exactly those raw elements directly (a ``struct.pack``
of the header, then the bytes pydicom would copy) and hands every other element to pydicom's own
``write_data_element``. The file meta information is validated by pydicom's ``validate_file_meta`` and
written the same way, behind its group length, as pydicom's ``write_file_meta_info`` writes it.

Elements de-identification changes are mostly the same in every file of a series (the subject id, the
emptied dates, the method code sequence): given an ``encoded`` cache shared by the files of an upload,
an element whose tag, VR, value, character set and encoding were written before is written as the bytes
pydicom produced that time (:func:`_element_key` says which values are compared; anything else is
encoded afresh).

Only the two uncompressed little-endian transfer syntaxes get the direct path, and only when pydicom
itself would write the raw bytes unchanged (same encoding and character set as read); otherwise the
dataset goes to :func:`pydicom.dcmwrite` whole. The output is the same bytes as
``dcmwrite(..., enforce_file_format=True)`` (tested byte for byte in tests/segmentation/test_part10.py).
Written here because pydicom has no faster path for copying raw elements.
"""

from __future__ import annotations

import struct
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, cast

from pydicom import dcmwrite
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset, validate_file_meta
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, PersonName

#: Explicit VRs whose length field is 4 bytes after 2 reserved bytes (PS3.5 7.1.2).
_LONG_VRS = frozenset(str(vr) for vr in EXPLICIT_VR_LENGTH_32)
_UNDEFINED_LENGTH = 0xFFFFFFFF
_GROUP_LENGTH = 0x00020000  # File Meta Information Group Length
_EXPLICIT_SHORT = struct.Struct("<HH2sH")
_EXPLICIT_LONG = struct.Struct("<HH2sHL")
_IMPLICIT = struct.Struct("<HHL")
#: Value types compared by equality for the ``encoded`` cache (exact types: pydicom's DS/IS subclasses
#: keep their original text, so they are encoded afresh).
_PLAIN_TYPES = frozenset({str, UID, bytes, int, float, type(None)})


def _value_key(value: Any) -> Any:
    """A hashable stand-in for a value that determines its encoding, or None when there is none."""
    kind = type(value)
    if kind in _PLAIN_TYPES:
        return (kind, value)
    if kind is PersonName:
        return (kind, str(value), value.original_string)
    if kind is MultiValue or kind is list:
        keys = tuple(_value_key(v) for v in value)
        return None if any(k is None for k in keys) else ("multi", keys)
    if kind is Sequence:
        items = []
        for item in value:
            elements = []
            for tag in sorted(item.keys()):  # noqa: SIM118 - iterating a Dataset decodes every element
                elem = item.get_item(tag)
                key = None if elem.is_raw else _element_key(elem)
                if key is None:
                    return None
                elements.append(key)
            items.append((getattr(item, "is_undefined_length_sequence_item", False), tuple(elements)))
        return ("sequence", tuple(items))
    return None


def _element_key(elem: DataElement) -> Any:
    value = _value_key(elem.value)
    return None if value is None else (elem.tag, elem.VR, elem.is_undefined_length, value)


def write_part10(ds: Dataset, path: str | Path, *, encoded: MutableMapping[Any, bytes] | None = None) -> None:
    """Write ``ds`` to ``path`` as :func:`encode_part10` encodes it (the file must not exist)."""
    with open(path, "xb") as handle:
        handle.write(encode_part10(ds, encoded=encoded))


def encode_part10(ds: Dataset, *, encoded: MutableMapping[Any, bytes] | None = None) -> bytes:
    """The bytes ``pydicom.dcmwrite(buffer, ds, enforce_file_format=True)`` writes.

    Like dcmwrite with ``enforce_file_format``, the dataset's file meta gets the Media Storage SOP Class
    and Instance UIDs of the dataset (here in place, where dcmwrite changes a copy) and the group length.

    Args:
        ds: A dataset with file meta (as read by ``pydicom.dcmread``).
        encoded: Bytes of elements encoded before, shared by the files of one upload (filled here);
            None encodes every changed element afresh.

    Raises:
        Whatever pydicom raises for a dataset it cannot write (e.g. invalid file meta).
    """
    file_meta: FileMetaDataset | None = getattr(ds, "file_meta", None)
    syntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    implicit = (
        None if syntax is None else {ExplicitVRLittleEndian: False, ImplicitVRLittleEndian: True}.get(syntax)
    )
    preamble = getattr(ds, "preamble", None) or b"\x00" * 128
    if (
        file_meta is None  # (then implicit is None too; said again for the type checker)
        or implicit is None
        or len(preamble) != 128
        or any(tag.group in (0, 2) for tag in ds.keys())  # noqa: SIM118 - dcmwrite refuses these (iterating a Dataset would decode every element)
        or ds.original_encoding != (implicit, True)
        or ds.original_character_set != ds._character_set  # pydicom re-encodes every text element then
    ):
        buffer = DicomBytesIO()
        dcmwrite(buffer, ds, enforce_file_format=True)
        return buffer.getvalue()

    for meta_keyword, keyword in (
        ("MediaStorageSOPClassUID", "SOPClassUID"),
        ("MediaStorageSOPInstanceUID", "SOPInstanceUID"),
    ):
        value = ds.get(keyword)
        if file_meta.get(meta_keyword) is None or (value and value != file_meta.get(meta_keyword)):
            setattr(file_meta, meta_keyword, value)
    fp = DicomBytesIO()
    fp.write(preamble)
    fp.write(b"DICM")
    _write_file_meta(fp, file_meta, encoded)
    fp.is_implicit_VR, fp.is_little_endian = implicit, True
    _write_elements(
        fp, ds, implicit=implicit, charset=ds.get("SpecificCharacterSet", "iso8859"), encoded=encoded
    )
    return fp.getvalue()


def _write_file_meta(
    fp: DicomBytesIO, file_meta: FileMetaDataset, encoded: MutableMapping[Any, bytes] | None
) -> None:
    """pydicom's ``write_file_meta_info(fp, file_meta, enforce_standard=True)``, elements through the cache."""
    validate_file_meta(file_meta, enforce_standard=True)  # raises as dcmwrite does; adds what it may
    if "FileMetaInformationGroupLength" not in file_meta:
        file_meta.FileMetaInformationGroupLength = 0
    body = DicomBytesIO()
    body.is_implicit_VR, body.is_little_endian = False, True
    _write_elements(body, file_meta, implicit=False, charset="iso8859", encoded=encoded, skip=_GROUP_LENGTH)
    length = body.tell()
    file_meta.FileMetaInformationGroupLength = length  # as pydicom does
    fp.write(_EXPLICIT_SHORT.pack(0x0002, 0x0000, b"UL", 4))
    fp.write(struct.pack("<L", length))
    fp.write(body.getvalue())


def _write_elements(
    fp: DicomBytesIO,
    ds: Dataset,
    *,
    implicit: bool,
    charset: Any,
    encoded: MutableMapping[Any, bytes] | None,
    skip: int | None = None,
) -> None:
    # what else the bytes of an element depend on
    context = (implicit, tuple(charset) if isinstance(charset, MultiValue) else charset)
    write = fp.write
    for tag in sorted(ds.keys()):
        if (tag.element == 0 and tag.group > 6) or (skip is not None and tag == skip):  # PS3.5 7.2
            continue
        elem = ds.get_item(tag)  # reads a deferred value (the pixel data) from the source file
        value = elem.value if elem.is_raw else None
        # A raw element is a RawDataElement, which pydicom's get_item overload types as a DataElement.
        if value is not None and cast(RawDataElement, elem).length != _UNDEFINED_LENGTH:
            size = len(value)
            if implicit:
                write(_IMPLICIT.pack(tag.group, tag.element, size))
                write(value)
                continue
            vr = elem.VR
            if vr in _LONG_VRS:
                write(_EXPLICIT_LONG.pack(tag.group, tag.element, vr.encode("ascii"), 0, size))
                write(value)
                continue
            if vr is not None and len(vr) == 2 and size <= 0xFFFF:
                write(_EXPLICIT_SHORT.pack(tag.group, tag.element, vr.encode("ascii"), size))
                write(value)
                continue
        key = None if encoded is None or elem.is_raw else _element_key(elem)
        if key is None or encoded is None:  # (encoded None makes key None; said for the type checker)
            write_data_element(fp, elem, charset)  # the unusual raw ones, and values not compared
            continue
        key = (context, key)
        data = encoded.get(key)
        if data is None:
            buffer = DicomBytesIO()
            buffer.is_implicit_VR, buffer.is_little_endian = implicit, True
            write_data_element(buffer, elem, charset)  # decoded or changed elements
            data = encoded[key] = buffer.getvalue()
        write(data)
