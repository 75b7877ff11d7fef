"""PATCH /api/v1/trials/{id}/: a change of the criteria settings answers with the re-assessment job."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from tests.factories import make_member, make_patient
from trials.choices import JobKind
from trials.models import ProcessingJob

pytestmark = pytest.mark.django_db


def _admin_client(trial: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(make_member(trial, "admin"))
    return client


def test_criteria_change_answers_with_the_queued_job_and_its_url(trial: Any) -> None:
    make_patient(trial)
    client = _admin_client(trial)
    response = client.patch(
        f"/api/v1/trials/{trial.pk}/", {"max_targets": 2, "reason": "amendment"}, format="json"
    )
    assert response.status_code == 200, response.content
    assert response.data["max_targets"] == 2
    job = ProcessingJob.objects.get(kind=JobKind.ASSESS, trial=trial)
    reassessment = response.data["reassessment_job"]
    assert reassessment["id"] == job.pk
    assert reassessment["kind"] == "assess" and reassessment["state"] == "queued"
    assert reassessment["url"] == f"http://testserver/api/v1/jobs/{job.pk}/"
    followed = client.get(reassessment["url"])
    assert followed.status_code == 200 and followed.data["id"] == job.pk


def test_a_second_criteria_change_answers_with_its_own_job(trial: Any) -> None:
    client = _admin_client(trial)
    first = client.patch(
        f"/api/v1/trials/{trial.pk}/", {"max_targets": 2, "reason": "amendment"}, format="json"
    )
    second = client.patch(
        f"/api/v1/trials/{trial.pk}/",
        {"max_targets": 3, "reason": "amendment"},
        format="json",
        HTTP_X_REQUEST_ID="same-id",
    )
    third = client.patch(
        f"/api/v1/trials/{trial.pk}/",
        {"max_targets": 4, "reason": "amendment"},
        format="json",
        HTTP_X_REQUEST_ID="same-id",
    )
    ids = [r.data["reassessment_job"]["id"] for r in (first, second, third)]
    assert len(set(ids)) == 3
    assert ids == list(
        ProcessingJob.objects.filter(kind=JobKind.ASSESS, trial=trial)
        .order_by("pk")
        .values_list("pk", flat=True)
    )


def test_other_changes_answer_with_no_job(trial: Any) -> None:
    client = _admin_client(trial)
    response = client.patch(
        f"/api/v1/trials/{trial.pk}/", {"title": "renamed", "reason": "typo"}, format="json"
    )
    assert response.status_code == 200
    assert response.data["reassessment_job"] is None
    assert not ProcessingJob.objects.filter(kind=JobKind.ASSESS).exists()
    same = client.patch(
        f"/api/v1/trials/{trial.pk}/",
        {"max_targets": trial.max_targets, "reason": "no change"},
        format="json",
    )
    assert same.status_code == 200 and same.data["reassessment_job"] is None


def test_a_get_of_the_trial_has_no_job_field(trial: Any) -> None:
    client = _admin_client(trial)
    assert "reassessment_job" not in client.get(f"/api/v1/trials/{trial.pk}/").data


def test_openapi_documents_the_job_of_a_trial_patch(api_client: APIClient, trial: Any) -> None:
    api_client.force_authenticate(make_member(trial, "investigator"))
    schema = api_client.get("/api/schema/", {"format": "json"}).json()
    ref = schema["paths"]["/api/v1/trials/{id}/"]["patch"]["responses"]["200"]["content"]["application/json"][
        "schema"
    ]["$ref"]
    component = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert "reassessment_job" in component["properties"]
