"""Edits through the REST API re-assess the patient, as the dashboard's review actions do.

Steroid and clinical status (rano-bm.md section 6), lesion flags (section 2) and a reader's
unequivocal non-target progression (section 4) change responses; a PATCH of any of them must leave the
current assessments recomputed, the earlier versions kept. Expectations are the rules applied by hand
to measurements recorded directly (no imaging needed).
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import pytest
from rest_framework.test import APIClient

from tests.factories import (
    DEFAULT_PASSWORD,
    make_lesion,
    make_member,
    make_patient,
    make_timepoint,
    make_trial,
)
from trials import exceptions
from trials.choices import Criteria, MembershipRole
from trials.models import Assessment, LesionObservation, Timepoint
from trials.pipeline import assessment
from trials.records import lesions as lesion_records
from trials.records import visits

D0 = dt.date(2024, 1, 1)


def _observe(lesion: Any, timepoint: Timepoint, ld: float | None) -> LesionObservation:
    if ld is None:
        return lesion_records.record_observation(lesion, timepoint, actor=None, present=False)
    return lesion_records.record_observation(
        lesion, timepoint, actor=None, present=True, longest_diameter_mm=ld,
        perpendicular_diameter_mm=0.8 * ld, volume_mm3=math.pi / 6 * ld**3, slice_count=5,
        measurable=ld >= 10,
    )  # fmt: skip


def patient_with(
    course: dict[str, list[float | None]], days: list[int], trial: Any = None
) -> tuple[Any, list[Timepoint]]:
    """A patient whose lesions have the given LD (mm, None = absent) at visits on the given days."""
    patient = make_patient(trial or make_trial())
    visits, lesions = [], {}
    for index, day in enumerate(days):
        visit = make_timepoint(
            patient, visit_label="BASELINE" if index == 0 else f"FU{index}",
            scan_date=D0 + dt.timedelta(days=day), is_baseline=index == 0,
        )  # fmt: skip
        visits.append(visit)
        for label, lds in course.items():
            if label not in lesions:
                lesions[label] = make_lesion(patient, label=label, first_seen_timepoint=visit)
            _observe(lesions[label], visit, lds[index])
        assessment.reassess_patient(
            patient, from_timepoint=visit, actor=None, reason="new visit", edited=False
        )
    return patient, visits


def current(visit: Timepoint) -> Assessment:
    return Assessment.objects.get(timepoint=visit, criteria=Criteria.RANO_BM, is_current=True)


@pytest.fixture
def client_for():
    def _client(patient: Any, role: str = MembershipRole.RADIOLOGIST) -> APIClient:
        client = APIClient()
        client.force_authenticate(make_member(patient.trial, role))
        return client

    return _client


@pytest.mark.django_db
def test_patching_steroids_re_assesses_the_visit(client_for) -> None:
    patient, (_, fu1) = patient_with({"L1": [20, None], "L2": [20, None]}, [0, 60])
    before = current(fu1)
    assert before.overall_response == "CR"
    client = client_for(patient, MembershipRole.DATA_MANAGER)
    response = client.patch(
        f"/api/v1/timepoints/{fu1.pk}/",
        {"corticosteroid_status": "increased", "reason": "dex"},
        format="json",
    )
    assert response.status_code == 200, response.content
    after = current(fu1)
    assert after.overall_response == "SD" and after.supersedes_id == before.pk  # CR + steroids up -> SD


@pytest.mark.django_db
def test_patching_clinical_status_worse_makes_pd(client_for) -> None:
    patient, (_, fu1) = patient_with({"L1": [20, 12], "L2": [20, 12]}, [0, 60])
    assert current(fu1).overall_response == "PR"
    client = client_for(patient, MembershipRole.DATA_MANAGER)
    response = client.patch(
        f"/api/v1/timepoints/{fu1.pk}/", {"reason": "test change", "clinical_status": "worse"}, format="json"
    )
    assert response.status_code == 200, response.content
    assert current(fu1).overall_response == "PD"


@pytest.mark.django_db
def test_patching_a_lesion_flag_re_assesses_every_visit(client_for) -> None:
    """L1 grows 10 -> 18 mm (sum +27 %, +8 mm): target PD. Flagged cystic, it is no target: L2 alone is
    stable, SD; the baseline's sum drops to L2's 20 mm."""
    patient, (baseline, fu1) = patient_with({"L1": [10, 18], "L2": [20, 20]}, [0, 60])
    assert current(fu1).overall_response == "PD"
    lesion = patient.lesions.get(label="L1")
    response = client_for(patient).patch(
        f"/api/v1/lesions/{lesion.pk}/", {"is_cystic": True, "reason": "cyst"}, format="json"
    )
    assert response.status_code == 200, response.content
    assert current(fu1).overall_response == "SD"
    assert current(baseline).sum_ld_mm == pytest.approx(20.0)


@pytest.mark.django_db
def test_patching_unequivocal_non_target_progression_makes_pd(client_for) -> None:
    """Six lesions: L6 (the smallest) is a non-target. The reader marks it unequivocally progressing."""
    course = {f"L{i}": [30 - i, 21 - i] for i in range(1, 6)} | {"L6": [11, 15]}
    patient, (_, fu1) = patient_with(course, [0, 60])
    assert current(fu1).overall_response == "PR"
    observation = LesionObservation.objects.get(lesion__label="L6", timepoint=fu1)
    response = client_for(patient).patch(
        f"/api/v1/observations/{observation.pk}/",
        {"reason": "test change", "unequivocal_progression": True},
        format="json",
    )
    assert response.status_code == 200, response.content
    assert current(fu1).overall_response == "PD" and current(fu1).non_target_response == "PD"


@pytest.mark.django_db
def test_a_note_alone_does_not_re_assess(client_for) -> None:
    patient, (_, fu1) = patient_with({"L1": [20, 12]}, [0, 60])
    before = current(fu1)
    response = client_for(patient, MembershipRole.DATA_MANAGER).patch(
        f"/api/v1/timepoints/{fu1.pk}/", {"reason": "test change", "notes": "patient moved"}, format="json"
    )
    assert response.status_code == 200, response.content
    assert current(fu1).pk == before.pk


@pytest.mark.django_db
def test_an_override_redates_progression_and_best_response(client_for) -> None:
    """Rules: FU1 (day 60) PD, FU2 (day 120) PD. The radiologist overrides FU1 to SD: FU1's row and
    FU2's carry best overall response SD so far / SD, progression from FU2 (rano-bm.md section 7)."""
    patient, (_, fu1, fu2) = patient_with({"L1": [20, 28, 30], "L2": [15, 15, 15]}, [0, 60, 120])
    assert (current(fu1).overall_response, current(fu2).overall_response) == ("PD", "PD")
    assert current(fu2).progression_date == fu1.scan_date
    response = client_for(patient).post(
        f"/api/v1/assessments/{current(fu1).pk}/override/",
        {
            "overall_response": "SD",
            "reason": "post-radiosurgery change, not progression",
            "password": DEFAULT_PASSWORD,
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    overridden = current(fu1)
    assert (overridden.overall_response, overridden.status) == ("SD", "overridden")
    assert overridden.best_overall_response == "SD" and overridden.progression_date is None
    later = current(fu2)
    assert later.overall_response == "PD" and later.best_overall_response == "SD"
    assert later.progression_date == fu2.scan_date
    # The override stays in force: FU1's rules result did not change.
    assessment.reassess_patient(patient, from_timepoint=None, actor=None, edited=False)
    assert current(fu1).pk == overridden.pk


@pytest.mark.django_db
def test_the_baseline_cannot_be_overridden(client_for) -> None:
    """rano-bm.md section 6: the baseline visit has no response, so there is none to override."""
    patient, (baseline, _) = patient_with({"L1": [20, 12]}, [0, 60])
    before = current(baseline)
    response = client_for(patient).post(
        f"/api/v1/assessments/{before.pk}/override/",
        {"overall_response": "PR", "reason": "x", "password": DEFAULT_PASSWORD},
        format="json",
    )
    assert response.status_code == 409, response.content
    assert "baseline" in response.json()["detail"]
    assert current(baseline).pk == before.pk and current(baseline).overall_response == ""


@pytest.mark.django_db
def test_changing_the_trial_settings_re_assesses_every_patient(
    client_for, settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    """Each assessment stores the settings it used (rano-bm.md section 9): a protocol change (here
    max_targets 5 -> 1) queues one job that re-assesses every patient of the trial."""
    from trials.choices import JobKind
    from trials.models import ProcessingJob

    settings.CELERY_EMBEDDED, settings.PIPELINE_EMBEDDED_SYNC = True, True
    patient, (baseline, fu1) = patient_with({"L1": [20, 12], "L2": [15, 15]}, [0, 60])
    _, (_, other_fu1) = patient_with({"L1": [30, 30], "L2": [10, 20]}, [0, 60], trial=patient.trial)
    before = current(fu1)
    assert before.sum_ld_mm == pytest.approx(27.0) and before.settings["max_targets"] == 5
    admin = make_member(patient.trial, MembershipRole.ADMIN)
    client = APIClient()
    client.force_authenticate(admin)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.patch(
            f"/api/v1/trials/{patient.trial_id}/",
            {"max_targets": 1, "reason": "protocol amendment 2"},
            format="json",
        )
    assert response.status_code == 200, response.content
    job = ProcessingJob.objects.get(kind=JobKind.ASSESS)
    assert job.state == "succeeded" and job.result["patients"] == 2
    after = current(fu1)
    assert after.supersedes_id == before.pk and after.settings["max_targets"] == 1
    assert after.sum_ld_mm == pytest.approx(12.0)  # L1 alone is the target now
    assert (
        current(other_fu1).sum_ld_mm == pytest.approx(30.0)
        and current(other_fu1).settings["max_targets"] == 1
    )
    # A change of anything but the criteria settings queues nothing.
    with django_capture_on_commit_callbacks(execute=True):
        client.patch(
            f"/api/v1/trials/{patient.trial_id}/",
            {"reason": "test change", "title": "renamed"},
            format="json",
        )
    assert ProcessingJob.objects.filter(kind=JobKind.ASSESS).count() == 1


@pytest.mark.django_db
def test_too_small_flag_does_not_hide_a_regrown_lesion(client_for) -> None:
    """rano-bm.md section 3: a target marked too small counts 5 mm where it is too small; where it is
    measured again (25 mm at FU2, regrown) its measured LD counts, so the growth is progression."""
    patient, (_, fu1, fu2) = patient_with({"L1": [20, 3, 25]}, [0, 60, 120])
    lesion = patient.lesions.get(label="L1")
    response = client_for(patient).patch(
        f"/api/v1/lesions/{lesion.pk}/",
        {"too_small_to_measure": True, "reason": "3 mm, at the limit"},
        format="json",
    )
    assert response.status_code == 200, response.content
    assert current(fu1).sum_ld_mm == pytest.approx(5.0)  # too small there: counts too_small_mm
    regrown = current(fu2)
    assert regrown.sum_ld_mm == pytest.approx(25.0)
    assert (regrown.target_response, regrown.overall_response) == ("PD", "PD")
    assert regrown.progression_date == fu2.scan_date


@pytest.mark.django_db
def test_a_visit_without_imaging_is_not_evaluable_or_clinical_progression() -> None:
    """rano-bm.md section 6: missing imaging at a visit -> NE; clinical status worse -> PD (any PD
    criterion), with the progression date of that visit. The latest visit still awaiting its scan is
    not assessed yet."""
    patient, (baseline, fu1) = patient_with({"L1": [20, 18]}, [0, 60])
    missed = make_timepoint(patient, visit_label="FU2", scan_date=D0 + dt.timedelta(days=120))
    later = make_timepoint(patient, visit_label="FU3", scan_date=D0 + dt.timedelta(days=180))
    _observe(patient.lesions.get(label="L1"), later, 19)
    awaiting = make_timepoint(patient, visit_label="FU4", scan_date=D0 + dt.timedelta(days=240))
    assessment.reassess_patient(
        patient, from_timepoint=later, actor=None, reason="FU3 analysed", edited=False
    )
    assert current(missed).overall_response == "NE"
    assert current(later).overall_response == "SD"
    assert not Assessment.objects.filter(timepoint=awaiting).exists()
    visits.update_timepoint(awaiting, clinical_status="worse", actor=None)
    assessment.reassess_patient(
        patient, from_timepoint=awaiting, actor=None, reason="clinically worse", edited=True
    )
    worse = current(awaiting)
    assert worse.overall_response == "PD" and worse.progression_date == awaiting.scan_date


@pytest.mark.django_db
def test_a_non_target_merged_into_a_target_is_not_non_target_cr() -> None:
    """rano-bm.md section 3: the merged mass is measured once as the target; the non-target inside it
    has not disappeared, so the non-targets are not CR (and the API names the absorbing lesion)."""
    patient, (baseline, fu1) = patient_with({"L1": [20, 16], "L2": [6, 5]}, [0, 60])
    assert current(fu1).non_target_response == "NON-CR/NON-PD"
    fu2 = make_timepoint(patient, visit_label="FU2", scan_date=D0 + dt.timedelta(days=120))
    l1, l2 = patient.lesions.get(label="L1"), patient.lesions.get(label="L2")
    _observe(l1, fu2, 17)
    lesion_records.record_observation(l2, fu2, actor=None, present=False, merged_into=l1)
    assessment.reassess_patient(patient, from_timepoint=fu2, actor=None, reason="FU2 analysed", edited=False)
    merged = current(fu2)
    assert merged.non_target_response == "NON-CR/NON-PD", merged.reasons
    assert merged.sum_ld_mm == pytest.approx(17.0)
    client = APIClient()
    client.force_authenticate(make_member(patient.trial, MembershipRole.INVESTIGATOR))
    row = client.get("/api/v1/observations/", {"lesion": l2.pk, "timepoint": fu2.pk}).data["results"][0]
    assert row["merged_into"] == "L1" and row["present"] is False
    with pytest.raises(exceptions.InvalidInputError):
        lesion_records.record_observation(l1, baseline, actor=None, present=False, merged_into=l1)
