"""The TID 1500 measurement report of a visit, read back by highdicom and by dcmqi's tid1500reader.

Oracles: highdicom's SR parser (``MeasurementReport.from_sequence``) and dcmqi's ``tid1500reader`` (the
QIICR converter a site uses to turn SRs into JSON; the ``dcmqi`` wheel, pinned in the dev extras), run
on a real report written over a real SEG of a synthetic series. Each lesion group must carry the
lesion's label and its visit-independent Tracking UID, the SEG segment it measures (which carries the
same tracking pair), its three measurements and its RANO-BM role; the visit's response is reported with
its signer.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from segmentation.contours import write_seg
from segmentation.errors import ContourExportError
from segmentation.io import read_series
from segmentation.sr import LesionMeasurement, VisitResponse, tracking_uid, write_measurement_report

UIDS = {1: tracking_uid("lesion-101"), 2: tracking_uid("lesion-102")}
LESIONS = [
    LesionMeasurement("L1", 12.5, 8.0, 420.0, tracking_uid=UIDS[1], role="target"),
    LesionMeasurement("L2", 6.0, 4.5, 60.0, tracking_uid=UIDS[2], role="new"),
]


@pytest.fixture
def report(tmp_path, write_series) -> tuple[Path, Path]:
    """(SEG, SR) of two lesions on a small synthetic series, the response signed by a reader."""
    folder, files = write_series()
    series = read_series(folder)
    arr = np.zeros(sitk.GetArrayViewFromImage(series.image).shape, dtype=np.uint16)
    arr[4:10, 10:30, 10:30] = 1
    arr[14:17, 40:50, 40:50] = 2
    labels = sitk.GetImageFromArray(arr)
    labels.CopyInformation(series.image)
    seg = write_seg(
        labels, series, tmp_path / "seg.dcm", lesion_names={1: "L1", 2: "L2"},
        algorithm_name="demo", algorithm_version="1", tracking_uids=UIDS,
    )  # fmt: skip
    sr = write_measurement_report(
        seg, files, LESIONS, tmp_path / "sr.dcm",
        response=VisitResponse("PD", signed=True, signer="Reader^Rita"), time_point="FU1",
    )  # fmt: skip
    return seg, sr


def test_tracking_uid_is_the_same_for_a_lesion_at_every_call_and_a_valid_uid() -> None:
    assert tracking_uid("lesion-101") == UIDS[1] != UIDS[2]
    assert UIDS[1].startswith("2.25.") and len(UIDS[1]) <= 64
    assert pydicom.uid.UID(UIDS[1]).is_valid


def test_seg_segments_carry_the_lesions_tracking_pair(report) -> None:
    seg, _ = report
    segments = pydicom.dcmread(seg).SegmentSequence
    assert [(s.TrackingID, s.TrackingUID) for s in segments] == [("L1", UIDS[1]), ("L2", UIDS[2])]


def test_highdicom_reads_groups_measurements_roles_and_the_signed_response(report) -> None:
    import highdicom as hd

    seg, sr = report
    ds = pydicom.dcmread(sr)
    parsed = hd.sr.srread(sr).content
    for lesion in LESIONS:
        (group,) = parsed.get_volumetric_roi_measurement_groups(tracking_uid=lesion.tracking_uid)
        assert group.tracking_identifier == lesion.label
        assert group.referenced_segment.referenced_segment_numbers == [int(lesion.label[1:])]
        assert group.referenced_segment.referenced_sop_instance_uid == pydicom.dcmread(seg).SOPInstanceUID
        values = {m.name.meaning: m.value for m in group.get_measurements()}
        assert values == {
            "Long axis": lesion.longest_diameter_mm,
            "Short axis": lesion.perpendicular_diameter_mm,
            "Volume": lesion.volume_mm3,
        }
        (role,) = group.get_qualitative_evaluations()
        assert role.name.value == "RANO-BM-ROLE" and role.value.value == lesion.role.upper()
    (visit,) = parsed.get_image_measurement_groups()
    assert visit.tracking_identifier == "RANO-BM response (signed)"
    (response,) = visit.get_qualitative_evaluations()
    assert (response.name.value, response.value.value) == ("RANO-BM-RESPONSE", "PD")
    assert "Reader^Rita" in str(ds.ContentSequence)  # the signer is the person observer


def test_dcmqi_tid1500reader_reads_every_lesion_group(tmp_path, report) -> None:
    import dcmqi

    tool = Path(dcmqi.__file__).parent / "bin" / "tid1500reader"
    if not tool.exists():
        pytest.fail("dcmqi's tid1500reader is missing: install the dev extras (the dcmqi wheel).")
    _, sr = report
    out = tmp_path / "sr.json"
    result = subprocess.run(
        [str(tool), "--inputDICOM", str(sr), "--outputMetadata", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    metadata = json.loads(out.read_text())
    groups = {g["TrackingIdentifier"]: g for g in metadata["Measurements"] if "ReferencedSegment" in g}
    assert set(groups) == {"L1", "L2"}
    for lesion in LESIONS:
        group = groups[lesion.label]
        assert group["TrackingUniqueIdentifier"] == lesion.tracking_uid
        assert group["ReferencedSegment"] == int(lesion.label[1:])
        values = {item["quantity"]["CodeMeaning"]: float(item["value"]) for item in group["measurementItems"]}
        assert values == {
            "Long axis": lesion.longest_diameter_mm,
            "Short axis": lesion.perpendicular_diameter_mm,
            "Volume": lesion.volume_mm3,
        }


def test_unknown_role_or_response_is_refused(tmp_path, report) -> None:
    seg, _ = report
    with pytest.raises(ContourExportError, match="role"):
        write_measurement_report(
            seg, [], [LesionMeasurement("L1", 1.0, 1.0, 1.0, role="big")], tmp_path / "a"
        )
    with pytest.raises(ContourExportError, match="response"):
        write_measurement_report(seg, [], LESIONS[:1], tmp_path / "b", response=VisitResponse("MAYBE"))
