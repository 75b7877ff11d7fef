"""A small synthetic trial whose exports are checked against golden files.

Built through the real services (tests/factories.py), as the pipeline and reader review would leave it.
Times the services stamp with ``now()`` (assessment creation and signature) are then pinned with a
queryset update so that the exported files are byte-for-byte reproducible.

GOLD-BM, sites S01 and S02:

* 001 (S01; enrolled 2024-01-02, treatment start 2024-01-05). Targets L1, L2, non-target L3, new L4.
    BASELINE 2024-01-03  L1 20.0  L2 15.0  L3 8.0 present          SLD 35.0
    FU1      2024-03-01  L1 12.0  L2 10.0  L3 present               SLD 22.0 (-37.1%) AI PR, reader confirmed
    FU2      2024-04-05  L1 11.0  L2  9.0 (2 fragments)  L3 absent  SLD 20.0 (-42.9%) AI SD, reader overrode PR
    FU3      2024-06-01  L1 14.0  L2  9.5  L4 new 7.0 (reader-added) SLD 23.5 AI PD, unreviewed draft
  Stored: FU1 confirmed PR; BOR PR; progression 2024-06-01 at FU3. A volumetric assessment at FU1.
* 002 (S02; enrolled 2024-02-01, no treatment start). Targets L1, L2; L3 new equivocal at FU1.
    BASELINE 2024-02-01  L1 12.0  L2 10.0                           SLD 22.0
    FU1      2024-04-01  L1 absent, L2 too small (counts 5.0), L3 4.0 SLD 5.0 (-77.3%) AI PR unconfirmed,
                          BOR SD, draft; no images (quality check); a failed segmentation job.
* 003 (S01): enrolled, no visits yet.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from tests import factories as f
from trials.choices import Criteria, JobKind, LesionRole, RunStatus
from trials.models import Assessment, Trial
from trials.records import assessments as assessment_records
from trials.records import jobs as job_records
from trials.records import lesions as lesion_records
from trials.records import visits as visit_records

PINNED_CREATED = dt.datetime(2024, 7, 1, 9, 30, tzinfo=dt.UTC)
PINNED_SIGNED = dt.datetime(2024, 7, 2, 14, 15, 30, tzinfo=dt.UTC)


@dataclass
class World:
    trial: Trial
    reader: Any
    data_manager: Any
    admin: Any
    investigator: Any
    objects: dict[str, Any]


def _pin(assessment: Assessment, *, signed: bool = False) -> None:
    values: dict[str, Any] = {"created_at": PINNED_CREATED}
    if signed:
        values["signed_at"] = PINNED_SIGNED
    Assessment.objects.filter(pk=assessment.pk).update(**values)


def build_world() -> World:
    """Create GOLD-BM (see module docstring) and its members; return handles to the rows."""
    trial = f.make_trial("GOLD-BM", title="Golden export trial")
    s01 = f.make_site(trial, code="S01", name="Site one")
    s02 = f.make_site(trial, code="S02", name="Site two")
    reader = f.make_member(trial, "radiologist", "rad1")
    data_manager = f.make_member(trial, "data_manager", "dm1")
    admin = f.make_member(trial, "admin", "admin1")
    investigator = f.make_member(trial, "investigator", "inv1")
    model = f.make_model_version(name="unetr-demo", version="1.0")
    o: dict[str, Any] = {}

    # ---- patient 001
    p1 = f.make_patient(
        trial,
        site=s01,
        subject_id="001",
        enrolment_date=dt.date(2024, 1, 2),
        treatment_start_date=dt.date(2024, 1, 5),
    )
    dates = {
        "BASELINE": dt.date(2024, 1, 3),
        "FU1": dt.date(2024, 3, 1),
        "FU2": dt.date(2024, 4, 5),
        "FU3": dt.date(2024, 6, 1),
    }
    tps = {
        label: f.make_timepoint(p1, visit_label=label, scan_date=day, is_baseline=label == "BASELINE")
        for label, day in dates.items()
    }
    visit_records.update_timepoint(
        tps["FU2"], actor=None, corticosteroid_status="decreased", clinical_status="improved"
    )
    runs = {}
    for n, (label, tp) in enumerate(tps.items(), start=1):
        series = f.make_series(tp, series_instance_uid=f"1.2.826.0.1.3680043.8.498.1{n}")
        # FU3: the small-lesion stage added component 3 (L3) after the network (column ai_stage).
        findings = (
            {"3": {"stage": "small_lesions", "features": {"lesion_probability": 0.8}}}
            if label == "FU3"
            else {}
        )
        runs[label] = f.make_run(series, model, status=RunStatus.SUCCEEDED, findings=findings)
    l1 = f.make_lesion(p1, role=LesionRole.TARGET, first_seen_timepoint=tps["BASELINE"])
    l2 = f.make_lesion(p1, role=LesionRole.TARGET, first_seen_timepoint=tps["BASELINE"])
    l3 = f.make_lesion(p1, role=LesionRole.NON_TARGET, first_seen_timepoint=tps["BASELINE"])
    l4 = f.make_lesion(p1, role=LesionRole.NON_TARGET, first_seen_timepoint=tps["FU3"])
    fp = f.make_lesion(
        p1, role=LesionRole.NON_TARGET, first_seen_timepoint=tps["FU1"], is_false_positive=True
    )
    measurements = {
        # label: {visit: (LD, perpendicular, volume, fragments) or None for absent}
        l1: {
            "BASELINE": (20.0, 14.0, 2100.0, 1),
            "FU1": (12.0, 8.0, 520.0, 1),
            "FU2": (11.0, 7.5, 450.0, 1),
            "FU3": (14.0, 9.0, 900.0, 1),
        },
        l2: {
            "BASELINE": (15.0, 10.0, 880.0, 1),
            "FU1": (10.0, 6.0, 260.0, 1),
            "FU2": (9.0, 5.0, 190.0, 2),
            "FU3": (9.5, 5.5, 210.0, 1),
        },
        l3: {
            "BASELINE": (8.0, 6.0, 150.0, 1),
            "FU1": (7.0, 5.0, 120.0, 1),
            "FU2": None,
            "FU3": (6.0, 4.0, 90.0, 1),
        },
    }
    for component, (lesion, visits) in enumerate(measurements.items(), start=1):
        for label, values in visits.items():
            if values is None:
                f.make_observation(
                    lesion, tps[label], present=False, longest_diameter_mm=None, segmentation_run=runs[label]
                )
                continue
            ld, perp, vol, fragments = values
            f.make_observation(
                lesion,
                tps[label],
                longest_diameter_mm=ld,
                perpendicular_diameter_mm=perp,
                volume_mm3=vol,
                fragment_count=fragments,
                slice_count=4,
                measurable=ld >= 10,
                segmentation_run=runs[label],
                component_label=component,
            )
    f.make_observation(
        l4,
        tps["FU3"],
        longest_diameter_mm=7.0,
        perpendicular_diameter_mm=5.0,
        volume_mm3=60.0,
        slice_count=3,
        source="manual",
    )
    f.make_observation(fp, tps["FU1"], longest_diameter_mm=3.0, segmentation_run=runs["FU1"])

    common = {"engine_version": "1.0.0", "baseline_sum_ld_mm": 35.0, "baseline_sum_volume_mm3": 2980.0}
    a_bl = f.make_assessment(
        tps["BASELINE"],
        overall_response="",
        sum_ld_mm=35.0,
        sum_volume_mm3=2980.0,
        nadir_sum_ld_mm=None,
        **common,
    )
    a_fu1 = f.make_assessment(
        tps["FU1"],
        overall_response="PR",
        target_response="PR",
        non_target_response="NON-CR/NON-PD",
        sum_ld_mm=22.0,
        nadir_sum_ld_mm=35.0,
        pct_change_from_baseline=-37.142857,
        pct_change_from_nadir=-37.142857,
        sum_volume_mm3=780.0,
        nadir_sum_volume_mm3=2980.0,
        volumetric_response="PR",
        confirmed=True,
        best_overall_response="PR",
        **common,
    )
    a_fu1 = assessment_records.record_confirmation(a_fu1, actor=reader)
    vol_fu1 = f.make_assessment(
        tps["FU1"],
        criteria=Criteria.VOLUMETRIC,
        overall_response="PR",
        sum_volume_mm3=780.0,
        baseline_sum_volume_mm3=2980.0,
        nadir_sum_volume_mm3=2980.0,
        pct_change_from_baseline=-73.825503,
        engine_version="1.0.0",
    )
    a_fu2_ai = f.make_assessment(
        tps["FU2"],
        overall_response="SD",
        target_response="SD",
        non_target_response="CR",
        sum_ld_mm=20.0,
        nadir_sum_ld_mm=22.0,
        pct_change_from_baseline=-42.857143,
        pct_change_from_nadir=-9.090909,
        sum_volume_mm3=640.0,
        nadir_sum_volume_mm3=780.0,
        volumetric_response="PR",
        best_overall_response="PR",
        **common,
    )
    a_fu2 = assessment_records.record_override(
        a_fu2_ai,
        overall_response="PR",
        target_response="PR",
        actor=reader,
        reason="SLD is 42.9% below baseline: PR, not SD.",
    )
    a_fu3 = f.make_assessment(
        tps["FU3"],
        overall_response="PD",
        target_response="SD",
        non_target_response="NON-CR/NON-PD",
        new_lesion_status="unequivocal",
        sum_ld_mm=23.5,
        nadir_sum_ld_mm=20.0,
        pct_change_from_baseline=-32.857143,
        pct_change_from_nadir=17.5,
        sum_volume_mm3=1110.0,
        nadir_sum_volume_mm3=640.0,
        volumetric_response="PD",
        best_overall_response="PR",
        progression_date=dt.date(2024, 6, 1),
        **common,
    )
    for a in (a_bl, vol_fu1, a_fu2_ai, a_fu3):
        _pin(a)
    for a in (a_fu1, a_fu2):
        _pin(a, signed=True)

    # ---- patient 002
    p2 = f.make_patient(trial, site=s02, subject_id="002", enrolment_date=dt.date(2024, 2, 1))
    bl2 = f.make_timepoint(p2, visit_label="BASELINE", scan_date=dt.date(2024, 2, 1), is_baseline=True)
    fu2_1 = f.make_timepoint(
        p2, visit_label="FU1", scan_date=dt.date(2024, 4, 1), corticosteroid_status="stable"
    )
    series2 = f.make_series(bl2, series_instance_uid="1.2.826.0.1.3680043.8.498.21")
    job = f.make_job(series2, kind=JobKind.SEGMENT, trial=trial)
    job_records.start_job(job)
    job_records.fail_job(job, error="CUDA out of memory")
    m1 = f.make_lesion(p2, role=LesionRole.TARGET, first_seen_timepoint=bl2)
    m2 = f.make_lesion(p2, role=LesionRole.TARGET, first_seen_timepoint=bl2)
    m3 = f.make_lesion(p2, role=LesionRole.NON_TARGET, first_seen_timepoint=fu2_1)
    f.make_observation(
        m1,
        bl2,
        longest_diameter_mm=12.0,
        perpendicular_diameter_mm=9.0,
        volume_mm3=700.0,
        slice_count=5,
        measurable=True,
    )
    f.make_observation(
        m2,
        bl2,
        longest_diameter_mm=10.0,
        perpendicular_diameter_mm=8.0,
        volume_mm3=420.0,
        slice_count=4,
        measurable=True,
    )
    f.make_observation(m1, fu2_1, present=False, longest_diameter_mm=None)
    f.make_observation(
        m2,
        fu2_1,
        longest_diameter_mm=3.2,
        perpendicular_diameter_mm=2.0,
        volume_mm3=12.0,
        slice_count=2,
        source="edited",
    )
    lesion_records.update_lesion(m2, actor=None, too_small_to_measure=True)
    f.make_observation(
        m3, fu2_1, longest_diameter_mm=4.0, perpendicular_diameter_mm=3.0, volume_mm3=20.0, slice_count=1
    )
    b2 = f.make_assessment(
        bl2, overall_response="", sum_ld_mm=22.0, baseline_sum_ld_mm=22.0, engine_version="1.0.0"
    )
    a2 = f.make_assessment(
        fu2_1,
        overall_response="PR",
        target_response="PR",
        non_target_response="",
        new_lesion_status="equivocal",
        sum_ld_mm=5.0,
        baseline_sum_ld_mm=22.0,
        nadir_sum_ld_mm=22.0,
        pct_change_from_baseline=-77.272727,
        pct_change_from_nadir=-77.272727,
        best_overall_response="SD",
        engine_version="1.0.0",
    )
    _pin(b2)
    _pin(a2)

    # ---- patient 003: no visits yet
    f.make_patient(trial, site=s01, subject_id="003", enrolment_date=dt.date(2024, 5, 2))
    o.update(p1=p1, p2=p2, tps=tps, fu2_1=fu2_1, job=job, a_fu2=a_fu2, a_fu3=a_fu3, a2=a2)
    return World(trial, reader, data_manager, admin, investigator, o)
