"""``POST /api/v1/timepoints/{id}/series/``: 202 with a job, 400 with the imaging message, 409 for duplicates.

Jobs run in embedded mode here (in-process, synchronously on commit) with a tiny real model directory;
the Redis worker tests are in test_worker.py.
"""

from __future__ import annotations

import io
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk

from segmentation.errors import ImagingError
from segmentation.io import read_series
from segmentation.synthetic_mr import write_dicom_series
from tests.factories import make_member
from tests.pipeline.conftest import SyntheticPatient
from trials.choices import JobState, MembershipRole
from trials.models import AuditEvent, ImagingSeries, ProcessingJob
from trials.pipeline import queue


def small_image(shape: tuple[int, int, int] = (12, 40, 40), seed: int = 0) -> sitk.Image:
    """A small int16 axial volume (1 mm) with a bright ellipsoid over noise."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape, dtype=float)
    inside = sum(((c - n / 2) / (n / 2.2)) ** 2 for c, n in zip((z, y, x), shape, strict=True)) <= 1
    image = sitk.GetImageFromArray((rng.integers(0, 50, shape) + 600 * inside).astype(np.int16))
    image.SetSpacing((1.0, 1.0, 1.0))
    return image


def zip_folder(folder: Path, target: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(target, "w") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, arcname=prefix + str(path.relative_to(folder)))
    return target


def series_zip(tmp: Path, name: str, **tags: Any) -> Path:
    folder = tmp / name
    write_dicom_series(small_image(), folder, patient_id="Doe^John", **tags)
    return zip_folder(folder, tmp / f"{name}.zip")


def bad_text(tmp: Path) -> Path:
    path = tmp / "notes.txt"
    path.write_text("not an image")
    return path


def bad_damaged_zip(tmp: Path) -> Path:
    good = series_zip(tmp, "damaged").read_bytes()
    path = tmp / "damaged-cut.zip"
    path.write_bytes(good[: len(good) // 2])
    return path


def bad_traversal_zip(tmp: Path) -> Path:
    folder = tmp / "trav"
    write_dicom_series(small_image(), folder, patient_id="X")
    return zip_folder(folder, tmp / "traversal.zip", prefix="../")


def bad_ct(tmp: Path) -> Path:
    return series_zip(tmp, "ct", modality="CT")


def bad_missing_slice(tmp: Path) -> Path:
    folder = tmp / "gap"
    files = write_dicom_series(small_image(), folder, patient_id="X")
    files[len(files) // 2].unlink()
    return zip_folder(folder, tmp / "gap.zip")


def bad_single_slice(tmp: Path) -> Path:
    folder = tmp / "single"
    files = write_dicom_series(small_image(), folder, patient_id="X")
    for path in files[1:]:
        path.unlink()
    return zip_folder(folder, tmp / "single.zip")


def bad_two_series(tmp: Path) -> Path:
    folder = tmp / "two"
    write_dicom_series(small_image(), folder / "a", patient_id="X", series_description="T1 post")
    write_dicom_series(small_image(seed=1), folder / "b", patient_id="X", series_description="FLAIR")
    return zip_folder(folder, tmp / "two.zip")


def bad_nifti(tmp: Path) -> Path:
    path = tmp / "broken.nii.gz"
    path.write_bytes(b"\x1f\x8b" + bytes(range(200)))
    return path


def bad_missing_study_time(tmp: Path) -> Path:
    return series_zip(tmp, "nostudytime", StudyTime=None)


BAD_INPUTS: dict[str, Callable[[Path], Path]] = {
    "not-dicom": bad_text,
    "damaged-zip": bad_damaged_zip,
    "path-traversal": bad_traversal_zip,
    "ct-not-mr": bad_ct,
    "missing-slice": bad_missing_slice,
    "single-slice": bad_single_slice,
    "two-series": bad_two_series,
    "corrupt-nifti": bad_nifti,
    "missing-study-time": bad_missing_study_time,
}


@pytest.fixture
def embedded(settings: Any, tiny_model_dir: Path, media_root: Path) -> None:
    """Embedded mode, jobs run synchronously on commit, with the tiny model."""
    settings.CELERY_EMBEDDED = True
    settings.PIPELINE_EMBEDDED_SYNC = True
    settings.PIPELINE_MODEL_DIR = str(tiny_model_dir)


def upload(client: Any, timepoint_id: int, path: Path, **fields: str) -> Any:
    with path.open("rb") as fh:
        return client.post(
            f"/api/v1/timepoints/{timepoint_id}/series/", {"file": fh, **fields}, format="multipart"
        )


def stored_files(media_root: Path) -> list[Path]:
    return [p for p in media_root.rglob("*") if p.is_file()]


@pytest.mark.django_db
@pytest.mark.parametrize("kind", list(BAD_INPUTS))
def test_bad_upload_is_400_with_the_imaging_message_and_stores_nothing(
    kind: str, api_client: Any, pipeline_patient: Any, embedded: None, media_root: Path, tmp_path: Path
) -> None:
    path = BAD_INPUTS[kind](tmp_path)
    # The server reads its own copy, named "upload" + the format's suffix (the client's name is never
    # echoed): the imaging module's own verdict on that same file is the expected answer.
    suffix = next((s for s in (".nii.gz", ".nii", ".zip", ".dcm") if path.name.lower().endswith(s)), "")
    server_copy = tmp_path / "server-copy" / f"upload{suffix}"
    server_copy.parent.mkdir()
    shutil.copyfile(path, server_copy)
    with pytest.raises(ImagingError) as expected:
        read_series(server_copy)
    manager = make_member(pipeline_patient.trial, MembershipRole.DATA_MANAGER)
    api_client.force_authenticate(manager)
    visit = pipeline_patient.timepoints.get(visit_label="BASELINE")
    events_before = AuditEvent.objects.count()

    response = upload(api_client, visit.pk, path)

    assert response.status_code == 400, response.content
    assert response.json()["detail"] == expected.value.user_message
    assert not ImagingSeries.objects.exists() and not ProcessingJob.objects.exists()
    assert stored_files(media_root) == []
    assert AuditEvent.objects.count() == events_before


@pytest.mark.django_db
def test_upload_runs_the_pipeline_and_a_reupload_is_409_with_a_pointer(
    api_client: Any,
    pipeline_patient: Any,
    embedded: None,
    synthetic_patient: SyntheticPatient,
    django_capture_on_commit_callbacks: Any,
) -> None:
    manager = make_member(pipeline_patient.trial, MembershipRole.DATA_MANAGER)
    api_client.force_authenticate(manager)
    visit = pipeline_patient.timepoints.get(visit_label="BASELINE")

    with django_capture_on_commit_callbacks(execute=True):
        response = upload(api_client, visit.pk, synthetic_patient.zips[0])
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["job_url"].endswith(f"/api/v1/jobs/{body['job']['id']}/")
    assert response["Location"] == body["job_url"]
    series = ImagingSeries.objects.get(pk=body["series"]["id"])
    assert series.timepoint == visit and series.uploaded_by == manager

    job = api_client.get(body["job_url"]).json()
    assert job["state"] == JobState.SUCCEEDED, job["error"]
    assert job["progress_pct"] == 100 and job["attempts"] == 1
    assert job["correlation_id"] == ProcessingJob.objects.get(pk=job["id"]).correlation_id
    # The upload's request id is the job's correlation id: the audit trail of the whole chain joins up.
    assert AuditEvent.objects.filter(correlation_id=job["correlation_id"], action="finish").exists()

    again = upload(
        api_client, pipeline_patient.timepoints.get(visit_label="FU1").pk, synthetic_patient.zips[0]
    )
    assert again.status_code == 409
    assert again.json()["existing_series"] == series.pk
    assert again.json()["existing_series_url"].endswith(f"/api/v1/series/{series.pk}/")
    assert ImagingSeries.objects.count() == 1 and ProcessingJob.objects.count() == 1


@pytest.mark.django_db
def test_same_nifti_twice_is_a_duplicate(
    api_client: Any, pipeline_patient: Any, embedded: None, tmp_path: Path
) -> None:
    path = tmp_path / "t1c.nii.gz"
    sitk.WriteImage(small_image(), str(path))
    api_client.force_authenticate(make_member(pipeline_patient.trial, MembershipRole.DATA_MANAGER))
    first = upload(api_client, pipeline_patient.timepoints.get(visit_label="BASELINE").pk, path)
    assert first.status_code == 202, first.content
    assert first.json()["series"]["source"] == "upload_nifti"
    second = upload(api_client, pipeline_patient.timepoints.get(visit_label="FU1").pk, path)
    assert second.status_code == 409 and second.json()["existing_series"] == first.json()["series"]["id"]


@pytest.mark.django_db
@pytest.mark.parametrize("name", ["серия.nii.gz", "脑部.nii", "t1c_ü.nii.gz"])
def test_nifti_with_a_non_ascii_name_is_accepted(
    api_client: Any, pipeline_patient: Any, embedded: None, tmp_path: Path, name: str
) -> None:
    """The stored copy gets a neutral ASCII name but keeps the suffix the reader goes by."""
    path = tmp_path / name
    sitk.WriteImage(small_image(), str(path), useCompression=name.endswith(".gz"))
    api_client.force_authenticate(make_member(pipeline_patient.trial, MembershipRole.DATA_MANAGER))
    response = upload(api_client, pipeline_patient.timepoints.get(visit_label="BASELINE").pk, path)
    assert response.status_code == 202, response.content
    assert response.json()["series"]["source"] == "upload_nifti"
    # The client's file name is never stored or shown (names like DOE_JOHN.nii.gz are common).
    assert "original_filename" not in response.json()["series"]
    assert name not in response.content.decode()


@pytest.mark.django_db
def test_image_the_model_cannot_use_fails_the_job_once_with_its_message(
    api_client: Any,
    pipeline_patient: Any,
    embedded: None,
    tmp_path: Path,
    django_capture_on_commit_callbacks: Any,
) -> None:
    api_client.force_authenticate(make_member(pipeline_patient.trial, MembershipRole.DATA_MANAGER))
    with django_capture_on_commit_callbacks(execute=True):
        response = upload(
            api_client,
            pipeline_patient.timepoints.get(visit_label="BASELINE").pk,
            series_zip(tmp_path, "tiny"),
        )
    assert response.status_code == 202
    job = ProcessingJob.objects.get(pk=response.json()["job"]["id"])
    assert job.state == JobState.FAILED and job.attempts == 1
    assert "window" in job.error or "small" in job.error, job.error


@pytest.mark.django_db
def test_upload_needs_the_manage_patients_capability_and_a_visible_visit(
    api_client: Any, pipeline_patient: Any, embedded: None, tmp_path: Path, other_trial: Any
) -> None:
    path = series_zip(tmp_path, "perm")
    visit = pipeline_patient.timepoints.get(visit_label="BASELINE")
    api_client.force_authenticate(make_member(pipeline_patient.trial, MembershipRole.INVESTIGATOR))
    assert upload(api_client, visit.pk, path).status_code == 403
    api_client.force_authenticate(make_member(other_trial, MembershipRole.DATA_MANAGER))
    assert upload(api_client, visit.pk, path).status_code == 404
    assert not ImagingSeries.objects.exists()


@pytest.mark.django_db
def test_upload_over_the_size_limit_is_413(
    api_client: Any, pipeline_patient: Any, embedded: None, tmp_path: Path, settings: Any, media_root: Path
) -> None:
    path = series_zip(tmp_path, "big")
    settings.PIPELINE_MAX_UPLOAD_BYTES = path.stat().st_size // 2
    api_client.force_authenticate(make_member(pipeline_patient.trial, MembershipRole.DATA_MANAGER))
    response = upload(api_client, pipeline_patient.timepoints.get(visit_label="BASELINE").pk, path)
    assert response.status_code == 413
    limit_kib = settings.PIPELINE_MAX_UPLOAD_BYTES / 1024
    assert f"limit of {limit_kib:.0f} KiB" in response.json()["detail"]  # under 1 MiB: not "0 MiB"
    assert not ImagingSeries.objects.exists() and stored_files(media_root) == []


@pytest.mark.django_db
def test_missing_file_field_is_400(api_client: Any, pipeline_patient: Any, embedded: None) -> None:
    api_client.force_authenticate(make_member(pipeline_patient.trial, MembershipRole.DATA_MANAGER))
    visit = pipeline_patient.timepoints.get(visit_label="BASELINE")
    response = api_client.post(
        f"/api/v1/timepoints/{visit.pk}/series/", {"series_uid": "1.2.3"}, format="multipart"
    )
    assert response.status_code == 400 and "'file'" in response.json()["detail"]
    # One file under another field name is taken as the upload (here: not an image -> the imaging message).
    response = api_client.post(
        f"/api/v1/timepoints/{visit.pk}/series/", {"upload": io.BytesIO(b"hello")}, format="multipart"
    )
    assert response.status_code == 400 and "DICOM" in response.json()["detail"]
    assert not ImagingSeries.objects.exists()


@pytest.mark.django_db
def test_get_lists_the_visits_series(
    api_client: Any, pipeline_patient: Any, embedded: None, tmp_path: Path
) -> None:
    api_client.force_authenticate(make_member(pipeline_patient.trial, MembershipRole.DATA_MANAGER))
    visit = pipeline_patient.timepoints.get(visit_label="BASELINE")
    assert upload(api_client, visit.pk, series_zip(tmp_path, "listed")).status_code == 202
    listing = api_client.get(f"/api/v1/timepoints/{visit.pk}/series/")
    assert listing.status_code == 200
    assert [row["id"] for row in listing.json()["results"]] == list(
        ImagingSeries.objects.values_list("pk", flat=True)
    )


@pytest.mark.django_db
def test_segment_action_reprocesses_a_series_without_duplicating_its_run(
    api_client: Any,
    pipeline_patient: Any,
    embedded: None,
    synthetic_patient: SyntheticPatient,
    django_capture_on_commit_callbacks: Any,
) -> None:
    from trials.models import SegmentationRun

    api_client.force_authenticate(make_member(pipeline_patient.trial, MembershipRole.DATA_MANAGER))
    visit = pipeline_patient.timepoints.get(visit_label="BASELINE")
    with django_capture_on_commit_callbacks(execute=True):
        series_id = upload(api_client, visit.pk, synthetic_patient.zips[0]).json()["series"]["id"]
    with django_capture_on_commit_callbacks(execute=True):
        response = api_client.post(f"/api/v1/series/{series_id}/segment/")
    assert response.status_code == 202, response.content
    job = ProcessingJob.objects.get(pk=response.json()["job"]["id"])
    assert job.state == JobState.SUCCEEDED and job.kind == "pipeline"
    assert ProcessingJob.objects.filter(object_id=series_id).count() == 2
    assert SegmentationRun.objects.filter(series_id=series_id).count() == 1  # same model: mask reused

    queued = queue.create_pipeline_job(ImagingSeries.objects.get(pk=series_id), enqueue=False, actor=None)
    busy = api_client.post(f"/api/v1/series/{series_id}/segment/")
    assert busy.status_code == 409 and f"job {queued.pk}" in busy.json()["detail"]
    api_client.force_authenticate(make_member(pipeline_patient.trial, MembershipRole.INVESTIGATOR))
    assert api_client.post(f"/api/v1/series/{series_id}/segment/").status_code == 403


@pytest.mark.django_db
def test_upload_with_browser_session_and_csrf_token_is_accepted(
    pipeline_patient: Any, embedded: None, tmp_path: Path, settings: Any
) -> None:
    """A logged-in browser (session cookie + CSRF token) can upload: the CSRF check reads the body first."""
    from django.test import Client

    user = make_member(pipeline_patient.trial, MembershipRole.DATA_MANAGER)
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    from django.middleware.csrf import _get_new_csrf_string

    token = _get_new_csrf_string()
    client.cookies[settings.CSRF_COOKIE_NAME] = token
    path = tmp_path / "t1c.nii.gz"
    sitk.WriteImage(small_image(), str(path))
    visit = pipeline_patient.timepoints.get(visit_label="BASELINE")
    with path.open("rb") as fh:
        refused = client.post(f"/api/v1/timepoints/{visit.pk}/series/", {"file": fh})
    assert refused.status_code == 403 and "CSRF" in refused.json()["detail"]
    with path.open("rb") as fh:
        accepted = client.post(f"/api/v1/timepoints/{visit.pk}/series/", {"file": fh}, HTTP_X_CSRFTOKEN=token)
    assert accepted.status_code == 202, accepted.content
    assert ImagingSeries.objects.filter(timepoint=visit).count() == 1
