"""De-identification of DICOM datasets on ingest (PS3.15 Annex E, Basic Application Confidentiality Profile).

The attribute actions are data: ``deid_profile.tsv`` beside this module is the standard's Table E.1-1
(2024b edition), one attribute a line with its Basic Profile action and the action of each option;
``tests/segmentation/test_deid_profile.py`` compares it with the table dicom-anonymizer ships. What is
done to each dataset, recursively through every sequence:

- Patient Name and Patient ID (Z) get the trial subject id as their value (a dummy value, which Z allows).
- Every attribute of the table gets its Basic Profile action: X removed, Z emptied, D a dummy value
  (:data:`DUMMY_VALUES`; a sequence marked D is kept and its items cleaned), U a new UID. Where the
  table leaves a choice, MetTrack takes the least destructive action that stays conformant whatever the
  attribute's Type: X/Z and X/Z/D empty (Z), Z/D and X/Z/D write a dummy at the top level of an
  enhanced (multi-frame) image, whose Multi-frame Functional Groups and Enhanced General Equipment
  modules make Content Date/Time, Acquisition DateTime, Device Serial Number... Type 1, and X/D removes
  (or writes a dummy there). X/Z/U* sequences keep their items, with UIDs remapped when UIDs are.
- Options (De-identification Method Code Sequence, CID 7050): Retain UIDs (113110, the default) keeps
  the attributes the table marks K for it, so the contours MetTrack returns reference the site's own
  series; with ``remap_uids=True`` every non-standard UID is replaced by a new one, consistently across
  datasets that share a ``uid_map``. Clean Descriptors (113105) is used for Contrast/Bolus Agent only
  (:func:`clean_contrast_agent`): the profile's Z/D would erase whether and which agent was given,
  which series routing and the post-contrast check read; every other descriptor is removed, which the
  option allows as the most thorough cleaning.
- Beyond the table, as safety nets: every other Person Name (PN) element is emptied, all private tags
  are removed (no Retain Safe Private option), and the whole curve and overlay groups (50xx, 60xx),
  which the table lists by their data and comments only.
- Patient Identity Removed is set to YES, Longitudinal Temporal Information Modified to REMOVED (dates
  are emptied, removed or dummies, never shifted), and De-identification Method (Code Sequence) records
  the profile and options used.

Descriptions (Study/Series Description, Protocol Name) are removed as the basic profile asks; callers
that need them read them before de-identifying (``segmentation.io.SeriesInfo`` does).
"""

from __future__ import annotations

import csv
import functools
import re
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.datadict import dictionary_has_tag, dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import UID, generate_uid

from segmentation.errors import DeidentificationError

#: PS3.15 Table E.1-1 as data (see the module docstring).
PROFILE_TABLE = Path(__file__).with_name("deid_profile.tsv")


@dataclass(frozen=True)
class ProfileAttribute:
    """One row of Table E.1-1: the tag as 8 hex digits (``X`` for a group mask, e.g. ``50XXXXXX``), the
    attribute's name, its Basic Profile action and the options' actions (column name -> action)."""

    tag: str
    name: str
    basic: str
    options: Mapping[str, str]


@functools.cache
def profile_table() -> dict[str, ProfileAttribute]:
    """Tag (8 upper-case hex digits or a group mask) -> the table's row, read from :data:`PROFILE_TABLE`."""
    with PROFILE_TABLE.open(encoding="utf-8", newline="") as handle:
        lines = [line for line in handle if not line.startswith("#")]
    table = {}
    for row in csv.DictReader(lines, delimiter="\t"):
        tag, name, basic = row.pop("tag"), row.pop("name"), row.pop("basic")
        table[tag] = ProfileAttribute(tag, name, basic, {k: v for k, v in row.items() if v})
    return table


#: UID keywords that name standard things (classes, syntaxes) rather than instances: never remapped.
_STANDARD_UID_PREFIX = "1.2.840.10008."

#: De-identification Method Code Sequence items (CID 7050).
_BASIC_PROFILE_CODE = ("113100", "Basic Application Confidentiality Profile")
_RETAIN_UIDS_CODE = ("113110", "Retain UIDs Option")
_CLEAN_DESCRIPTORS_CODE = ("113105", "Clean Descriptors Option")

METHOD_DESCRIPTION = "MetTrack: PS3.15 E.1 Basic Application Confidentiality Profile"

#: Dummy values (action D) by VR: fixed, obviously unreal values. Other VRs are emptied instead: a
#: person name among them, as a one-component dummy name is itself flagged by validators.
DUMMY_VALUES: dict[str, str] = {
    "DA": "19000101",
    "TM": "000000",
    "DT": "19000101000000",
    "LO": "ANONYMIZED",
    "SH": "ANONYMIZED",
    "CS": "ANONYMIZED",
    "ST": "ANONYMIZED",
    "LT": "ANONYMIZED",
    "UT": "ANONYMIZED",
    "UC": "ANONYMIZED",
    "IS": "0",
    "DS": "0",
}

#: How a choice of the table resolves (see the module docstring): (elsewhere, enhanced image top level).
_CHOICES: dict[str, tuple[str, str]] = {
    "X/Z": ("Z", "Z"),
    "X/D": ("X", "D"),
    "Z/D": ("Z", "D"),
    "X/Z/D": ("Z", "D"),
    "X/Z/U*": ("U*", "U*"),
}

#: Words a Contrast/Bolus Agent may hold and keep: gadolinium-based agents (generic and trade names),
#: the usual abbreviations and dose words. Anything else is free text that may identify someone.
CONTRAST_AGENT_WORDS = frozenset(
    """GADOLINIUM GD GD-DTPA GD-DOTA GD-BT-DO3A DTPA DOTA BT-DO3A HP-DO3A GADOBUTROL GADAVIST GADOVIST
    GADOTERATE GADOTERIC DOTAREM CLARISCAN ARTIREM GADOTERIDOL PROHANCE GADOBENATE MULTIHANCE GADOPENTETATE
    MAGNEVIST GADOXETATE EOVIST PRIMOVIST GADODIAMIDE OMNISCAN GADOVERSETAMIDE OPTIMARK GADOPICLENOL
    ELUCIREM VUEWAY GADOFOSVESET ABLAVAR VASOVIST MEGLUMINE DIMEGLUMINE DISODIUM ACID CONTRAST AGENT IV
    MR MRI ML MMOL MMOL/KG MMOL/ML MG MG/ML ML/KG BOLUS DOSE SINGLE DOUBLE HALF FULL STANDARD WITH AND
    POST PRE C+ +C GD+ YES""".split()  # noqa: SIM905 (a word list reads better as text)
)
#: The dummy written when the agent is free text: says that an agent was given, nothing more.
CONTRAST_AGENT_DUMMY = "CONTRAST"


def clean_contrast_agent(value: str) -> str:
    """Contrast/Bolus Agent cleaned (Clean Descriptors Option): kept when every word of it is an agent
    name, an abbreviation, a dose or a number (:data:`CONTRAST_AGENT_WORDS`), else the dummy
    ``CONTRAST``; empty stays empty."""
    words = [w for w in re.split(r"[\s,;()\[\]]+", value.upper()) if w]
    if all(w in CONTRAST_AGENT_WORDS or re.fullmatch(r"[0-9.,%+-]+[A-Z/%]*", w) for w in words):
        return value
    return CONTRAST_AGENT_DUMMY


def _code_item(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = "DCM"
    item.CodeMeaning = meaning
    return item


@functools.lru_cache(maxsize=8192)
def _action_for_tag(tag: int, retain_uids: bool) -> str | None:
    """Action for a public tag under the profile and options (None keeps it, its items cleaned).

    "X" remove, "Z" empty, "D" dummy, "Z/D", "X/D" (decided by the dataset level: :func:`_clean`),
    "U" new UID, "U*" keep a sequence whose UIDs are remapped, "S" the subject id, "C" clean the
    contrast agent.
    """
    keyword = keyword_for_tag(tag)
    if keyword in ("PatientName", "PatientID"):
        return "S"
    if keyword == "ContrastBolusAgent":
        return "C"
    row = profile_table().get(f"{tag:08X}")
    if row is None:
        return None
    if retain_uids and row.options.get("retain_uids") == "K":
        return None
    return row.basic


def _vr(ds: Dataset, tag: BaseTag) -> str:
    """The element's VR without decoding its value where the file or the dictionary says it."""
    vr = ds.get_item(tag, keep_deferred=True).VR  # a raw element read from an implicit-VR file has none
    if vr:
        return vr
    if dictionary_has_tag(tag):
        return dictionary_VR(tag)
    return ds[tag].VR


@dataclass
class _Context:
    """What cleaning one dataset needs: the subject id, the UID maps and the options in force."""

    subject_id: str
    #: Old -> new UID for every instance UID (``remap_uids``), or None when UIDs are retained.
    uid_map: MutableMapping[str, str] | None
    #: Old -> new UID for the attributes whose UIDs the table replaces even under Retain UIDs.
    u_map: MutableMapping[str, str]

    @property
    def retain_uids(self) -> bool:
        return self.uid_map is None


def _is_curve_or_overlay(group: int) -> bool:
    return 0x5000 <= group <= 0x50FF or 0x6000 <= group <= 0x60FF


def _clean(ds: Dataset, ctx: _Context, *, enhanced: bool = False) -> None:
    """Apply the profile to one dataset level and recurse into its sequences.

    Elements are looked at by tag and VR only: values stay undecoded (pydicom writes such raw elements
    back byte for byte) unless they are changed or are sequences to recurse into. Decoding every value,
    as iterating a dataset does, was most of the cost of storing an upload.

    ``enhanced``: this level is the top of an enhanced (multi-frame) image, where the table's choices
    resolve to dummies (see :data:`_CHOICES`).
    """
    for tag in list(ds.keys()):
        if tag.is_private or _is_curve_or_overlay(tag.group):
            # Private tags go level by level: this function already recurses into every sequence,
            # so pydicom's remove_private_tags (a full walk at each level) would repeat the work.
            # Curves and overlays can carry burned-in names or annotations.
            del ds[tag]
            continue
        action = _action_for_tag(tag, ctx.retain_uids)
        if action in _CHOICES:
            action = _CHOICES[action][1 if enhanced else 0]
        if action == "X":
            del ds[tag]
            continue
        _apply(ds, tag, _vr(ds, tag), action, ctx)


def _apply(ds: Dataset, tag: BaseTag, vr: str, action: str | None, ctx: _Context) -> None:
    """Apply a resolved action other than X to the element ``tag`` of ``ds``."""
    if vr == "SQ" and action in (None, "D", "U", "U*"):
        # a sequence kept, or marked D (dummy content) or U* (its UIDs replaced): clean its items
        for item in ds[tag].value:
            _clean(item, ctx)
    elif vr == "UI" and (action in ("U", "D") or (action is None and ctx.uid_map is not None)):
        elem = ds[tag]
        elem.value = _remap_uid_value(elem, ctx.uid_map if ctx.uid_map is not None else ctx.u_map)
    elif action is not None and action != "U*":
        # A replaced value is set on a new element: the old one is only decoded to clean it.
        ds[tag] = _replacement(ds, tag, vr, action, ctx.subject_id)
    elif vr == "PN":
        # any other person (operators, physicians, reviewers) is identifying
        ds[tag] = DataElement(tag, vr, None)


def _replacement(ds: Dataset, tag: BaseTag, vr: str, action: str, subject_id: str) -> DataElement:
    """The element replacing ``tag`` under ``action`` ("Z", "D", "S" or "C")."""
    if action == "S":
        return DataElement(tag, vr, subject_id)
    if action == "C":
        value = ds[tag].value
        return DataElement(tag, vr, clean_contrast_agent(str(value)) if value else value)
    if action == "D" and vr in DUMMY_VALUES:
        return DataElement(tag, vr, DUMMY_VALUES[vr])
    # Z, or a dummy of a VR without one: empty (an empty sequence for SQ)
    return DataElement(tag, vr, None if vr != "SQ" else Sequence())


def _remap_uid_value(elem: DataElement, uid_map: MutableMapping[str, str]) -> str | list[str] | None:
    values = elem.value if isinstance(elem.value, list | MultiValue) else [elem.value]
    mapped = []
    for value in values:
        value = str(value) if value is not None else ""
        if not value or value.startswith(_STANDARD_UID_PREFIX):
            mapped.append(value)
        else:
            if value not in uid_map:
                uid_map[value] = generate_uid()
            mapped.append(uid_map[value])
    return mapped if len(mapped) != 1 else mapped[0]


def deidentify_dataset(
    ds: Dataset,
    *,
    subject_id: str,
    remap_uids: bool = False,
    uid_map: MutableMapping[str, str] | None = None,
) -> Dataset:
    """De-identify one dataset in place (PS3.15 basic profile) and return it.

    Args:
        ds: The dataset; its file meta (if any) is updated too when UIDs are remapped.
        subject_id: Trial subject id written as Patient Name and Patient ID (e.g. ``"BM-001"``).
        remap_uids: Replace instance UIDs (study, series, SOP instance, frame of reference, references)
            by new ones. False keeps them (Retain UIDs option) so contours still match the site's PACS.
        uid_map: Old UID -> new UID; pass the same dict for every file of an upload so references stay
            consistent. A new dict is used when None. Without ``remap_uids`` it only maps the few UIDs
            the table replaces even under Retain UIDs (UID (0040,A124), Digital Signature UID).

    Returns:
        The same dataset object, de-identified.

    Raises:
        DeidentificationError: If ``subject_id`` is empty, too long for a LO element, or contains a
            backslash.
    """
    if not subject_id or len(subject_id) > 64 or "\\" in subject_id:
        raise DeidentificationError(
            "The trial subject id must be 1 to 64 characters without a backslash; "
            f"got {len(subject_id or '')} characters."
        )
    active_map: MutableMapping[str, str] | None = None
    if remap_uids:
        active_map = uid_map if uid_map is not None else {}
    # the UIDs the table replaces even under Retain UIDs go through the shared map too, so they stay
    # consistent across the files of one upload
    ctx = _Context(subject_id=subject_id, uid_map=active_map, u_map=uid_map if uid_map is not None else {})
    _clean(ds, ctx, enhanced="PerFrameFunctionalGroupsSequence" in ds)
    if active_map is not None and getattr(ds, "file_meta", None) is not None:
        meta_uid = ds.file_meta.get("MediaStorageSOPInstanceUID")
        if meta_uid:
            ds.file_meta.MediaStorageSOPInstanceUID = UID(active_map.get(str(meta_uid), str(meta_uid)))
    ds.PatientIdentityRemoved = "YES"
    ds.LongitudinalTemporalInformationModified = "REMOVED"
    ds.DeidentificationMethod = METHOD_DESCRIPTION
    codes = [_code_item(*_BASIC_PROFILE_CODE)]
    if not remap_uids:
        codes.append(_code_item(*_RETAIN_UIDS_CODE))
    codes.append(_code_item(*_CLEAN_DESCRIPTORS_CODE))
    ds.DeidentificationMethodCodeSequence = Sequence(codes)
    return ds


def deidentify_files(
    sources: Iterable[str | Path],
    dest_dir: str | Path,
    *,
    subject_id: str,
    remap_uids: bool = False,
    uid_map: MutableMapping[str, str] | None = None,
) -> list[Path]:
    """Write de-identified copies of DICOM files into ``dest_dir`` as ``IM_0001.dcm``, ``IM_0002.dcm``...

    Output names are neutral on purpose: site file names often contain patient names or MRNs.

    Args:
        sources: DICOM files, in the order the copies should be numbered.
        dest_dir: Output folder (created if needed).
        subject_id: Trial subject id (see :func:`deidentify_dataset`).
        remap_uids: See :func:`deidentify_dataset`.
        uid_map: Shared UID map; one is created for this call when None so the files stay consistent.

    Returns:
        The written paths, in the order of ``sources``.
    """
    out = Path(dest_dir)
    out.mkdir(parents=True, exist_ok=True)
    shared_map: MutableMapping[str, str] = uid_map if uid_map is not None else {}
    written = []
    for index, source in enumerate(sources, start=1):
        ds = pydicom.dcmread(source)
        deidentify_dataset(ds, subject_id=subject_id, remap_uids=remap_uids, uid_map=shared_map)
        path = out / f"IM_{index:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        written.append(path)
    return written


def deidentify_folder(
    src_dir: str | Path,
    dest_dir: str | Path,
    *,
    subject_id: str,
    remap_uids: bool = False,
    uid_map: MutableMapping[str, str] | None = None,
) -> list[Path]:
    """De-identify every DICOM file under ``src_dir`` (recursively) into ``dest_dir``.

    Files that are not DICOM are skipped (they are never copied, since they may identify the patient).

    Returns:
        The written paths, numbered in sorted source-path order.
    """
    sources = []
    for path in sorted(Path(src_dir).rglob("*")):
        if path.is_file() and not path.is_symlink():
            try:
                pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
            except (InvalidDicomError, OSError, ValueError):
                continue
            sources.append(path)
    return deidentify_files(sources, dest_dir, subject_id=subject_id, remap_uids=remap_uids, uid_map=uid_map)
