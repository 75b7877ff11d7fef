"""DICOM SR of the lesion measurements: a TID 1500 Measurement Report (Comprehensive 3D SR, highdicom).

One per analysed visit. One measurement group per lesion (TID 1411 volumetric ROI), tracked by the
lesion's stable label (L1, L2, ...) as Tracking Identifier and a Tracking UID that stays the same for
that lesion at every visit (:func:`tracking_uid`), pointing at its segment of the run's DICOM SEG (whose
segment carries the same Tracking ID and UID), with the RANO-BM measurements in mm: longest diameter
(SCT Long axis), perpendicular diameter (SCT Short axis), volume (mm3), and the lesion's RANO-BM role
(target, non-target, new) as a qualitative evaluation. The visit's RANO-BM response (the AI draft, or
the reader's signed response with the signer as person observer) is a qualitative evaluation of a
visit-level measurement group (TID 1501). No standard code names a RANO-BM role or response, so both
use MetTrack's private coding scheme :data:`SCHEME` (concepts in :data:`ROLE_CONCEPT`,
:data:`RESPONSE_CONCEPT`, values in :data:`ROLE_CODES`, :data:`RESPONSE_CODES`). The report belongs to
the study of the source series, so a PACS files it beside the images and the SEG.
"""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import generate_uid

from segmentation.errors import ContourExportError

#: Finding type of every group: SCT 94225005 "Metastatic malignant neoplasm to brain".
FINDING = ("94225005", "SCT", "Metastatic malignant neoplasm to brain")
#: Procedure reported: LOINC 24590-2 "MR Brain WO and W contrast IV".
PROCEDURE = ("24590-2", "LN", "MR Brain WO and W contrast IV")


#: MetTrack's private coding scheme (PS3.16 8.2: "99" + the organisation's abbreviation).
SCHEME = "99METTRACK"
ROLE_CONCEPT = ("RANO-BM-ROLE", SCHEME, "RANO-BM lesion role")
RESPONSE_CONCEPT = ("RANO-BM-RESPONSE", SCHEME, "RANO-BM overall response")
ROLE_CODES = {
    "target": ("TARGET", SCHEME, "Target lesion"),
    "non_target": ("NON-TARGET", SCHEME, "Non-target lesion"),
    "new": ("NEW", SCHEME, "New lesion"),
}
RESPONSE_CODES = {
    "CR": ("CR", SCHEME, "Complete response"),
    "PR": ("PR", SCHEME, "Partial response"),
    "SD": ("SD", SCHEME, "Stable disease"),
    "PD": ("PD", SCHEME, "Progressive disease"),
    "NE": ("NE", SCHEME, "Not evaluable"),
    "NON-CR/NON-PD": ("NON-CR/NON-PD", SCHEME, "Non-CR/non-PD"),
}
#: Namespace of the lesions' tracking UIDs (a fixed random UUID: changing it changes every UID).
_TRACKING_NAMESPACE = uuid.UUID("5b0f6c8e-3f1d-4a57-9a43-2f6d1c0e8b71")


def tracking_uid(key: str) -> str:
    """The Tracking UID of the lesion identified by ``key``: a UUID-derived UID (PS3.5 B.2, root 2.25)
    of a name-based UUID (RFC 4122 version 5), so the same lesion gets the same UID at every visit and
    in every object (SEG segment, SR group) without storing it."""
    return f"2.25.{uuid.uuid5(_TRACKING_NAMESPACE, key).int}"


@dataclass(frozen=True)
class LesionMeasurement:
    """One lesion at one visit, as reported: its label (the SEG segment's label) and sizes in mm / mm3,
    its tracking UID (None: a new one, untracked) and RANO-BM role (a key of :data:`ROLE_CODES`)."""

    label: str
    longest_diameter_mm: float | None
    perpendicular_diameter_mm: float | None
    volume_mm3: float | None
    tracking_uid: str | None = None
    role: str | None = None


@dataclass(frozen=True)
class VisitResponse:
    """The visit's RANO-BM overall response (a key of :data:`RESPONSE_CODES`; empty at baseline, which
    has none), whether a reader signed it, and who (the person observer of the report; empty for the AI
    draft)."""

    response: str
    signed: bool = False
    signer: str = ""


def write_measurement_report(
    seg_path: str | Path,
    source_paths: Sequence[str | Path],
    lesions: Sequence[LesionMeasurement],
    out_path: str | Path,
    *,
    series_description: str = "MetTrack measurements",
    device_name: str = "MetTrack",
    response: VisitResponse | None = None,
    time_point: str = "",
) -> Path:
    """Write the Measurement Report of ``lesions``, each referencing the SEG segment of its label.

    Args:
        response: The visit's RANO-BM response, reported as a qualitative evaluation (None: none yet).
        time_point: The visit's label (e.g. ``FU1``), the Time Point of every group.

    Raises:
        ContourExportError: a lesion without a segment in the SEG, an unknown role or response, or
            highdicom refusing the content.
    """
    import highdicom as hd
    from highdicom.sr import (
        Comprehensive3DSR,
        DeviceObserverIdentifyingAttributes,
        Measurement,
        MeasurementReport,
        MeasurementsAndQualitativeEvaluations,
        ObservationContext,
        ObserverContext,
        PersonObserverIdentifyingAttributes,
        QualitativeEvaluation,
        ReferencedSegment,
        TimePointContext,
        TrackingIdentifier,
        VolumetricROIMeasurementsAndQualitativeEvaluations,
    )
    from pydicom.sr.codedict import codes

    seg = pydicom.dcmread(seg_path)
    segments = {str(item.SegmentLabel): int(item.SegmentNumber) for item in seg.SegmentSequence}
    groups: list[Any] = []
    for lesion in lesions:
        if lesion.label not in segments:
            raise ContourExportError(f"Lesion {lesion.label} has no segment in the SEG; no SR written.")
        values = (
            (codes.SCT.LongAxis, lesion.longest_diameter_mm, codes.UCUM.Millimeter),
            (codes.SCT.ShortAxis, lesion.perpendicular_diameter_mm, codes.UCUM.Millimeter),
            (codes.SCT.Volume, lesion.volume_mm3, codes.UCUM.CubicMillimeter),
        )
        measurements = [
            Measurement(name=name, value=float(value), unit=unit)
            for name, value, unit in values
            if value is not None
        ]
        if lesion.role is not None and lesion.role not in ROLE_CODES:
            raise ContourExportError(f"Lesion {lesion.label} has an unknown role {lesion.role!r}.")
        roles = [
            QualitativeEvaluation(
                name=hd.sr.CodedConcept(*ROLE_CONCEPT), value=hd.sr.CodedConcept(*ROLE_CODES[lesion.role])
            )
        ] if lesion.role else []  # fmt: skip
        groups.append(
            VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=TrackingIdentifier(
                    uid=lesion.tracking_uid or generate_uid(), identifier=lesion.label
                ),
                referenced_segment=ReferencedSegment.from_segmentation(
                    seg, segment_number=segments[lesion.label]
                ),
                time_point_context=TimePointContext(time_point=time_point) if time_point else None,
                finding_type=hd.sr.CodedConcept(*FINDING),
                measurements=measurements,
                qualitative_evaluations=roles or None,
            )
        )
    if response is not None and response.response:
        if response.response not in RESPONSE_CODES:
            raise ContourExportError(f"Unknown RANO-BM response {response.response!r}; no SR written.")
        groups.append(
            MeasurementsAndQualitativeEvaluations(
                tracking_identifier=TrackingIdentifier(
                    uid=generate_uid(), identifier="RANO-BM response (signed)" if response.signed else
                    "RANO-BM response (AI draft)",
                ),
                time_point_context=TimePointContext(time_point=time_point) if time_point else None,
                qualitative_evaluations=[
                    QualitativeEvaluation(
                        name=hd.sr.CodedConcept(*RESPONSE_CONCEPT),
                        value=hd.sr.CodedConcept(*RESPONSE_CODES[response.response]),
                    )
                ],
            )
        )  # fmt: skip
    observer = ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=generate_uid(), name=device_name
        ),
    )
    person = None
    if response is not None and response.signed and response.signer:
        person = ObserverContext(
            observer_type=codes.DCM.Person,
            observer_identifying_attributes=PersonObserverIdentifyingAttributes(name=response.signer),
        )
    report = MeasurementReport(
        observation_context=ObservationContext(
            observer_person_context=person, observer_device_context=observer
        ),
        procedure_reported=hd.sr.CodedConcept(*PROCEDURE),
        imaging_measurements=groups,
    )
    sources = [pydicom.dcmread(path, stop_before_pixels=True) for path in source_paths]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # a subject id is a one-component person name
            sr = Comprehensive3DSR(
                evidence=[seg, *sources],
                content=report,
                series_instance_uid=generate_uid(),
                series_number=int(seg.get("SeriesNumber", 1) or 1) + 1,
                sop_instance_uid=generate_uid(),
                instance_number=1,
                manufacturer=device_name,
                series_description=series_description,
            )
    except (ValueError, TypeError, AttributeError) as exc:
        raise ContourExportError(f"The measurement report could not be encoded: {exc}") from exc
    if response is not None or any(lesion.role for lesion in lesions):
        # a private coding scheme is declared in the instance (PS3.3 C.12.1.1.2.1)
        scheme = pydicom.Dataset()
        scheme.CodingSchemeDesignator = SCHEME
        scheme.CodingSchemeName = "MetTrack RANO-BM terms"
        scheme.CodingSchemeResponsibleOrganization = "MetTrack"
        sr.CodingSchemeIdentificationSequence = [scheme]
    out = Path(out_path)
    sr.save_as(out)
    return out


__all__ = [
    "FINDING",
    "PROCEDURE",
    "RESPONSE_CODES",
    "ROLE_CODES",
    "SCHEME",
    "LesionMeasurement",
    "VisitResponse",
    "tracking_uid",
    "write_measurement_report",
]
