"""List filters of the REST API: ``?subject_id=`` everywhere, strict booleans, unknown parameters are 400."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from tests.factories import (
    make_assessment,
    make_job,
    make_lesion,
    make_member,
    make_observation,
    make_patient,
    make_run,
    make_series,
    make_timepoint,
)

pytestmark = pytest.mark.django_db

#: Lists of objects that belong to one patient (each answers ``?subject_id=``).
PATIENT_OWNED = [
    "patients",
    "timepoints",
    "series",
    "segmentation-runs",
    "lesions",
    "observations",
    "assessments",
]


def _client(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def _patient_world(trial: Any, subject_id: str) -> dict[str, Any]:
    """One patient with a baseline, a lesion, an observation, a series, a run and an assessment."""
    patient = make_patient(trial, subject_id=subject_id)
    baseline = make_timepoint(patient, is_baseline=True)
    lesion = make_lesion(patient)
    series = make_series(baseline)
    return {
        "patient": patient,
        "timepoint": baseline,
        "lesion": lesion,
        "observation": make_observation(lesion, baseline),
        "series": series,
        "run": make_run(series),
        "assessment": make_assessment(baseline),
    }


@pytest.mark.parametrize("endpoint", PATIENT_OWNED)
def test_subject_id_filters_every_list_of_patient_owned_objects(trial: Any, endpoint: str) -> None:
    mine = _patient_world(trial, "DEMO-001")
    _patient_world(trial, "DEMO-002")
    client = _client(make_member(trial, "investigator"))
    assert client.get(f"/api/v1/{endpoint}/").data["count"] == 2
    response = client.get(f"/api/v1/{endpoint}/", {"subject_id": "demo-001"})  # case-insensitive
    assert response.status_code == 200
    assert response.data["count"] == 1
    if endpoint != "patients":
        assert response.data["results"][0]["id"] in {obj.pk for obj in mine.values()}
    assert client.get(f"/api/v1/{endpoint}/", {"subject_id": "NOBODY"}).data["count"] == 0


@pytest.mark.parametrize(
    ("value", "expected"), [("true", 1), ("1", 1), ("yes", 1), ("True", 1), ("false", 1), ("0", 1), ("no", 1)]
)
def test_boolean_filters_accept_true_false_1_0_yes_no(trial: Any, value: str, expected: int) -> None:
    patient = make_patient(trial)
    make_timepoint(patient, is_baseline=True)
    make_timepoint(patient, visit_label="FU1")
    client = _client(make_member(trial, "investigator"))
    rows = client.get("/api/v1/timepoints/", {"is_baseline": value}).data["results"]
    assert len(rows) == expected
    assert rows[0]["is_baseline"] is (value.lower() in {"true", "1", "yes"})


def test_is_current_accepts_1_and_yes(trial: Any) -> None:
    visit = make_timepoint(make_patient(trial), is_baseline=True)
    make_assessment(visit)
    make_assessment(visit)  # supersedes the first
    client = _client(make_member(trial, "investigator"))
    assert client.get("/api/v1/assessments/").data["count"] == 2
    for value in ("true", "1", "yes"):
        assert client.get("/api/v1/assessments/", {"is_current": value}).data["count"] == 1, value
    for value in ("false", "0", "no"):
        assert client.get("/api/v1/assessments/", {"is_current": value}).data["count"] == 1, value


@pytest.mark.parametrize("value", ["maybe", "2", "ture"])
def test_boolean_filter_with_another_value_is_400(trial: Any, value: str) -> None:
    client = _client(make_member(trial, "investigator"))
    response = client.get("/api/v1/assessments/", {"is_current": value})
    assert response.status_code == 400
    assert "is_current" in response.data


@pytest.mark.parametrize("endpoint", ["patients", "timepoints", "assessments", "jobs", "model-versions"])
def test_unknown_query_parameter_on_a_list_is_400_naming_it(trial: Any, endpoint: str) -> None:
    client = _client(make_member(trial, "investigator"))
    response = client.get(f"/api/v1/{endpoint}/", {"subjectid": "DEMO-001"})
    assert response.status_code == 400
    assert "subjectid" in response.data
    assert "subjectid" in str(response.data["detail"])


def test_pagination_ordering_and_format_parameters_still_work(trial: Any) -> None:
    make_patient(trial, subject_id="A-1")
    make_patient(trial, subject_id="B-1")
    client = _client(make_member(trial, "investigator"))
    response = client.get(
        "/api/v1/patients/", {"page": 1, "page_size": 1, "ordering": "-subject_id", "format": "json"}
    )
    assert response.status_code == 200
    assert response.json()["results"][0]["subject_id"] == "B-1"


def test_retrieve_and_membership_delete_reason_are_not_list_filters(trial: Any) -> None:
    """Only lists check their parameters: a detail view or a DELETE with ``?reason=`` is unaffected."""
    patient = make_patient(trial)
    admin = make_member(trial, "admin")
    client = _client(admin)
    assert client.get(f"/api/v1/patients/{patient.pk}/", {"reason": "x"}).status_code == 200
    membership = make_member(trial, "investigator").memberships.get(trial=trial)
    assert client.delete(f"/api/v1/memberships/{membership.pk}/?reason=left").status_code == 204


# Every list endpoint with each of its documented filters answers 200 (none is mistaken for unknown).
DOCUMENTED_FILTERS: dict[str, dict[str, str]] = {
    "trials": {"code": "TRIAL-A"},
    "sites": {"trial": "{trial}", "code": "SITE-A"},
    "memberships": {"trial": "{trial}", "role": "investigator"},
    "patients": {"trial": "{trial}", "subject_id": "DEMO-001"},
    "timepoints": {
        "trial": "{trial}",
        "patient": "{patient}",
        "subject_id": "DEMO-001",
        "visit_label": "BASELINE",
        "is_baseline": "1",
        "scan_date_after": "2024-01-01",
        "scan_date_before": "2024-12-31",
    },
    "series": {
        "trial": "{trial}",
        "patient": "{patient}",
        "subject_id": "DEMO-001",
        "timepoint": "{timepoint}",
    },
    "segmentation-runs": {"trial": "{trial}", "patient": "{patient}", "subject_id": "DEMO-001"},
    "model-versions": {"is_active": "yes", "is_demo": "no", "lifecycle": "validated"},
    "trial-models": {"trial": "{trial}", "status": "active"},
    "lesions": {"trial": "{trial}", "patient": "{patient}", "subject_id": "DEMO-001", "role": "target"},
    "observations": {
        "trial": "{trial}",
        "patient": "{patient}",
        "subject_id": "DEMO-001",
        "present": "1",
        "source": "ai",
    },
    "assessments": {
        "trial": "{trial}",
        "patient": "{patient}",
        "subject_id": "DEMO-001",
        "is_current": "1",
        "criteria": "rano_bm",
    },
    "audit-events": {"trial": "{trial}", "action": "create", "created_after": "2024-01-01T00:00:00Z"},
    "jobs": {"trial": "{trial}", "kind": "segment", "state": "queued"},
}


@pytest.mark.parametrize("endpoint", list(DOCUMENTED_FILTERS))
def test_every_list_answers_its_documented_filters(trial: Any, endpoint: str) -> None:
    world = _patient_world(trial, "DEMO-001")
    make_job(world["patient"])
    ids = {"trial": trial.pk, "patient": world["patient"].pk, "timepoint": world["timepoint"].pk}
    client = _client(make_member(trial, "investigator"))
    params = {name: value.format(**ids) for name, value in DOCUMENTED_FILTERS[endpoint].items()}
    for name, value in params.items():
        response = client.get(f"/api/v1/{endpoint}/", {name: value})
        assert response.status_code == 200, (endpoint, name, response.data)
    response = client.get(f"/api/v1/{endpoint}/", params)
    assert response.status_code == 200, (endpoint, response.data)
