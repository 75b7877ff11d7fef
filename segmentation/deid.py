"""De-identification of DICOM datasets on ingest (PS3.15 Annex E, Basic Application Confidentiality Profile).

What is done to each dataset, recursively through every sequence:

- Patient Name and Patient ID become the trial subject id (action D, a dummy value).
- Attributes of the basic profile with action Z (Type 2, must stay present) are emptied, those with
  action X are removed. The table below is the basic profile's list for the attributes that occur in
  MR images, RT structure sets and segmentations; on top of it, as catch-alls that the profile implies,
  every other Person Name (PN) element is emptied, every free-text comment element and every element
  naming an institution, organisation, address or telephone number is removed, and all private tags
  and overlay/curve groups (60xx, 50xx) are removed.
- UIDs are kept by default (the profile's Retain UIDs option, code 113110) so the contours MetTrack
  returns reference the site's own series. With ``remap_uids=True`` every non-standard UID is replaced
  by a new one, consistently across datasets that share a ``uid_map`` (action U).
- Patient Identity Removed is set to YES and De-identification Method (Code Sequence) records the
  profile and options used.

Descriptions (Study/Series Description, Protocol Name) are removed as the basic profile asks; callers
that need them read them before de-identifying (``segmentation.io.SeriesInfo`` does).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, MutableMapping
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

#: Basic profile action per keyword: "Z" empty the value (attribute stays), "X" remove.
#: Patient Name / ID (action D) and UIDs (action U or Retain UIDs) are handled separately.
BASIC_PROFILE_ACTIONS: dict[str, str] = {
    # Patient module and patient-identifying attributes
    "PatientBirthDate": "Z",
    "PatientSex": "Z",
    "PatientBirthTime": "X",
    "PatientAge": "X",
    "PatientSize": "X",
    "PatientWeight": "X",
    "PatientAddress": "X",
    "PatientTelephoneNumbers": "X",
    "PatientTelecomInformation": "X",
    "PatientMotherBirthName": "X",
    "PatientBirthName": "X",
    "PatientReligiousPreference": "X",
    "PatientComments": "X",
    "PatientState": "X",
    "PatientInsurancePlanCodeSequence": "X",
    "PatientPrimaryLanguageCodeSequence": "X",
    "OtherPatientIDs": "X",
    "OtherPatientIDsSequence": "X",
    "OtherPatientNames": "X",
    "IssuerOfPatientID": "X",
    "IssuerOfPatientIDQualifiersSequence": "X",
    "MedicalRecordLocator": "X",
    "MilitaryRank": "X",
    "BranchOfService": "X",
    "EthnicGroup": "X",
    "Occupation": "X",
    "AdditionalPatientHistory": "X",
    "MedicalAlerts": "X",
    "Allergies": "X",
    "SmokingStatus": "X",
    "PregnancyStatus": "X",
    "LastMenstrualDate": "X",
    "CountryOfResidence": "X",
    "RegionOfResidence": "X",
    "ResponsiblePerson": "X",
    "ResponsibleOrganization": "X",
    "PatientSexNeutered": "X",
    "SpecialNeeds": "X",
    "InsurancePlanIdentification": "X",
    "ReferencedPatientSequence": "X",
    "ReferencedPatientPhotoSequence": "X",
    # Study, visit and request
    "AccessionNumber": "Z",
    "StudyID": "Z",
    "StudyDate": "Z",
    "StudyTime": "Z",
    "ReferringPhysicianName": "Z",
    "ReferringPhysicianAddress": "X",
    "ReferringPhysicianTelephoneNumbers": "X",
    "ReferringPhysicianIdentificationSequence": "X",
    "ConsultingPhysicianName": "X",
    "PhysiciansOfRecord": "X",
    "PhysiciansOfRecordIdentificationSequence": "X",
    "NameOfPhysiciansReadingStudy": "X",
    "PhysiciansReadingStudyIdentificationSequence": "X",
    "RequestingPhysician": "X",
    "RequestingService": "X",
    "RequestAttributesSequence": "X",
    "RequestedProcedureDescription": "X",
    "RequestedProcedureID": "X",
    "ScheduledProcedureStepID": "X",
    "PerformedProcedureStepID": "X",
    "PerformedProcedureStepDescription": "X",
    "PerformedProcedureStepStartDate": "X",
    "PerformedProcedureStepStartTime": "X",
    "PerformedProcedureStepEndDate": "X",
    "PerformedProcedureStepEndTime": "X",
    "AdmissionID": "X",
    "AdmittingDiagnosesDescription": "X",
    "AdmittingDiagnosesCodeSequence": "X",
    "ReasonForStudy": "X",
    "ReasonForTheRequestedProcedure": "X",
    "RequestedContrastAgent": "X",
    "StudyDescription": "X",
    "ProcedureCodeSequence": "X",
    "ReferencedStudySequence": "X",
    "ReferencedPerformedProcedureStepSequence": "X",
    "OrderCallbackPhoneNumber": "X",
    "OrderEnteredBy": "X",
    "OrderEntererLocation": "X",
    "PlacerOrderNumberImagingServiceRequest": "X",
    "FillerOrderNumberImagingServiceRequest": "X",
    "ClinicalTrialSponsorName": "K",
    # Series and acquisition
    "SeriesDescription": "X",
    "ProtocolName": "X",
    "SeriesDate": "X",
    "SeriesTime": "X",
    "AcquisitionDate": "X",
    "AcquisitionTime": "X",
    "AcquisitionDateTime": "X",
    "ContentDate": "Z/D",
    "ContentTime": "Z/D",
    "FrameAcquisitionDateTime": "D",
    "FrameReferenceDateTime": "D",
    "InstanceCreationDate": "X",
    "InstanceCreationTime": "X",
    "OperatorsName": "X",
    "OperatorIdentificationSequence": "X",
    "PerformingPhysicianName": "X",
    "PerformingPhysicianIdentificationSequence": "X",
    "ContentCreatorName": "Z",
    "ReviewerName": "X",
    "ReferencedImageSequence": "K",
    "DerivationDescription": "X",
    "ImageComments": "X",
    "AcquisitionComments": "X",
    "FrameComments": "X",
    "ContrastBolusAgent": "K",
    # Equipment and institution
    "InstitutionName": "X",
    "InstitutionAddress": "X",
    "InstitutionalDepartmentName": "X",
    "InstitutionCodeSequence": "X",
    "StationName": "X",
    "DeviceSerialNumber": "X",
    "DeviceUID": "X",
    "PlateID": "X",
    "GantryID": "X",
    "DetectorID": "X",
    "CassetteID": "X",
    "GeneratorID": "X",
    # Structure sets and segmentations
    "StructureSetDate": "X",
    "StructureSetTime": "X",
    "StructureSetName": "X",
    "StructureSetDescription": "X",
    "ROIGenerationDescription": "X",
    "ROIInterpreter": "Z",
    "ApprovalStatus": "K",
    # Free text and identifiers elsewhere
    "TextString": "X",
    "TextComments": "X",
    "StudyComments": "X",
    "VisitComments": "X",
    "InterpretationText": "X",
    "ImpressionText": "X",
    "DigitalSignaturesSequence": "X",
    "OriginalAttributesSequence": "X",
    "ModifiedAttributesSequence": "X",
    "ContributingEquipmentSequence": "X",
    "CurrentPatientLocation": "X",
    "PatientInstitutionResidence": "X",
    "DataSetTrailingPadding": "X",
    "VerifyingOrganization": "X",
    "VerificationDateTime": "X",
    "VerifyingObserverIdentificationCodeSequence": "Z",
    "PersonIdentificationCodeSequence": "X",
    "ContentCreatorIdentificationCodeSequence": "X",
}

#: UID keywords that name standard things (classes, syntaxes) rather than instances: never remapped.
_STANDARD_UID_PREFIX = "1.2.840.10008."

#: De-identification Method Code Sequence items (CID 7050): basic profile, and Retain UIDs option.
_BASIC_PROFILE_CODE = ("113100", "Basic Application Confidentiality Profile")
_RETAIN_UIDS_CODE = ("113110", "Retain UIDs Option")

METHOD_DESCRIPTION = "MetTrack: PS3.15 E.1 Basic Application Confidentiality Profile"


def _code_item(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = "DCM"
    item.CodeMeaning = meaning
    return item


#: Keyword fragments of attributes that name people's places or organisations; removed wherever they occur
#: (the basic profile lists each, e.g. Verifying Organization, Person Address, Institution Name).
_IDENTIFYING_FRAGMENTS = ("Institution", "Organization", "Address", "Telephone", "Telecom")


def _is_free_text_comment(keyword: str) -> bool:
    return keyword.endswith("Comments") or keyword.endswith("Comment")


def _is_identifying_by_name(keyword: str) -> bool:
    if keyword.startswith("Dimension"):
        # Dimension Organization / Index (multi-frame): how frames are indexed, no organisation's name
        return False
    return _is_free_text_comment(keyword) or any(fragment in keyword for fragment in _IDENTIFYING_FRAGMENTS)


#: Dummy values (action D) of dates and times: a fixed, obviously unreal instant.
DUMMY_VALUES: dict[str, str] = {"DA": "19000101", "TM": "000000", "DT": "19000101000000"}


@functools.lru_cache(maxsize=4096)
def _action_for_tag(tag: int) -> str | None:
    """Action for a public tag: "X" remove, "Z" empty, "D" dummy value, "Z/D" empty unless Type 1
    (:func:`_clean` decides), "S" the subject id, None keep."""
    keyword = keyword_for_tag(tag)
    if keyword in ("PatientName", "PatientID"):
        return "S"
    action = BASIC_PROFILE_ACTIONS.get(keyword)
    if action is None and _is_identifying_by_name(keyword):
        action = "X"
    return action


def _vr(ds: Dataset, tag: BaseTag) -> str:
    """The element's VR without decoding its value where the file or the dictionary says it."""
    vr = ds.get_item(tag, keep_deferred=True).VR  # a raw element read from an implicit-VR file has none
    if vr:
        return vr
    if dictionary_has_tag(tag):
        return dictionary_VR(tag)
    return ds[tag].VR


def _clean(
    ds: Dataset, subject_id: str, uid_map: MutableMapping[str, str] | None, *, type1_dates: bool = False
) -> None:
    """Apply the profile to one dataset level and recurse into its sequences.

    Elements are looked at by tag and VR only: values stay undecoded (pydicom writes such raw elements
    back byte for byte) unless they are changed or are sequences to recurse into. Decoding every value,
    as iterating a dataset does, was most of the cost of storing an upload.

    ``type1_dates``: the dataset's Content Date and Time are Type 1 (the Multi-frame Functional Groups
    module of an enhanced image), so the profile's Z/D writes dummy values instead of emptying them.
    """
    for tag in list(ds.keys()):
        if tag.is_private:
            # Private tags go level by level: this function already recurses into every sequence,
            # so pydicom's remove_private_tags (a full walk at each level) would repeat the work.
            del ds[tag]
            continue
        group = tag.group
        if 0x5000 <= group <= 0x50FF or 0x6000 <= group <= 0x60FF:
            # curves and overlays can carry burned-in names or annotations
            del ds[tag]
            continue
        action = _action_for_tag(tag)
        if action == "X":
            del ds[tag]
            continue
        vr = _vr(ds, tag)
        if action in ("Z", "D", "Z/D", "S"):
            # A replaced value is set on a new element: the old one is never decoded.
            ds[tag] = _replacement(tag, vr, action, subject_id, type1_dates=type1_dates)
        elif vr == "PN":
            # any other person (operators, physicians, reviewers) is identifying
            ds[tag] = DataElement(tag, vr, None)
        elif vr == "UI" and uid_map is not None:
            elem = ds[tag]
            elem.value = _remap_uid_value(elem, uid_map)
        elif vr == "SQ":
            for item in ds[tag].value:
                _clean(item, subject_id, uid_map)


def _replacement(tag: BaseTag, vr: str, action: str, subject_id: str, *, type1_dates: bool) -> DataElement:
    """The element replacing ``tag`` under ``action`` ("Z", "D", "Z/D" or "S")."""
    if action == "Z/D":
        action = "D" if type1_dates else "Z"
    if action == "S":
        return DataElement(tag, vr, subject_id)
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
            consistent. A new dict is used when None. Ignored unless ``remap_uids``.

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
    _clean(ds, subject_id, active_map, type1_dates="PerFrameFunctionalGroupsSequence" in ds)
    if active_map is not None and getattr(ds, "file_meta", None) is not None:
        meta_uid = ds.file_meta.get("MediaStorageSOPInstanceUID")
        if meta_uid:
            ds.file_meta.MediaStorageSOPInstanceUID = UID(active_map.get(str(meta_uid), str(meta_uid)))
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = METHOD_DESCRIPTION
    codes = [_code_item(*_BASIC_PROFILE_CODE)]
    if not remap_uids:
        codes.append(_code_item(*_RETAIN_UIDS_CODE))
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
