"""Lesion tracking and RANO-BM assessment through the pipeline services, on ground-truth phantom masks.

Real code path: each visit is a real zipped DICOM series uploaded through ``upload_series`` (validation,
de-identification, storage), its phantom ground-truth mask is stored as the segmentation
(``record_segmentation``, in place of the network, whose demo accuracy is not what is tested here), and the
same ``run_analysis_stage`` the Celery task calls measures, registers, matches, stores and assesses.

Oracles, independent of the pipeline: the phantom's own instance map (lesion ids stable by construction)
for the labels, and the RANO-BM rules of rano-bm.md sections 3, 5 and 6 written out below on the
ground-truth lesion diameters for the sums, nadir and responses.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk

from rano.match import transform_from_parameters
from rano.measure import measure_lesions
from tests.factories import make_member
from tests.pipeline.conftest import SyntheticPatient, ground_truth_mask
from trials import storage
from trials.actions import imaging, review
from trials.choices import AssessmentSource, Criteria, JobState, LesionRole, MembershipRole, RunStatus
from trials.exceptions import InvalidInputError
from trials.models import (
    Assessment,
    AuditEvent,
    ImagingSeries,
    Lesion,
    LesionObservation,
    ModelVersion,
    SegmentationRun,
    Timepoint,
)
from trials.pipeline import analysis, assessment
from trials.pipeline import segmentation as segmentation_stage
from trials.records import imaging as imaging_records
from trials.records import lesions as lesion_records

SUM_TOLERANCE_MM = 1e-6  # the same voxels are measured: sums agree to rounding


def ground_truth_version() -> ModelVersion:
    """A ModelVersion row standing for the phantom's ground truth (its 'weights' are the phantom seed)."""
    return imaging_records.register_model_version(
        name="phantom-ground-truth",
        version="1",
        architecture="ground-truth masks of segmentation.phantoms",
        weights_sha256=hashlib.sha256(b"segmentation.phantoms ground truth").hexdigest(),
        actor=None,
    )


def ground_truth_lds(phantom: Any) -> dict[int, float]:
    """Longest diameter of every ground-truth lesion id of a visit (mm)."""
    labels = sitk.Cast(phantom.labels, sitk.sitkUInt32)
    return {m.label: m.longest_diameter_mm for m in measure_lesions(labels, relabel=False)}


def oracle(lds: list[dict[int, float]]) -> tuple[list[float], list[str], list[int]]:
    """SLD, overall response and nadir visit index per visit, by rano-bm.md sections 3, 5 and 6.

    No steroids, stable clinical status and no non-targets in this scenario (every baseline lesion is
    measurable and there are fewer than five).
    """
    baseline = lds[0]
    targets = sorted((i for i, ld in baseline.items() if ld >= 10.0), key=lambda i: -baseline[i])[:5]
    assert len(targets) == len(baseline), "scenario: every baseline lesion is a target"
    sums = [sum(visit.get(t, 0.0) for t in targets) for visit in lds]
    responses, nadirs = [""], [0]
    seen = set(baseline)
    for v in range(1, len(lds)):
        nadir_v = int(np.argmin(sums[:v]))
        nadirs.append(nadir_v)
        new = any(i not in seen and ld >= 5.0 for i, ld in lds[v].items())
        grew = any(lds[v].get(t, 0.0) - lds[nadir_v].get(t, 0.0) >= 5.0 for t in targets)
        if new or (sums[v] >= 1.2 * sums[nadir_v] and grew):
            responses.append("PD")
        elif sums[v] == 0:
            responses.append("CR")
        elif sums[v] <= 0.7 * sums[0]:
            responses.append("PR")
        else:
            responses.append("SD")
        seen |= set(lds[v])
    return sums, responses, nadirs


def upload_with_ground_truth(
    timepoint: Timepoint, patient_data: SyntheticPatient, index: int, media_root: Any
) -> Any:
    """Upload one visit, store its ground-truth mask as the segmentation, run the analysis stage."""
    upload = imaging.upload_series(timepoint, patient_data.zips[index], enqueue=False, actor=None)
    volume = sitk.ReadImage(str(media_root / upload.series.volume_file.name))
    version = ModelVersion.objects.filter(name="phantom-ground-truth").first() or ground_truth_version()
    run = segmentation_stage.record_segmentation(
        upload.series, version, ground_truth_mask(patient_data.phantoms[index], volume)
    )
    analysis.run_analysis_stage(upload.job.pk, run.pk)
    upload.job.refresh_from_db()
    assert upload.job.state == JobState.SUCCEEDED, upload.job.error
    return upload


def centroids_mm(labels: sitk.Image) -> dict[int, tuple[float, ...]]:
    """Physical centre (mm, LPS) of every ground-truth lesion id of a visit."""
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(sitk.Cast(labels, sitk.sitkUInt32))
    return {int(i): stats.GetCentroid(i) for i in stats.GetLabels()}


def lesion_label_of_ground_truth(run: SegmentationRun, phantom: Any, media_root: Any) -> dict[int, str]:
    """Ground-truth lesion id -> the pipeline's lesion label, through the run's stored components."""
    components = sitk.GetArrayFromImage(sitk.ReadImage(str(media_root / run.mask_file.name)))
    truth = sitk.GetArrayFromImage(phantom.labels)
    mapping: dict[int, str] = {}
    for obs in LesionObservation.objects.filter(segmentation_run=run, present=True).select_related("lesion"):
        ids = Counter(truth[components == obs.component_label].tolist())
        gt_id, _count = ids.most_common(1)[0]
        mapping[int(gt_id)] = obs.lesion.label
    return mapping


@pytest.mark.django_db
@pytest.mark.parametrize("order", [(0, 1, 2), (0, 2, 1)], ids=["in-order", "FU1-arrives-late"])
def test_labels_nadir_and_responses_match_the_oracle(
    order: tuple[int, ...], synthetic_patient: SyntheticPatient, pipeline_patient: Any, media_root: Any
) -> None:
    timepoints = {tp.visit_label: tp for tp in pipeline_patient.timepoints.all()}
    uploads = {}
    for index in order:
        label = synthetic_patient.labels[index]
        uploads[label] = upload_with_ground_truth(timepoints[label], synthetic_patient, index, media_root)

    # Stable labels: each ground-truth lesion carries one label at every visit; the new one a new label.
    per_visit = []
    for index, label in enumerate(synthetic_patient.labels):
        run = SegmentationRun.objects.get(series=uploads[label].series)
        assert run.status == RunStatus.SUCCEEDED
        per_visit.append(lesion_label_of_ground_truth(run, synthetic_patient.phantoms[index], media_root))
    labels_of: dict[int, set[str]] = {}
    for mapping in per_visit:
        for gt_id, lesion_label in mapping.items():
            labels_of.setdefault(gt_id, set()).add(lesion_label)
    assert all(len(v) == 1 for v in labels_of.values()), labels_of
    assert set(per_visit[0]) == {1, 2} and set(per_visit[2]) == {1, 2, 3}
    assert len({next(iter(v)) for v in labels_of.values()}) == 3  # three distinct lesions
    assert Lesion.objects.filter(patient=pipeline_patient).count() == 3
    new_label = next(iter(labels_of[3]))
    assert (
        Lesion.objects.get(patient=pipeline_patient, label=new_label).first_seen_timepoint
        == timepoints["FU2"]
    )

    # Each series keeps its rigid registration to the common space (the baseline, analysed first), for the
    # viewer's registered comparison: it carries a baseline lesion's centre onto the same lesion later.
    baseline_series = uploads["BASELINE"].series
    centres = [centroids_mm(p.labels) for p in synthetic_patient.phantoms]
    for index, label in enumerate(synthetic_patient.labels):
        series = ImagingSeries.objects.get(pk=uploads[label].series.pk)
        stored = series.registration
        assert (stored["fixed_series_id"], stored["moving_series_id"]) == (baseline_series.pk, series.pk)
        assert (stored["metric_value"] is None) == (index == 0)
        transform = transform_from_parameters(stored)
        for gt_id in (1, 2):
            moved = np.array(transform.TransformPoint(centres[0][gt_id]))
            assert np.linalg.norm(moved - np.array(centres[index][gt_id])) < 3.0, (label, gt_id)

    # Each run's lesions are written as DICOM RTSTRUCT and SEG on the stored series, named by the stable
    # labels, and read back to the same voxels as the run's native lesion map.
    for index, label in enumerate(synthetic_patient.labels):
        run = SegmentationRun.objects.get(series=uploads[label].series)
        assert_contours_match_the_lesion_map(run, media_root, set(per_visit[index].values()))

    # Sums, nadir and responses against the oracle.
    lds = [ground_truth_lds(p) for p in synthetic_patient.phantoms]
    sums, responses, nadirs = oracle(lds)
    assert responses == ["", "PR", "PD"]  # the scenario is built to be unambiguous
    for index, label in enumerate(synthetic_patient.labels):
        row = Assessment.objects.get(timepoint=timepoints[label], criteria=Criteria.RANO_BM, is_current=True)
        assert row.source == AssessmentSource.AI and row.status == "draft"
        assert row.model_version is not None and row.model_version.name == "phantom-ground-truth"
        assert row.overall_response == responses[index], (label, row.reasons)
        assert row.sum_ld_mm == pytest.approx(sums[index], abs=SUM_TOLERANCE_MM)
        assert row.baseline_sum_ld_mm == pytest.approx(sums[0], abs=SUM_TOLERANCE_MM)
        if index:
            assert row.nadir_timepoint == timepoints[synthetic_patient.labels[nadirs[index]]]
            assert row.nadir_sum_ld_mm == pytest.approx(sums[nadirs[index]], abs=SUM_TOLERANCE_MM)
        assert row.settings == pipeline_patient.trial.criteria_settings()
        assert Assessment.objects.filter(
            timepoint=timepoints[label], criteria=Criteria.VOLUMETRIC, is_current=True
        ).exists()
    fu2 = Assessment.objects.get(timepoint=timepoints["FU2"], criteria=Criteria.RANO_BM, is_current=True)
    assert fu2.new_lesion_status == "unequivocal"
    assert fu2.progression_date == timepoints["FU2"].scan_date
    # Targets chosen by the engine are written back to the lesions.
    assert set(
        Lesion.objects.filter(patient=pipeline_patient, role=LesionRole.TARGET).values_list(
            "label", flat=True
        )
    ) == {
        next(iter(labels_of[1])),
        next(iter(labels_of[2])),
    }


def assert_contours_match_the_lesion_map(run: SegmentationRun, media_root: Any, present: set[str]) -> None:
    """RTSTRUCT and SEG of a run: one ROI/segment per lesion present, the same voxels as its lesion map.

    Both are voxel-exact: the RTSTRUCT's contours run on voxel edges and read_rtstruct fills the voxels
    whose centres they enclose, as plastimatch does.
    """
    from segmentation.contours import read_rtstruct, read_seg

    assert run.rtstruct_file and run.seg_file
    source = (media_root / run.series.volume_file.name).parent / "source"
    lesion_map = sitk.GetArrayFromImage(sitk.ReadImage(str(storage.run_file_path(run, "lesions"))))
    seg = read_seg(media_root / run.seg_file.name, source)
    rt = read_rtstruct(media_root / run.rtstruct_file.name, source)
    assert set(seg.names.values()) == present and set(rt.names.values()) == present
    for name in present:
        truth = lesion_map == int(name[1:])
        assert np.array_equal(seg.mask(name), truth), name
        assert np.array_equal(rt.mask(name), truth), name


@pytest.mark.django_db
def test_a_lesion_first_seen_at_a_late_visit_is_recorded_absent_at_later_visits(
    synthetic_patient: SyntheticPatient, pipeline_patient: Any, media_root: Any
) -> None:
    """BASELINE, then FU2, then FU1 with an extra lesion only FU1 shows: FU2, analysed before FU1 was
    known, gets an AI observation "absent" for it, and its assessment is recomputed."""
    from scipy import ndimage as ndi

    timepoints = {tp.visit_label: tp for tp in pipeline_patient.timepoints.all()}
    upload_with_ground_truth(timepoints["BASELINE"], synthetic_patient, 0, media_root)
    upload_with_ground_truth(timepoints["FU2"], synthetic_patient, 2, media_root)
    fu2_before = Assessment.objects.get(
        timepoint=timepoints["FU2"], criteria=Criteria.RANO_BM, is_current=True
    )

    # FU1's ground truth plus a 10 mm ball in the brain, 20 mm or more from every lesion of any visit.
    upload = imaging.upload_series(timepoints["FU1"], synthetic_patient.zips[1], enqueue=False, actor=None)
    volume = sitk.ReadImage(str(media_root / upload.series.volume_file.name))
    mask = sitk.GetArrayFromImage(ground_truth_mask(synthetic_patient.phantoms[1], volume))
    any_lesion = np.any([sitk.GetArrayFromImage(p.mask) > 0 for p in synthetic_patient.phantoms], axis=0)
    brain = ndi.binary_erosion(sitk.GetArrayFromImage(volume) > 0, iterations=8)
    far = ndi.distance_transform_edt(~any_lesion, sampling=volume.GetSpacing()[::-1]) >= 20.0
    centre = np.argwhere(brain & far)[0]
    z, y, x = np.indices(mask.shape)
    ball = ((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2) * 4.0 <= 25.0  # r 5 mm
    mask[ball] = 1
    extra = sitk.GetImageFromArray(mask.astype(np.uint8))
    extra.CopyInformation(volume)
    version = ModelVersion.objects.get(name="phantom-ground-truth")
    run = segmentation_stage.record_segmentation(upload.series, version, extra)
    analysis.run_analysis_stage(upload.job.pk, run.pk)

    late = Lesion.objects.get(patient=pipeline_patient, first_seen_timepoint=timepoints["FU1"])
    at_fu2 = LesionObservation.objects.get(lesion=late, timepoint=timepoints["FU2"])
    assert at_fu2.present is False and at_fu2.source == "ai"
    assert "earlier visit analysed later" in at_fu2.measurable_reason
    # Every lesion has an observation at every visit from the one it was first seen at (and, before it,
    # only "absent" ones: a visit analysed after the lesion was known records it as not there).
    for lesion in Lesion.objects.filter(patient=pipeline_patient).select_related("first_seen_timepoint"):
        first = lesion.first_seen_timepoint.scan_date
        present_at = dict(LesionObservation.objects.filter(lesion=lesion).values_list("timepoint", "present"))
        assert {tp.pk for tp in timepoints.values() if tp.scan_date >= first} <= set(present_at), lesion.label
        assert not any(
            present_at[tp.pk] for tp in timepoints.values() if tp.scan_date < first and tp.pk in present_at
        )
    fu2_after = Assessment.objects.get(
        timepoint=timepoints["FU2"], criteria=Criteria.RANO_BM, is_current=True
    )
    assert fu2_after.pk != fu2_before.pk  # re-assessed from FU1 on; the earlier version is kept
    assert Assessment.objects.filter(pk=fu2_before.pk, is_current=False).exists()


@pytest.mark.django_db
def test_rerunning_stages_creates_no_duplicate_rows(
    synthetic_patient: SyntheticPatient, pipeline_patient: Any, media_root: Any
) -> None:
    timepoints = {tp.visit_label: tp for tp in pipeline_patient.timepoints.all()}
    uploads = [
        upload_with_ground_truth(timepoints[label], synthetic_patient, index, media_root)
        for index, label in enumerate(synthetic_patient.labels[:2])
    ]

    def counts() -> tuple[int, ...]:
        return (
            SegmentationRun.objects.count(),
            Lesion.objects.count(),
            LesionObservation.objects.count(),
            Assessment.objects.count(),
        )

    before = counts()
    series = uploads[1].series
    version = ModelVersion.objects.get(name="phantom-ground-truth")
    volume = sitk.ReadImage(str(media_root / series.volume_file.name))
    run = segmentation_stage.record_segmentation(
        series, version, ground_truth_mask(synthetic_patient.phantoms[1], volume)
    )
    assert analysis.analyse_run(run) == {"already_analysed": True}
    assert assessment.reassess_patient(pipeline_patient, from_timepoint=None, actor=None, edited=False) == []
    assert counts() == before


@pytest.mark.django_db
def test_reader_change_reassesses_from_that_visit_and_keeps_earlier_versions(
    synthetic_patient: SyntheticPatient, pipeline_patient: Any, media_root: Any
) -> None:
    timepoints = {tp.visit_label: tp for tp in pipeline_patient.timepoints.all()}
    for index, label in enumerate(synthetic_patient.labels):
        upload_with_ground_truth(timepoints[label], synthetic_patient, index, media_root)
    baseline_row = Assessment.objects.get(
        timepoint=timepoints["BASELINE"], criteria=Criteria.RANO_BM, is_current=True
    )
    old_fu2 = Assessment.objects.get(timepoint=timepoints["FU2"], criteria=Criteria.RANO_BM, is_current=True)
    assert old_fu2.overall_response == "PD"

    # The reader drops the new lesion as a false positive and takes the regrowing lesion off the targets.
    reader = make_member(pipeline_patient.trial, MembershipRole.RADIOLOGIST)
    fu2_obs = LesionObservation.objects.filter(timepoint=timepoints["FU2"], present=True).select_related(
        "lesion"
    )
    new_lesion = next(o.lesion for o in fu2_obs if o.lesion.first_seen_timepoint_id == timepoints["FU2"].pk)
    lds = {o.lesion.label: o.longest_diameter_mm for o in fu2_obs}
    regrowing = max((label for label in lds if label != new_lesion.label), key=lambda label: lds[label])
    lesion_records.update_lesion(
        new_lesion, is_false_positive=True, actor=reader, reason="vessel, not a lesion"
    )
    lesion_records.update_lesion(
        Lesion.objects.get(patient=pipeline_patient, label=regrowing),
        role=LesionRole.NON_TARGET,
        actor=reader,
        reason="irradiated lesion, not a target",
    )
    created = assessment.reassess_patient(
        pipeline_patient,
        from_timepoint=timepoints["FU1"],
        actor=reader,
        reason="reader review",
        correlation_id="c1",
        edited=True,
    )
    # The baseline changes too: its sum of target diameters no longer counts the lesion taken off the
    # targets (the change was made at FU1, but target selection is a baseline matter).
    assert {a.timepoint_id for a in created} == {tp.pk for tp in timepoints.values()}

    # Remaining target: the other lesion, halved by FU1 and still small at FU2 -> PR at both; the regrowing
    # non-target is flagged, not called progression (a reader judgement, rano-bm.md 4).
    new_fu2 = Assessment.objects.get(timepoint=timepoints["FU2"], criteria=Criteria.RANO_BM, is_current=True)
    assert new_fu2.overall_response == "PR" and new_fu2.new_lesion_status == "none"
    assert new_fu2.supersedes_id == old_fu2.pk
    old_fu2.refresh_from_db()
    assert not old_fu2.is_current and old_fu2.overall_response == "PD"  # kept, superseded
    baseline_row.refresh_from_db()
    assert not baseline_row.is_current  # kept, superseded
    new_baseline = Assessment.objects.get(
        timepoint=timepoints["BASELINE"], criteria=Criteria.RANO_BM, is_current=True
    )
    assert new_baseline.supersedes_id == baseline_row.pk
    regrowing_at_baseline = LesionObservation.objects.get(
        lesion__patient=pipeline_patient, lesion__label=regrowing, timepoint=timepoints["BASELINE"]
    ).longest_diameter_mm
    assert new_baseline.sum_ld_mm == pytest.approx(baseline_row.sum_ld_mm - regrowing_at_baseline)
    events = AuditEvent.objects.filter(correlation_id="c1", action="create", object_type="trials.assessment")
    assert events.count() == len(created) and {e.actor_id for e in events} == {reader.pk}


@pytest.mark.django_db
def test_reassess_refuses_a_visit_of_another_patient(pipeline_patient: Any) -> None:
    from tests.factories import make_patient, make_timepoint

    other = make_timepoint(make_patient(pipeline_patient.trial), is_baseline=True)
    with pytest.raises(InvalidInputError, match="another patient"):
        assessment.reassess_patient(pipeline_patient, from_timepoint=other, actor=None, edited=False)


@pytest.mark.django_db
def test_reassess_waits_for_an_analysed_baseline(pipeline_patient: Any) -> None:
    assert assessment.reassess_patient(pipeline_patient, from_timepoint=None, actor=None, edited=False) == []


@pytest.mark.django_db
def test_segmentation_runs_and_their_dicom_outputs_through_the_api(
    synthetic_patient: SyntheticPatient, pipeline_patient: Any, media_root: Any, api_client: Any
) -> None:
    """``/api/v1/segmentation-runs/``: the run with model provenance and file links; the RTSTRUCT, SEG and
    SR download as DICOM a PACS can read; other trials' runs and unknown kinds are 404."""
    import io

    import highdicom as hd
    import pydicom

    from tests.factories import DEFAULT_PASSWORD, make_membership, make_trial, make_user
    from trials.actions import assessments as assessment_actions
    from trials.pipeline.contours import lesion_tracking_uid

    timepoint = pipeline_patient.timepoints.get(visit_label="BASELINE")
    upload = upload_with_ground_truth(timepoint, synthetic_patient, 0, media_root)
    run = SegmentationRun.objects.get(series=upload.series)
    reader = make_member(pipeline_patient.trial, MembershipRole.INVESTIGATOR)
    api_client.force_authenticate(reader)

    listed = api_client.get("/api/v1/segmentation-runs/", {"patient": pipeline_patient.pk}).json()
    assert [r["id"] for r in listed["results"]] == [run.pk]
    detail = api_client.get(f"/api/v1/segmentation-runs/{run.pk}/").json()
    assert detail["model_name"] == "phantom-ground-truth"
    assert detail["model_weights_sha256"] == run.model_weights_sha256
    assert set(detail["files"]) == {"mask", "lesions", "rtstruct", "seg", "sr"}

    response = api_client.get(detail["files"]["rtstruct"])
    assert response.status_code == 200 and response["Content-Type"] == "application/dicom"
    rt = pydicom.dcmread(io.BytesIO(b"".join(response.streaming_content)))
    assert rt.Modality == "RTSTRUCT" and {r.ROIName for r in rt.StructureSetROISequence} == {"L1", "L2"}
    seg = pydicom.dcmread(io.BytesIO(b"".join(api_client.get(detail["files"]["seg"]).streaming_content)))
    assert seg.Modality == "SEG" and seg.PatientID == pipeline_patient.subject_id  # de-identified source
    # the visit's TID 1500 SR: each lesion group shares its Tracking UID with the SEG segment it measures
    sr = pydicom.dcmread(io.BytesIO(b"".join(api_client.get(detail["files"]["sr"]).streaming_content)))
    report = hd.sr.Comprehensive3DSR.from_dataset(sr).content
    lesions = {lesion.label: lesion for lesion in pipeline_patient.lesions.all()}
    segment_uids = {str(item.TrackingID): str(item.TrackingUID) for item in seg.SegmentSequence}
    groups = report.get_volumetric_roi_measurement_groups()
    assert {g.tracking_identifier for g in groups} == set(segment_uids) == {"L1", "L2"}
    for group in groups:
        label = group.tracking_identifier
        assert group.tracking_uid == segment_uids[label] == lesion_tracking_uid(lesions[label])
        (role,) = group.get_qualitative_evaluations()
        assert (
            role.value.meaning
            == {"target": "Target lesion", "non_target": "Non-target lesion"}[lesions[label].role]
        )
    assert "Person" not in str(sr.ContentSequence)  # the AI draft: no signer
    # once a radiologist signs, the assessment's own SR names the signer; a draft has none
    baseline = Assessment.objects.get(timepoint=timepoint, criteria=Criteria.RANO_BM, is_current=True)
    assert api_client.get(f"/api/v1/assessments/{baseline.pk}/sr/").status_code == 404
    signer = make_user(first_name="Rita", last_name="Reader")
    make_membership(signer, pipeline_patient.trial, MembershipRole.RADIOLOGIST)
    signed = assessment_actions.confirm_assessment(baseline, actor=signer, password=DEFAULT_PASSWORD)
    answer = api_client.get(f"/api/v1/assessments/{signed.pk}/sr/")
    assert answer.status_code == 200 and answer["Content-Type"] == "application/dicom"
    signed_sr = pydicom.dcmread(io.BytesIO(b"".join(answer.streaming_content)))
    assert "Reader^Rita" in str(signed_sr.ContentSequence)
    assert signed_sr.SOPInstanceUID != sr.SOPInstanceUID

    assert api_client.get(f"/api/v1/segmentation-runs/{run.pk}/files/weights/").status_code == 404

    # The visit page names the model and checksum of the run and links the same downloads.
    from django.test import Client
    from django.urls import reverse

    browser = Client()
    browser.force_login(reader)
    page = browser.get(reverse("dashboard:visit", args=[timepoint.pk])).content.decode()
    assert f'id="run-{run.pk}"' in page and run.model_weights_sha256[:12] in page
    assert f"/api/v1/segmentation-runs/{run.pk}/files/seg/" in page
    assert f"/api/v1/segmentation-runs/{run.pk}/files/rtstruct/" in page
    assert "demo — not for clinical use" not in page  # the ground-truth "model" is no demo model
    outsider = make_member(make_trial("OTHER"), MembershipRole.INVESTIGATOR)
    api_client.force_authenticate(outsider)
    assert api_client.get(f"/api/v1/segmentation-runs/{run.pk}/").status_code == 404
    assert api_client.get(f"/api/v1/segmentation-runs/{run.pk}/files/rtstruct/").status_code == 404


@pytest.mark.django_db
def test_a_series_rtstruct_cannot_encode_still_gets_its_seg_and_its_assessment(
    pipeline_patient: Any, media_root: Any, tmp_path: Any
) -> None:
    """An enhanced multi-frame series: RTSTRUCT export is refused (it references single-frame images), SEG
    is written, the job succeeds and its message says what is missing."""
    from segmentation.synthetic_mr import write_dicom_series
    from tests.pipeline.test_upload_api import small_image, zip_folder

    image = small_image((16, 48, 48))
    image.SetSpacing((0.8, 1.0, 2.0))
    write_dicom_series(image, tmp_path / "s", patient_id="Doe^John", multiframe=True)
    timepoint = pipeline_patient.timepoints.get(visit_label="BASELINE")
    upload = imaging.upload_series(
        timepoint, zip_folder(tmp_path / "s", tmp_path / "s.zip"), enqueue=False, actor=None
    )
    volume = sitk.ReadImage(str(media_root / upload.series.volume_file.name))
    z, y, x = np.indices(sitk.GetArrayViewFromImage(volume).shape)
    ball = ((z - 8) * 2.0) ** 2 + ((y - 24) * 1.0) ** 2 + ((x - 24) * 0.8) ** 2 <= 36.0  # r 6 mm
    mask = sitk.GetImageFromArray(ball.astype(np.uint8))
    mask.CopyInformation(volume)
    run = segmentation_stage.record_segmentation(upload.series, ground_truth_version(), mask)
    analysis.run_analysis_stage(upload.job.pk, run.pk)

    upload.job.refresh_from_db()
    run.refresh_from_db()
    assert upload.job.state == JobState.SUCCEEDED
    assert "RTSTRUCT" in upload.job.message and "single-frame" in upload.job.message
    assert run.seg_file and not run.rtstruct_file
    assert Assessment.objects.filter(timepoint=timepoint, is_current=True).exists()


def _balls_on(volume: sitk.Image, balls: list[tuple[tuple[float, float, float], float]]) -> sitk.Image:
    """A binary mask on the volume's grid: balls given as (offset from the grid centre in mm, radius mm)."""
    spacing = np.array(volume.GetSpacing()[::-1])  # z, y, x
    centre = (np.array(volume.GetSize()[::-1]) - 1) / 2.0
    zyx = np.indices(volume.GetSize()[::-1]).astype(float)
    mask = np.zeros(volume.GetSize()[::-1], np.uint8)
    for (dx, dy, dz), radius in balls:
        offset = np.array([dz, dy, dx])
        d2 = sum(((zyx[i] - centre[i]) * spacing[i] - offset[i]) ** 2 for i in range(3))
        mask[d2 <= radius**2] = 1
    image = sitk.GetImageFromArray(mask)
    image.CopyInformation(volume)
    return image


@pytest.mark.django_db
def test_a_target_merged_into_a_non_target_keeps_the_merged_mass(
    synthetic_patient: SyntheticPatient, pipeline_patient: Any, media_root: Any
) -> None:
    """rano-bm.md section 3: the merged mass is assigned to the target. One target (max_targets 1): L1,
    18 mm at baseline; the non-target L2 grows and joins the shrunken L1 at FU1, and the mass overlaps
    L2's baseline footprint far more than L1's. L1 must carry the mass (about 40 mm): PD."""
    type(pipeline_patient.trial).objects.filter(pk=pipeline_patient.trial_id).update(max_targets=1)
    timepoints = {tp.visit_label: tp for tp in pipeline_patient.timepoints.all()}
    target, non_target = (-14.0, 0.0, 0.0), (14.0, 0.0, 0.0)
    bridge = [((x, 0.0, 0.0), 2.5) for x in np.arange(-14.0, 14.1, 2.0)]
    masks = {
        "BASELINE": [(target, 9.0), (non_target, 8.0)],
        "FU1": [(target, 3.0), (non_target, 11.0), *bridge],
    }
    version = ground_truth_version()
    for index, label in enumerate(("BASELINE", "FU1")):
        upload = imaging.upload_series(
            timepoints[label], synthetic_patient.zips[index], enqueue=False, actor=None
        )
        volume = sitk.ReadImage(str(media_root / upload.series.volume_file.name))
        run = segmentation_stage.record_segmentation(upload.series, version, _balls_on(volume, masks[label]))
        analysis.run_analysis_stage(upload.job.pk, run.pk)
        upload.job.refresh_from_db()
        assert upload.job.state == JobState.SUCCEEDED, upload.job.error

    roles = dict(Lesion.objects.filter(patient=pipeline_patient).values_list("label", "role"))
    assert roles == {"L1": LesionRole.TARGET, "L2": LesionRole.NON_TARGET}
    l1 = LesionObservation.objects.get(lesion__label="L1", timepoint=timepoints["FU1"])
    assert l1.present and l1.longest_diameter_mm > 35.0
    fu1 = Assessment.objects.get(timepoint=timepoints["FU1"], criteria=Criteria.RANO_BM, is_current=True)
    assert (fu1.target_response, fu1.overall_response) == ("PD", "PD")


@pytest.mark.django_db
def test_a_later_visit_confirms_an_earlier_response_and_a_later_pd_withdraws_it(
    synthetic_patient: SyntheticPatient, pipeline_patient: Any, media_root: Any
) -> None:
    """rano-bm.md section 7: a PR is confirmed by a later visit >= 28 days after it with the same or a
    better response and no PD in between. Visits analysed one by one (weeks 0, 8, 16): SLD about 20 ->
    10 -> 10. The PR at FU1 is unconfirmed until FU2 arrives, confirmed after, and unconfirmed again
    once FU2 becomes PD (clinical status worse)."""

    timepoints = {tp.visit_label: tp for tp in pipeline_patient.timepoints.all()}
    masks = {
        "BASELINE": [((0.0, 0.0, 0.0), 10.0)],
        "FU1": [((0.0, 0.0, 0.0), 5.0)],
        "FU2": [((0.0, 0.0, 0.0), 5.0)],
    }
    version = ground_truth_version()

    def fu1_row() -> Assessment:
        return Assessment.objects.get(timepoint=timepoints["FU1"], criteria=Criteria.RANO_BM, is_current=True)

    for index, label in enumerate(synthetic_patient.labels):
        upload = imaging.upload_series(
            timepoints[label], synthetic_patient.zips[index], enqueue=False, actor=None
        )
        volume = sitk.ReadImage(str(media_root / upload.series.volume_file.name))
        run = segmentation_stage.record_segmentation(upload.series, version, _balls_on(volume, masks[label]))
        analysis.run_analysis_stage(upload.job.pk, run.pk)
        if label == "FU1":
            assert (fu1_row().overall_response, fu1_row().confirmed) == ("PR", False)
    first = fu1_row()
    assert (first.overall_response, first.confirmed) == ("PR", True)
    assert first.supersedes is not None and first.supersedes.confirmed is False  # the earlier version kept

    reader = make_member(pipeline_patient.trial, MembershipRole.RADIOLOGIST)
    review.set_clinical_context(timepoints["FU2"], clinical_status="worse", actor=reader, reason="seizures")
    fu2 = Assessment.objects.get(timepoint=timepoints["FU2"], criteria=Criteria.RANO_BM, is_current=True)
    assert fu2.overall_response == "PD"
    assert (fu1_row().overall_response, fu1_row().confirmed) == ("PR", False)


@pytest.mark.django_db
def test_a_lesion_the_reader_adds_where_a_known_lesion_was_keeps_its_label(
    synthetic_patient: SyntheticPatient, pipeline_patient: Any, media_root: Any
) -> None:
    """rano-bm.md sections 3 and 5: a target absent at one visit and present again keeps its identity; a
    lesion is new only when it matches no earlier one. The AI misses ground-truth lesion 2 at FU1; the
    reader adds it from a seed: it must be that lesion's label again, not a new lesion."""

    timepoints = {tp.visit_label: tp for tp in pipeline_patient.timepoints.all()}
    upload_with_ground_truth(timepoints["BASELINE"], synthetic_patient, 0, media_root)
    baseline_run = SegmentationRun.objects.get(series__timepoint=timepoints["BASELINE"])
    label_of = lesion_label_of_ground_truth(baseline_run, synthetic_patient.phantoms[0], media_root)

    phantom = synthetic_patient.phantoms[1]
    upload = imaging.upload_series(timepoints["FU1"], synthetic_patient.zips[1], enqueue=False, actor=None)
    volume = sitk.ReadImage(str(media_root / upload.series.volume_file.name))
    truth = sitk.GetArrayFromImage(phantom.labels)
    missed = sitk.GetImageFromArray((truth == 1).astype(np.uint8))  # the AI finds lesion 1 only
    missed.CopyInformation(volume)
    version = ModelVersion.objects.get(name="phantom-ground-truth")
    run = segmentation_stage.record_segmentation(upload.series, version, missed)
    analysis.run_analysis_stage(upload.job.pk, run.pk)
    absent = LesionObservation.objects.get(lesion__label=label_of[2], timepoint=timepoints["FU1"])
    assert absent.present is False

    # The reader clicks the brightest voxel of lesion 2.
    values = sitk.GetArrayFromImage(volume).astype(float)
    z, y, x = np.unravel_index(np.argmax(np.where(truth == 2, values, -np.inf)), truth.shape)
    reader = make_member(pipeline_patient.trial, MembershipRole.RADIOLOGIST)
    lesions_before = Lesion.objects.filter(patient=pipeline_patient).count()
    added = review.add_lesion_from_seed(
        timepoints["FU1"],
        seed_index=(int(x), int(y), int(z)),
        actor=reader,
        reason="missed by the AI",
        multiplier=1.5,
    )
    assert added.lesion.label == label_of[2] and added.present and added.source == "manual"
    assert Lesion.objects.filter(patient=pipeline_patient).count() == lesions_before
    fu1 = Assessment.objects.get(timepoint=timepoints["FU1"], criteria=Criteria.RANO_BM, is_current=True)
    assert fu1.new_lesion_status == "none"
    assert fu1.sum_ld_mm > absent_sum(pipeline_patient, timepoints["FU1"])


def absent_sum(patient: Any, timepoint: Timepoint) -> float:
    """The SLD of the visit's superseded AI assessment (before the reader added the lesion)."""
    rows = Assessment.objects.filter(timepoint=timepoint, criteria=Criteria.RANO_BM).order_by(
        "created_at", "pk"
    )
    return float(rows.first().sum_ld_mm)


@pytest.mark.django_db
def test_a_lesion_the_small_lesion_stage_added_is_shown_as_such(
    synthetic_patient: SyntheticPatient, pipeline_patient: Any, media_root: Any, client: Any, api_client: Any
) -> None:
    """The run keeps which labels of its mask the small-lesion stage added (``findings``, from the
    stage's own result), and the reader sees it: the visit's lesion table tags that lesion with the stage
    and its lesion probability, the network's lesion is untagged, and the API returns the findings."""
    import json

    from segmentation.inference import SegmentationResult
    from segmentation.small_lesions import Candidate

    timepoint = pipeline_patient.timepoints.get(visit_label="BASELINE")
    upload = imaging.upload_series(timepoint, synthetic_patient.zips[0], enqueue=False, actor=None)
    volume = sitk.ReadImage(str(media_root / upload.series.volume_file.name))
    network = sitk.GetArrayFromImage(_balls_on(volume, [((-14.0, 0.0, 0.0), 8.0)]))
    small = sitk.GetArrayFromImage(_balls_on(volume, [((14.0, 0.0, 0.0), 2.5)]))
    labels = sitk.GetImageFromArray((network + 2 * small).astype(np.uint32))
    labels.CopyInformation(volume)
    added = Candidate(
        center_mm=(14.0, 0.0, 0.0), sigma_mm=1.5, response=0.6, blobness=0.7, brightness=2.1, contrast=1.6,
        depth_mm=18.0, probability=0.02, diameter_mm=5.0, lesion_probability=0.8312,
    )  # fmt: skip
    result = SegmentationResult(
        mask=sitk.Cast(labels > 0, sitk.sitkUInt8), labels=labels, lesions=[], timings_s={}, device="cpu",
        n_windows=0, small_lesions={2: added},
    )  # fmt: skip
    findings = segmentation_stage.stage_findings(result)
    assert set(findings) == {"2"} and findings["2"]["stage"] == "small_lesions"
    assert json.loads(json.dumps(findings))["2"]["features"]["lesion_probability"] == 0.831
    run = segmentation_stage.record_segmentation(
        upload.series, ground_truth_version(), labels, labelled=True, findings=findings
    )
    analysis.run_analysis_stage(upload.job.pk, run.pk)
    run.refresh_from_db()
    assert run.findings == findings

    by_label = {
        o.component_label: o
        for o in LesionObservation.objects.filter(timepoint=timepoint).select_related("segmentation_run")
    }
    assert set(by_label) == {1, 2}
    assert by_label[1].finding is None
    assert by_label[2].finding == findings["2"]
    stage_lesion = by_label[2].lesion.label

    reader = make_member(pipeline_patient.trial, MembershipRole.INVESTIGATOR)
    client.force_login(reader)
    page = client.get(f"/visits/{timepoint.pk}/")
    assert page.status_code == 200
    rows = {
        label: row
        for row in page.content.decode().split('<tr id="lesion-')[1:]
        for label in [row.split('"', 1)[0]]
    }
    assert set(rows) == {by_label[1].lesion.label, stage_lesion}
    assert "small-lesion stage, p 0.83" in rows[stage_lesion]
    assert "small-lesion stage" not in rows[by_label[1].lesion.label]
    # The viewer's lesion list (its jump menu) carries the stage too.
    stages = {les["label"]: les["stage"] for les in page.context["viewer_data"]["main"]["lesions"]}
    assert stages == {by_label[1].lesion.label: "", stage_lesion: "small_lesions"}

    api_client.force_authenticate(reader)
    detail = api_client.get(f"/api/v1/segmentation-runs/{run.pk}/").json()
    assert detail["findings"]["2"]["features"]["lesion_probability"] == 0.831
