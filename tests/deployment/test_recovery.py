"""What a person can do about a failed job, and stored files served only to the trial's members."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
from django.test import Client

from tests.factories import (
    DEFAULT_PASSWORD,
    make_job,
    make_member,
    make_patient,
    make_series,
    make_timepoint,
    make_trial,
)
from trials.choices import JobKind, JobState, MembershipRole
from trials.models import AuditEvent, ProcessingJob
from trials.records import jobs as job_records

pytestmark = pytest.mark.django_db


def _failed_job(trial: Any) -> ProcessingJob:
    """A failed pipeline job of a series of a patient's baseline visit."""
    visit = make_timepoint(make_patient(trial), visit_label="BASELINE", is_baseline=True)
    job = make_job(make_series(visit), kind=JobKind.PIPELINE)
    return job_records.fail_job(job, error="The model directory is incomplete.")


def test_api_runs_a_failed_job_again_with_a_reason(api_client: Any) -> None:
    trial = make_trial()
    job = _failed_job(trial)
    url = f"/api/v1/jobs/{job.pk}/retry/"
    api_client.force_authenticate(make_member(trial, MembershipRole.RADIOLOGIST))
    assert api_client.post(url, {"reason": "model installed"}, format="json").status_code == 403
    api_client.force_authenticate(make_member(make_trial(), MembershipRole.DATA_MANAGER))
    assert api_client.post(url, {"reason": "model installed"}, format="json").status_code == 404
    api_client.force_authenticate(make_member(trial, MembershipRole.DATA_MANAGER))
    assert api_client.post(url, {}, format="json").status_code == 400  # a reason is required

    response = api_client.post(url, {"reason": "model installed"}, format="json", HTTP_X_REQUEST_ID="retry-1")

    assert response.status_code == 202, response.content
    assert response.json()["state"] == JobState.QUEUED and response.json()["error"] == ""
    event = AuditEvent.objects.get(object_type="trials.processingjob", object_id=str(job.pk), action="retry")
    assert event.reason == "model installed" and event.correlation_id == "retry-1"
    again = api_client.post(url, {"reason": "twice"}, format="json")
    assert again.status_code == 409 and "only a failed job" in again.json()["detail"]


def test_dashboard_offers_the_retry_to_data_managers_only(client: Client) -> None:
    trial = make_trial()
    job = _failed_job(trial)
    patient_url = f"/patients/{job.content_object.timepoint.patient_id}/"
    investigator = make_member(trial, MembershipRole.INVESTIGATOR)
    client.login(username=investigator.username, password=DEFAULT_PASSWORD)
    assert f"Retry job {job.pk}" not in client.get(patient_url).content.decode()
    assert client.post(f"/jobs/{job.pk}/retry/", {"reason": "x"}).status_code == 403

    manager = make_member(trial, MembershipRole.DATA_MANAGER)
    client.login(username=manager.username, password=DEFAULT_PASSWORD)
    assert f"Retry job {job.pk}" in client.get(patient_url).content.decode()
    response = client.post(f"/jobs/{job.pk}/retry/", {"reason": "disk cleaned", "next": patient_url})
    assert response.status_code == 302 and response["Location"] == patient_url
    job.refresh_from_db()
    assert job.state == JobState.QUEUED
    assert AuditEvent.objects.filter(object_id=str(job.pk), action="retry", reason="disk cleaned").exists()


def test_a_series_volume_is_served_only_to_the_trial_through_an_authorised_view(
    api_client: Any, settings: Any, tmp_path: Path
) -> None:
    settings.MEDIA_ROOT = tmp_path
    trial = make_trial()
    series = make_series(make_timepoint(make_patient(trial)))
    volume = sitk.GetImageFromArray(np.arange(24, dtype=np.int16).reshape(2, 3, 4))
    (tmp_path / "series/s").mkdir(parents=True)
    sitk.WriteImage(volume, str(tmp_path / "series/s/volume.nii"))
    series.volume_file = "series/s/volume.nii"
    series.save(update_fields=["volume_file"])

    assert api_client.get(f"/api/v1/series/{series.pk}/volume/").status_code == 401
    assert Client().get("/media/series/s/volume.nii").status_code == 404  # no public media URL
    api_client.force_authenticate(make_member(make_trial(), MembershipRole.INVESTIGATOR))
    assert api_client.get(f"/api/v1/series/{series.pk}/volume/").status_code == 404
    api_client.force_authenticate(make_member(trial, MembershipRole.INVESTIGATOR))
    detail = api_client.get(f"/api/v1/series/{series.pk}/").json()
    assert detail["volume_file"] == f"http://testserver/api/v1/series/{series.pk}/volume/"
    response = api_client.get(detail["volume_file"])
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == (tmp_path / "series/s/volume.nii").read_bytes()
