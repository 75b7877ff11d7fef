"""REST API behaviour: auth, validation, duplicates, audit through the API, query counts, OpenAPI."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from drf_spectacular.validation import validate_schema
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from tests.factories import (
    DEFAULT_PASSWORD,
    make_assessment,
    make_job,
    make_lesion,
    make_member,
    make_membership,
    make_observation,
    make_patient,
    make_series,
    make_site,
    make_timepoint,
)
from trials.models import AuditEvent, Patient

pytestmark = pytest.mark.django_db


def _client(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def test_unauthenticated_gets_401_with_token_challenge(api_client: APIClient) -> None:
    response = api_client.get("/api/v1/patients/")
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Token")


def test_token_obtained_with_password_authenticates(api_client: APIClient, trial: Any) -> None:
    user = make_member(trial, "investigator", "ina")
    response = api_client.post("/api/v1/auth/token/", {"username": "ina", "password": DEFAULT_PASSWORD})
    assert response.status_code == 200
    assert response.data["token"] == Token.objects.get(user=user).key
    api_client.credentials(HTTP_AUTHORIZATION=f"Token {response.data['token']}")
    assert api_client.get("/api/v1/trials/").data["results"][0]["code"] == "TRIAL-A"
    bad = APIClient()
    bad.credentials(HTTP_AUTHORIZATION="Token not-a-token")
    assert bad.get("/api/v1/trials/").status_code == 401


def test_session_login_authenticates(trial: Any) -> None:
    make_member(trial, "investigator", "ses")
    client = APIClient()
    assert client.login(username="ses", password=DEFAULT_PASSWORD)
    assert client.get("/api/v1/patients/").status_code == 200


def test_create_patient_duplicate_subject_id_is_409_with_clear_message(trial: Any) -> None:
    client = _client(make_member(trial, "data_manager"))
    payload = {"trial": trial.pk, "site": trial.sites.get().pk, "subject_id": "S-001"}
    assert client.post("/api/v1/patients/", payload, format="json").status_code == 201
    response = client.post("/api/v1/patients/", payload, format="json")
    assert response.status_code == 409
    assert response.data["detail"] == "A patient with this subject id already exists in this trial."
    assert Patient.objects.filter(subject_id="S-001").count() == 1


def test_duplicate_visit_label_and_second_baseline_are_409(trial: Any) -> None:
    patient = make_patient(trial)
    client = _client(make_member(trial, "data_manager"))
    url = "/api/v1/timepoints/"
    base = {"patient": patient.pk, "scan_date": "2025-01-01"}
    assert (
        client.post(url, {**base, "visit_label": "BL", "is_baseline": True}, format="json").status_code == 201
    )
    dup = client.post(url, {**base, "visit_label": "BL"}, format="json")
    assert dup.status_code == 409 and "already has a visit with this label" in dup.data["detail"]
    second = client.post(url, {**base, "visit_label": "BL2", "is_baseline": True}, format="json")
    assert second.status_code == 409 and "already has a baseline visit" in second.data["detail"]


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"visit_label": "FU1", "scan_date": "31/12/2024"}, "scan_date"),
        (
            {"visit_label": "FU1", "scan_date": "2024-12-31", "corticosteroid_status": "lots"},
            "corticosteroid_status",
        ),
        ({"scan_date": "2024-12-31"}, "visit_label"),
        ({"visit_label": "x" * 40, "scan_date": "2024-12-31"}, "visit_label"),
        ({"visit_label": "FU1", "scan_date": "2024-12-31", "patient": 999999}, "patient"),
    ],
)
def test_invalid_input_is_400_with_field_messages(trial: Any, payload: dict[str, Any], field: str) -> None:
    patient = make_patient(trial)
    client = _client(make_member(trial, "data_manager"))
    response = client.post("/api/v1/timepoints/", {"patient": patient.pk, **payload}, format="json")
    assert response.status_code == 400
    assert field in response.data and response.data[field]


def test_service_level_invalid_input_is_400_not_500(trial: Any, other_trial: Any) -> None:
    # The site exists and is visible to a member of both trials, but belongs to the other trial.
    user = make_member(trial, "data_manager")
    make_membership(user, other_trial, "investigator")
    client = _client(user)
    payload = {"trial": trial.pk, "site": other_trial.sites.get().pk, "subject_id": "S-9"}
    response = client.post("/api/v1/patients/", payload, format="json")
    assert response.status_code == 400
    assert "belongs to another trial" in response.data["detail"]


def test_observation_caliper_validation_is_400(trial: Any) -> None:
    lesion = make_lesion(make_patient(trial))
    tp = make_timepoint(lesion.patient)
    client = _client(make_member(trial, "radiologist"))
    response = client.post(
        "/api/v1/observations/",
        {"lesion": lesion.pk, "timepoint": tp.pk, "caliper_points_mm": [[0, 0], [1, 1]]},
        format="json",
    )
    assert response.status_code == 400
    assert "caliper_points_mm" in response.data


def test_write_through_api_is_audited_with_user_reason_and_request_id(trial: Any) -> None:
    user = make_member(trial, "radiologist", "rita")
    lesion = make_lesion(make_patient(trial))
    client = _client(user)
    response = client.patch(
        f"/api/v1/lesions/{lesion.pk}/",
        {"is_cystic": True, "reason": "cavity on T2"},
        format="json",
        HTTP_X_REQUEST_ID="req-7f3a",
    )
    assert response.status_code == 200 and response["X-Request-ID"] == "req-7f3a"
    event = AuditEvent.objects.filter(object_type="trials.lesion", object_id=str(lesion.pk)).first()
    assert (event.actor, event.actor_name, event.action) == (user, "rita", "update")
    assert (event.reason, event.correlation_id) == ("cavity on T2", "req-7f3a")
    assert event.before == {"is_cystic": False} and event.after == {"is_cystic": True}


def test_create_only_fields_cannot_be_changed_by_patch(trial: Any, other_trial: Any) -> None:
    patient = make_patient(trial, subject_id="P-1")
    client = _client(make_member(trial, "data_manager"))
    response = client.patch(f"/api/v1/patients/{patient.pk}/", {"trial": other_trial.pk}, format="json")
    assert response.status_code == 200
    patient.refresh_from_db()
    assert patient.trial == trial


def test_confirm_then_confirm_again_is_409_and_override_needs_reason(trial: Any) -> None:
    assessment = make_assessment(make_timepoint(make_patient(trial)), overall_response="PR")
    client = _client(make_member(trial, "radiologist", "rad"))
    url = f"/api/v1/assessments/{assessment.pk}/"
    ok = client.post(url + "confirm/", {}, format="json")
    assert ok.status_code == 200 and ok.data["status"] == "confirmed" and ok.data["signed_by_name"] == "rad"
    again = client.post(url + "confirm/", {}, format="json")
    assert again.status_code == 409 and "already confirmed" in again.data["detail"]
    no_reason = client.post(url + "override/", {"overall_response": "SD"}, format="json")
    assert no_reason.status_code == 400 and "reason" in no_reason.data
    bad = client.post(url + "override/", {"overall_response": "MEH", "reason": "x"}, format="json")
    assert bad.status_code == 400 and "overall_response" in bad.data
    new = client.post(
        url + "override/", {"overall_response": "SD", "reason": "PR not reached"}, format="json"
    )
    assert new.status_code == 201 and new.data["supersedes"] == assessment.pk and new.data["is_current"]


def test_filters_narrow_lists(trial: Any) -> None:
    p1, p2 = make_patient(trial, subject_id="P-1"), make_patient(trial, subject_id="P-2")
    make_timepoint(p1, is_baseline=True)
    make_timepoint(p2, is_baseline=True)
    make_timepoint(p2, visit_label="FU1")
    client = _client(make_member(trial, "investigator"))
    rows = client.get("/api/v1/timepoints/", {"patient": p2.pk}).data["results"]
    assert {r["visit_label"] for r in rows} == {"BASELINE", "FU1"}
    rows = client.get("/api/v1/timepoints/", {"is_baseline": "true"}).data["results"]
    assert {r["subject_id"] for r in rows} == {"P-1", "P-2"}
    assert client.get("/api/v1/patients/", {"subject_id": "p-1"}).data["count"] == 1


def _populate(trial: Any, n: int) -> None:
    """n patients, each with 2 visits, a lesion with 2 observations, a series, an assessment, a job."""
    site = trial.sites.first() or make_site(trial)
    for _ in range(n):
        patient = make_patient(trial, site=site)
        baseline = make_timepoint(patient, is_baseline=True)
        follow_up = make_timepoint(patient, visit_label="FU1")
        lesion = make_lesion(patient)
        make_observation(lesion, baseline)
        make_observation(lesion, follow_up)
        make_series(follow_up)
        make_assessment(follow_up)
        make_job(patient)
        make_member(trial, "investigator")


LIST_ENDPOINTS = [
    "trials",
    "sites",
    "memberships",
    "patients",
    "timepoints",
    "series",
    "model-versions",
    "lesions",
    "observations",
    "assessments",
    "audit-events",
    "jobs",
]


def test_list_query_count_does_not_grow_with_rows(trial: Any) -> None:
    client = _client(make_member(trial, "investigator"))

    def measure() -> dict[str, tuple[int, int]]:
        """endpoint -> (queries, rows) of one list request."""
        result = {}
        for endpoint in LIST_ENDPOINTS:
            with CaptureQueriesContext(connection) as ctx:
                response = client.get(f"/api/v1/{endpoint}/", {"page_size": 500})
            assert response.status_code == 200, endpoint
            result[endpoint] = (len(ctx.captured_queries), response.data["count"])
        return result

    _populate(trial, 1)
    few = measure()
    _populate(trial, 3)
    many = measure()
    for endpoint in LIST_ENDPOINTS:
        (few_queries, few_rows), (many_queries, many_rows) = few[endpoint], many[endpoint]
        assert many_queries == few_queries, (
            f"{endpoint}: {few_queries} queries for {few_rows} rows, {many_queries} for {many_rows}"
        )
        # count + page; force_authenticate makes no session or token lookups.
        assert few_queries <= 3, f"{endpoint}: {few_queries} queries"
        if endpoint not in ("trials", "sites", "model-versions"):
            assert many_rows > few_rows, endpoint


def test_openapi_schema_is_valid_and_covers_every_endpoint(api_client: APIClient) -> None:
    response = api_client.get("/api/schema/", {"format": "json"})
    assert response.status_code == 200
    schema = response.json()
    validate_schema(schema)  # OpenAPI 3 JSON schema validation (raises on an invalid document)
    paths = schema["paths"]
    for endpoint in LIST_ENDPOINTS:
        assert f"/api/v1/{endpoint}/" in paths
    assert "post" in paths["/api/v1/assessments/{id}/confirm/"]
    assert "post" in paths["/api/v1/assessments/{id}/override/"]
    assert "delete" not in paths["/api/v1/patients/{id}/"]
    statuses = schema["components"]["schemas"]["ResponseEnum"]["enum"]
    assert set(statuses) >= {"CR", "PR", "SD", "PD", "NE", "NON-CR/NON-PD"}


def test_swagger_ui_is_served_offline(api_client: APIClient) -> None:
    response = api_client.get("/api/docs/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "drf_spectacular_sidecar/swagger-ui-dist" in html
    assert "cdn." not in html and "unpkg" not in html


def test_other_trial_object_is_404_for_a_member_of_trial_a(trial: Any, other_trial: Any) -> None:
    client = _client(make_member(trial, "radiologist"))
    foreign = make_lesion(make_patient(other_trial))
    assert client.get(f"/api/v1/lesions/{foreign.pk}/").status_code == 404
    assert (
        client.patch(f"/api/v1/lesions/{foreign.pk}/", {"is_dural": True}, format="json").status_code == 404
    )
    foreign.refresh_from_db()
    assert not foreign.is_dural


def test_exception_handler_turns_a_raced_integrity_error_into_409() -> None:
    # Services pre-check with full_clean(); a concurrent insert can still reach the database constraint.
    from django.db import IntegrityError

    from trials.api.exceptions import exception_handler

    response = exception_handler(IntegrityError("duplicate key value violates unique constraint"), {})
    assert response is not None and response.status_code == 409
    assert "uniqueness" in response.data["detail"]
