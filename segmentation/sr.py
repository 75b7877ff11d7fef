"""DICOM SR of the lesion measurements: a TID 1500 Measurement Report (Comprehensive 3D SR, highdicom).

One measurement group per lesion (TID 1411 volumetric ROI), tracked by the lesion's stable label (L1,
L2, ...) and pointing at its segment of the run's DICOM SEG, with the RANO-BM measurements in mm:
longest diameter (SCT Long axis), perpendicular diameter (SCT Short axis) and volume (mm3). The report
belongs to the study of the source series, so a PACS files it beside the images and the SEG.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

from segmentation.errors import ContourExportError

#: Finding type of every group: SCT 94225005 "Metastatic malignant neoplasm to brain".
FINDING = ("94225005", "SCT", "Metastatic malignant neoplasm to brain")
#: Procedure reported: LOINC 24590-2 "MR Brain WO and W contrast IV".
PROCEDURE = ("24590-2", "LN", "MR Brain WO and W contrast IV")


@dataclass(frozen=True)
class LesionMeasurement:
    """One lesion at one visit, as reported: its label (the SEG segment's label) and sizes in mm / mm3."""

    label: str
    longest_diameter_mm: float | None
    perpendicular_diameter_mm: float | None
    volume_mm3: float | None


def write_measurement_report(
    seg_path: str | Path,
    source_paths: Sequence[str | Path],
    lesions: Sequence[LesionMeasurement],
    out_path: str | Path,
    *,
    series_description: str = "MetTrack measurements",
    device_name: str = "MetTrack",
) -> Path:
    """Write the Measurement Report of ``lesions``, each referencing the SEG segment of its label.

    Raises:
        ContourExportError: a lesion without a segment in the SEG, or highdicom refusing the content.
    """
    import highdicom as hd
    from highdicom.sr import (
        Comprehensive3DSR,
        DeviceObserverIdentifyingAttributes,
        Measurement,
        MeasurementReport,
        ObservationContext,
        ObserverContext,
        ReferencedSegment,
        TrackingIdentifier,
        VolumetricROIMeasurementsAndQualitativeEvaluations,
    )
    from pydicom.sr.codedict import codes

    seg = pydicom.dcmread(seg_path)
    segments = {str(item.SegmentLabel): int(item.SegmentNumber) for item in seg.SegmentSequence}
    groups = []
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
        groups.append(
            VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=TrackingIdentifier(uid=generate_uid(), identifier=lesion.label),
                referenced_segment=ReferencedSegment.from_segmentation(
                    seg, segment_number=segments[lesion.label]
                ),
                finding_type=hd.sr.CodedConcept(*FINDING),
                measurements=measurements,
            )
        )
    observer = ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=generate_uid(), name=device_name
        ),
    )
    report = MeasurementReport(
        observation_context=ObservationContext(observer_device_context=observer),
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
    out = Path(out_path)
    sr.save_as(out)
    return out


__all__ = ["FINDING", "PROCEDURE", "LesionMeasurement", "write_measurement_report"]
