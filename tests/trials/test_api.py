"""REST API behaviour: auth, validation, duplicates, audit through the API, query counts, OpenAPI."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from drf_spectacular.validation import validate_schema
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
    make_user,
)
from trials.models import ApiToken, AuditEvent, Patient

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
    assert set(response.data) == {"token", "expiry"}
    # Only a digest is stored: the key itself is nowhere in the database.
    assert not ApiToken.objects.filter(digest=response.data["token"]).exists()
    assert ApiToken.objects.get(user=user).token_key == response.data["token"][:15]
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
    dup = client.post(url, {**base, "visit_label": "BL", "scan_date": "2025-03-01"}, format="json")
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
    response = client.patch(
        f"/api/v1/patients/{patient.pk}/", {"reason": "test change", "trial": other_trial.pk}, format="json"
    )
    assert response.status_code == 400 and "read-only" in response.data["trial"][0]
    patient.refresh_from_db()
    assert patient.trial == trial
    # sending back what was read is fine: unchanged read-only values are not an error
    same = client.patch(
        f"/api/v1/patients/{patient.pk}/",
        {"reason": "test change", "trial": trial.pk, "id": patient.pk},
        format="json",
    )
    assert same.status_code == 200, same.data


def test_unknown_and_read_only_fields_are_refused_not_dropped(trial: Any) -> None:
    """A field the API would ignore is a 400 naming it: a typo never looks like a saved change."""
    patient = make_patient(trial, subject_id="P-1")
    visit = make_timepoint(patient, is_baseline=True)
    lesion = make_lesion(patient, label="L3")
    client = _client(make_member(trial, "radiologist"))
    manager = _client(make_member(trial, "data_manager"))
    typo = manager.patch(
        f"/api/v1/timepoints/{visit.pk}/", {"reason": "test change", "steroids": "increased"}, format="json"
    )
    assert typo.status_code == 400 and typo.data["steroids"] == ["Unknown field."]
    relabel = client.patch(
        f"/api/v1/lesions/{lesion.pk}/", {"reason": "test change", "label": "L99"}, format="json"
    )
    assert relabel.status_code == 400 and "label" in relabel.data
    lesion.refresh_from_db()
    assert lesion.label == "L3"
    created = manager.post(
        "/api/v1/timepoints/",
        {"patient": patient.pk, "visit_label": "FU1", "scan_date": "2025-03-01", "unknown_field": 1},
        format="json",
    )
    assert created.status_code == 400 and "unknown_field" in created.data
    assert not patient.timepoints.filter(visit_label="FU1").exists()


def test_confirm_then_confirm_again_is_409_and_override_needs_reason(trial: Any) -> None:
    assessment = make_assessment(make_timepoint(make_patient(trial)), overall_response="PR")
    client = _client(make_member(trial, "radiologist", "rad"))
    url = f"/api/v1/assessments/{assessment.pk}/"
    sign = {"password": DEFAULT_PASSWORD}
    ok = client.post(url + "confirm/", sign, format="json")
    assert ok.status_code == 200 and ok.data["status"] == "confirmed" and ok.data["signed_by_name"] == "rad"
    assert ok.data["signature_meaning"] == "reviewed_confirmed"
    again = client.post(url + "confirm/", sign, format="json")
    assert again.status_code == 409 and "already confirmed" in again.data["detail"]
    no_reason = client.post(url + "override/", {"overall_response": "SD", **sign}, format="json")
    assert no_reason.status_code == 400 and "reason" in no_reason.data
    bad = client.post(url + "override/", {"overall_response": "MEH", "reason": "x", **sign}, format="json")
    assert bad.status_code == 400 and "overall_response" in bad.data
    new = client.post(
        url + "override/", {"overall_response": "SD", "reason": "PR not reached", **sign}, format="json"
    )
    assert new.status_code == 201 and new.data["supersedes"] == assessment.pk and new.data["is_current"]
    assert new.data["signature_meaning"] == "reviewed_overridden" and new.data["status"] == "overridden"


def test_signing_through_the_api_needs_the_password_again(trial: Any) -> None:
    """Confirm and override are electronic signatures (21 CFR Part 11): the API asks for the password
    as the dashboard does, and the signature's meaning follows from the verb, never from the client."""
    assessment = make_assessment(make_timepoint(make_patient(trial)), overall_response="PR")
    client = _client(make_member(trial, "radiologist", "rad"))
    url = f"/api/v1/assessments/{assessment.pk}/"
    missing = client.post(url + "confirm/", {"reason": "looks right"}, format="json")
    assert missing.status_code == 400 and "password" in missing.data
    wrong = client.post(url + "confirm/", {"password": "guess"}, format="json")
    assert wrong.status_code == 400 and "password does not match" in wrong.data["detail"]
    meaning = client.post(
        url + "confirm/",
        {"password": DEFAULT_PASSWORD, "signature_meaning": "reviewed_overridden"},
        format="json",
    )
    assert meaning.status_code == 400 and "signature_meaning" in meaning.data
    unsigned = client.post(url + "override/", {"overall_response": "SD", "reason": "x"}, format="json")
    assert unsigned.status_code == 400 and "password" in unsigned.data
    assessment.refresh_from_db()
    assert assessment.status == "draft" and assessment.signed_by is None and assessment.is_current
    assert not AuditEvent.objects.filter(action__in=["confirm", "override"]).exists()


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
    "trial-models",
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
        if endpoint not in ("trials", "sites", "model-versions", "trial-models"):
            assert many_rows > few_rows, endpoint


def test_openapi_schema_and_docs_are_for_signed_in_users_only(api_client: APIClient) -> None:
    # Issue 19: both were public. API_DOCS_PUBLIC=1 opens them again.
    assert api_client.get("/api/schema/", {"format": "json"}).status_code == 401
    docs = api_client.get("/api/docs/")
    assert docs.status_code == 302 and docs["Location"].startswith("/accounts/login/")


def test_openapi_schema_is_valid_and_covers_every_endpoint(api_client: APIClient) -> None:
    api_client.force_authenticate(make_user())
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


def test_swagger_ui_is_served_offline_without_inline_script(api_client: APIClient) -> None:
    api_client.force_login(make_user())
    response = api_client.get("/api/docs/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "drf_spectacular_sidecar/swagger-ui-dist" in html
    assert "cdn." not in html and "unpkg" not in html
    assert "<script>" not in html.replace(" ", "")  # its settings come from a script file (the CSP)


def test_other_trial_object_is_404_for_a_member_of_trial_a(trial: Any, other_trial: Any) -> None:
    client = _client(make_member(trial, "radiologist"))
    foreign = make_lesion(make_patient(other_trial))
    assert client.get(f"/api/v1/lesions/{foreign.pk}/").status_code == 404
    assert (
        client.patch(
            f"/api/v1/lesions/{foreign.pk}/", {"reason": "test change", "is_dural": True}, format="json"
        ).status_code
        == 404
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


def test_impossible_measurements_are_refused_with_the_field_named(trial: Any) -> None:
    """A negative, absurd or self-contradicting diameter is a 400 naming the field; nothing is stored or
    re-assessed (it would otherwise drive the response and the exports)."""
    patient = make_patient(trial)
    visit = make_timepoint(patient, is_baseline=True)
    observation = make_observation(
        make_lesion(patient), visit, longest_diameter_mm=16.1, perpendicular_diameter_mm=9.0
    )
    client = _client(make_member(trial, "radiologist"))
    url = f"/api/v1/observations/{observation.pk}/"
    events = AuditEvent.objects.count()
    for change, field, words in (
        ({"longest_diameter_mm": -5}, "longest_diameter_mm", "0 or more"),
        ({"volume_mm3": -1}, "volume_mm3", "0 or more"),
        ({"longest_diameter_mm": 1e9}, "longest_diameter_mm", "beyond any brain lesion"),
        ({"perpendicular_diameter_mm": 40.0}, "perpendicular_diameter_mm", "cannot exceed the longest"),
        ({"longest_diameter_mm": 8.0}, "longest_diameter_mm", "cannot exceed the longest"),
    ):
        response = client.patch(url, {**change, "reason": "remeasured"}, format="json")
        assert response.status_code == 400, (change, response.data)
        assert words in " ".join(response.data[field]), response.data
    observation.refresh_from_db()
    assert (observation.longest_diameter_mm, observation.perpendicular_diameter_mm) == (16.1, 9.0)
    assert AuditEvent.objects.count() == events
    ok = client.patch(
        url,
        {"reason": "round lesion", "longest_diameter_mm": 9.0, "perpendicular_diameter_mm": 9.0},
        format="json",
    )
    assert ok.status_code == 200, ok.data  # a round lesion: equal diameters


def test_a_readers_measurement_is_never_recorded_as_the_ai_s(trial: Any) -> None:
    patient = make_patient(trial)
    visit = make_timepoint(patient, is_baseline=True)
    lesion = make_lesion(patient)
    ai = make_observation(lesion, visit, source="ai")
    client = _client(make_member(trial, "radiologist"))
    relabel = client.patch(
        f"/api/v1/observations/{ai.pk}/",
        {"reason": "test change", "longest_diameter_mm": 30.0, "source": "ai"},
        format="json",
    )
    assert relabel.status_code == 400 and "source" in relabel.data
    edited = client.patch(
        f"/api/v1/observations/{ai.pk}/",
        {"reason": "test change", "longest_diameter_mm": 13.0},
        format="json",
    )
    assert edited.status_code == 200 and edited.data["source"] == "edited"
    back = client.patch(
        f"/api/v1/observations/{ai.pk}/", {"reason": "test change", "source": "manual"}, format="json"
    )
    assert back.status_code == 200 and back.data["source"] == "edited"  # derived, not the client's
    other = make_lesion(patient)
    added = client.post(
        "/api/v1/observations/",
        {"lesion": other.pk, "timepoint": visit.pk, "longest_diameter_mm": 11.0, "source": "edited"},
        format="json",
    )
    assert added.status_code == 201 and added.data["source"] == "manual"


def test_a_follow_up_cannot_be_dated_before_the_baseline(trial: Any) -> None:
    """Responses are measured from the baseline on: a follow-up scanned before it (a typo in the date)
    is refused, on creation and on a date change, and so is a baseline after its follow-ups."""
    patient = make_patient(trial)
    baseline = make_timepoint(patient, is_baseline=True, scan_date=dt.date(2025, 3, 3))
    follow_up = make_timepoint(patient, visit_label="FU1", scan_date=dt.date(2025, 5, 5))
    client = _client(make_member(trial, "data_manager"))
    moved = client.patch(
        f"/api/v1/timepoints/{follow_up.pk}/",
        {"reason": "test change", "scan_date": "2024-01-01"},
        format="json",
    )
    assert moved.status_code == 400 and "after the baseline" in moved.data["scan_date"][0]
    early = client.post(
        "/api/v1/timepoints/",
        {"patient": patient.pk, "visit_label": "FU0", "scan_date": "2023-06-01"},
        format="json",
    )
    assert early.status_code == 400 and "after the baseline" in early.data["scan_date"][0]
    late = client.patch(
        f"/api/v1/timepoints/{baseline.pk}/",
        {"reason": "test change", "scan_date": "2025-06-01"},
        format="json",
    )
    assert late.status_code == 400 and "before every follow-up" in late.data["scan_date"][0]
    follow_up.refresh_from_db()
    assert follow_up.scan_date == dt.date(2025, 5, 5)


def test_a_change_without_a_reason_is_refused(trial: Any) -> None:
    """Every human change records who, when, what and why: a PATCH without a reason is a 400 and
    changes nothing."""
    patient = make_patient(trial)
    visit = make_timepoint(patient, is_baseline=True)
    client = _client(make_member(trial, "data_manager"))
    for reason in ({}, {"reason": "  "}):
        response = client.patch(
            f"/api/v1/timepoints/{visit.pk}/", {"notes": "moved", **reason}, format="json"
        )
        assert response.status_code == 400 and "reason" in response.data
    visit.refresh_from_db()
    assert visit.notes == ""
    ok = client.patch(
        f"/api/v1/timepoints/{visit.pk}/", {"notes": "moved", "reason": "site note"}, format="json"
    )
    assert ok.status_code == 200
    event = AuditEvent.objects.filter(object_type="trials.timepoint", action="update").latest("created_at")
    assert event.reason == "site note"
