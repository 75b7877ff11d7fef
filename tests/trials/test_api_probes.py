"""Malformed input an attacker's probe sent: each answer is a 400, never a 500 (issue 19).

Every probe here answered 500 on the code before the fix: an audit-events date filter with a UTC offset
PostgreSQL cannot store (beyond +-15:59), a primary key past bigint, JSON nested thousands of levels,
and a trial code with a line break or a quote that reached an export's Content-Disposition header.
"""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from tests.factories import make_member, make_superuser, make_trial
from trials.choices import MembershipRole
from trials.exports import export_filename
from trials.models import Trial

pytestmark = pytest.mark.django_db

TOO_BIG = "99999999999999999999999"


@pytest.fixture
def root_client() -> APIClient:
    client = APIClient()
    client.force_authenticate(make_superuser())
    return client


@pytest.mark.parametrize(
    "value",
    [
        "2024-01-01T00:00:00+16:00",
        "2024-01-01T00:00:00-23:59",
        "0001-01-01T00:00:00+15:00",
        "9999-12-31T23:59:59-15:00",
    ],
)
@pytest.mark.parametrize("name", ["created_after", "created_before"])
def test_audit_event_date_filter_with_an_offset_postgresql_refuses_is_400(
    root_client: APIClient, name: str, value: str
) -> None:
    make_trial("T-1")
    response = root_client.get("/api/v1/audit-events/", {name: value})
    assert response.status_code == 400, response.content
    assert name in response.json()


def test_audit_event_date_filter_with_a_valid_offset_still_filters(root_client: APIClient) -> None:
    make_trial("T-1")
    response = root_client.get("/api/v1/audit-events/", {"created_after": "2000-01-01T00:00:00+15:59"})
    assert response.status_code == 200 and response.json()["count"] >= 1


@pytest.mark.parametrize(
    ("method", "url", "data"),
    [
        ("get", f"/api/v1/patients/{TOO_BIG}/", None),
        ("get", "/api/v1/patients/", {"trial": TOO_BIG}),
        ("get", "/api/v1/timepoints/", {"trial": TOO_BIG}),
        ("get", "/api/v1/timepoints/", {"patient": TOO_BIG}),
        ("get", "/api/v1/observations/", {"lesion": TOO_BIG}),
        ("get", "/api/v1/jobs/", {"object_id": TOO_BIG}),
        ("get", "/api/v1/audit-events/", {"actor": TOO_BIG}),
        ("get", "/api/v1/timepoints/", {"trial": "1e400"}),
        ("post", "/api/v1/patients/", {"trial": TOO_BIG, "site": TOO_BIG, "subject_id": "P-1"}),
        ("post", "/api/v1/memberships/", {"trial": 1, "user": TOO_BIG, "role": "investigator"}),
        ("post", "/api/v1/trials/", {"code": "T-2", "title": "x", "max_targets": TOO_BIG}),
        ("post", "/api/v1/trials/", {"code": "T-2", "title": "x", "confirmation_days": -1}),
    ],
)
def test_numbers_past_the_column_range_are_400_or_404(
    root_client: APIClient, method: str, url: str, data: dict[str, Any] | None
) -> None:
    make_trial("T-1")
    response = getattr(root_client, method)(url, data, format="json" if method == "post" else None)
    assert response.status_code in (400, 404), (response.status_code, response.content[:300])


@pytest.mark.parametrize("depth", [50, 5_000, 100_000])
def test_deeply_nested_json_is_400(root_client: APIClient, depth: int) -> None:
    trial = make_trial("T-1")
    body = '{"title": "x", "reason": "r", "description": ' + "[" * depth + "]" * depth + "}"
    response = root_client.generic(
        "PATCH", f"/api/v1/trials/{trial.pk}/", body, content_type="application/json"
    )
    assert response.status_code == 400, response.content[:300]


@pytest.mark.parametrize(
    "code",
    ['EVIL"\r\nSet-Cookie: x=1', "A\nB", 'Q"uote', "sp ace", "-lead", "x" * 33, "semi;colon"],
    ids=["crlf-header", "lf", "quote", "space", "leading-dash", "too-long", "semicolon"],
)
def test_trial_codes_are_validated(root_client: APIClient, code: str) -> None:
    response = root_client.post("/api/v1/trials/", {"code": code, "title": "Probe"}, format="json")
    assert response.status_code == 400 and "code" in response.json(), response.content
    assert not Trial.objects.filter(title="Probe").exists()


@pytest.mark.parametrize(
    ("endpoint", "field", "value"),
    [
        ("patients", "subject_id", "P\r\n1"),
        ("patients", "subject_id", '"P1"'),
        ("patients", "subject_id", "=cmd|' /C calc'!A0"),
        ("timepoints", "visit_label", "FU\n1"),
        ("timepoints", "visit_label", "<script>"),
        ("timepoints", "notes", "x" * 10_001),
        ("timepoints", "notes", "bell\x07"),
        ("sites", "name", "Site\r\nTwo"),
        ("trials", "description", "y" * 10_001),
    ],
    ids=[
        "subject-crlf",
        "subject-quotes",
        "subject-formula",
        "visit-lf",
        "visit-html",
        "notes-too-long",
        "notes-control",
        "site-crlf",
        "description-too-long",
    ],
)
def test_labels_names_and_free_text_are_validated(
    root_client: APIClient, endpoint: str, field: str, value: str
) -> None:
    from tests.factories import make_patient, make_timepoint

    patient = make_patient(make_trial("T-1"))
    visit = make_timepoint(patient, visit_label="BASELINE", is_baseline=True)
    target = {
        "patients": patient.pk,
        "timepoints": visit.pk,
        "sites": patient.site.pk,
        "trials": patient.trial.pk,
    }[endpoint]
    response = root_client.patch(
        f"/api/v1/{endpoint}/{target}/", {field: value, "reason": "probe"}, format="json"
    )
    assert response.status_code == 400 and field in response.json(), response.content[:300]


def test_an_export_of_a_trial_stored_with_an_unsafe_code_is_served_safely() -> None:
    trial = make_trial("T-1")
    Trial.objects.filter(pk=trial.pk).update(code='EVIL"\r\nX-Injected: 1')  # a row stored before validation
    trial.refresh_from_db()
    manager = make_member(trial, MembershipRole.DATA_MANAGER)
    client = APIClient()
    client.force_authenticate(manager)
    response = client.get(f"/api/v1/trials/{trial.pk}/exports/visits.csv")
    assert response.status_code == 200
    assert response["Content-Disposition"] == f'attachment; filename="{export_filename(trial, "visits")}"'
    assert "\n" not in response["Content-Disposition"] and "X-Injected" not in response.headers
    assert export_filename(trial, "visits") == "EVIL___X-Injected__1_visits.csv"
