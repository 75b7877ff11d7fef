"""Lesion tracking and RANO-BM assessment through the pipeline services, on ground-truth phantom masks.

Real code path: each visit is a real zipped DICOM series uploaded through ``ingest_upload`` (validation,
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

from rano.measure import measure_lesions
from tests.factories import make_member
from tests.pipeline.conftest import SyntheticPatient, ground_truth_mask
from trials import pipeline, services
from trials.choices import AssessmentSource, Criteria, JobState, LesionRole, MembershipRole, RunStatus
from trials.exceptions import InvalidInputError
from trials.models import (
    Assessment,
    AuditEvent,
    Lesion,
    LesionObservation,
    ModelVersion,
    SegmentationRun,
    Timepoint,
)

SUM_TOLERANCE_MM = 1e-6  # the same voxels are measured: sums agree to rounding


def ground_truth_version() -> ModelVersion:
    """A ModelVersion row standing for the phantom's ground truth (its 'weights' are the phantom seed)."""
    return services.register_model_version(
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
    upload = pipeline.ingest_upload(timepoint, patient_data.zips[index], enqueue=False, actor=None)
    volume = sitk.ReadImage(str(media_root / upload.series.volume_file.name))
    version = ModelVersion.objects.filter(name="phantom-ground-truth").first() or ground_truth_version()
    run = pipeline.record_segmentation(
        upload.series, version, ground_truth_mask(patient_data.phantoms[index], volume)
    )
    pipeline.run_analysis_stage(upload.job.pk, run.pk)
    upload.job.refresh_from_db()
    assert upload.job.state == JobState.SUCCEEDED, upload.job.error
    return upload


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

    # Sums, nadir and responses against the oracle.
    lds = [ground_truth_lds(p) for p in synthetic_patient.phantoms]
    sums, responses, nadirs = oracle(lds)
    assert responses == ["", "PR", "PD"]  # the scenario is built to be unambiguous
    for index, label in enumerate(synthetic_patient.labels):
        row = Assessment.objects.get(timepoint=timepoints[label], criteria=Criteria.RANO_BM, is_current=True)
        assert row.source == AssessmentSource.AI and row.status == "draft"
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
    run = pipeline.record_segmentation(
        series, version, ground_truth_mask(synthetic_patient.phantoms[1], volume)
    )
    assert pipeline.analyse_run(run) == {"already_analysed": True}
    assert pipeline.reassess_patient(pipeline_patient, from_timepoint=None, actor=None) == []
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
    services.update_lesion(new_lesion, is_false_positive=True, actor=reader, reason="vessel, not a lesion")
    services.update_lesion(
        Lesion.objects.get(patient=pipeline_patient, label=regrowing),
        role=LesionRole.NON_TARGET,
        actor=reader,
        reason="irradiated lesion, not a target",
    )
    created = pipeline.reassess_patient(
        pipeline_patient,
        from_timepoint=timepoints["FU1"],
        actor=reader,
        reason="reader review",
        correlation_id="c1",
    )
    assert {a.timepoint_id for a in created} == {timepoints["FU1"].pk, timepoints["FU2"].pk}

    # Remaining target: the other lesion, halved by FU1 and still small at FU2 -> PR at both; the regrowing
    # non-target is flagged, not called progression (a reader judgement, rano-bm.md 4).
    new_fu2 = Assessment.objects.get(timepoint=timepoints["FU2"], criteria=Criteria.RANO_BM, is_current=True)
    assert new_fu2.overall_response == "PR" and new_fu2.new_lesion_status == "none"
    assert new_fu2.supersedes_id == old_fu2.pk
    old_fu2.refresh_from_db()
    assert not old_fu2.is_current and old_fu2.overall_response == "PD"  # kept, superseded
    baseline_row.refresh_from_db()
    assert baseline_row.is_current  # earlier visits untouched
    events = AuditEvent.objects.filter(correlation_id="c1", action="create", object_type="trials.assessment")
    assert events.count() == len(created) and {e.actor_id for e in events} == {reader.pk}


@pytest.mark.django_db
def test_reassess_refuses_a_visit_of_another_patient(pipeline_patient: Any) -> None:
    from tests.factories import make_patient, make_timepoint

    other = make_timepoint(make_patient(pipeline_patient.trial), is_baseline=True)
    with pytest.raises(InvalidInputError, match="another patient"):
        pipeline.reassess_patient(pipeline_patient, from_timepoint=other, actor=None)


@pytest.mark.django_db
def test_reassess_waits_for_an_analysed_baseline(pipeline_patient: Any) -> None:
    assert pipeline.reassess_patient(pipeline_patient, from_timepoint=None, actor=None) == []
