"""Uploads reveal nothing of other trials and store no PHI from the client's file name or free-text DICOM
attributes (issue 19). Each test failed on the code before the fix: the 409 named the other trial's
subject, visit and series; the file name and raw SeriesDescription were stored, shown in the API and
the dashboard, written in the audit trail, and echoed in the several-series error."""

from __future__ import annotations

import datetime as dt
import importlib
import json
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.db.migrations.loader import MigrationLoader
from django.test import Client

from segmentation.synthetic_mr import write_dicom_series
from tests.factories import make_member, make_patient, make_series, make_timepoint, make_trial
from tests.pipeline.test_upload_api import small_image, upload, zip_folder
from trials.audit import record_audit_event
from trials.choices import MembershipRole
from trials.models import AuditEvent, HistoricalImagingSeries, ImagingSeries

pytestmark = pytest.mark.django_db

PHI = ("DOE", "JOHN", "19650312")
RAW_DESCRIPTION = "DOE^JOHN 19650312 T1 MPRAGE POST"


def phi_zip(tmp: Path, name: str = "DOE_JOHN_19650312.zip", description: str = RAW_DESCRIPTION) -> Path:
    folder = tmp / "series"
    write_dicom_series(small_image(), folder, patient_id="Doe^John", series_description=description)
    return zip_folder(folder, tmp / name)


def visit(trial_code: str, subject_id: str) -> Any:
    patient = make_patient(make_trial(trial_code), subject_id=subject_id)
    return make_timepoint(patient, visit_label="BASELINE", scan_date=dt.date(2025, 1, 6), is_baseline=True)


def assert_no_phi(text: str) -> None:
    for word in PHI:
        assert word not in text.upper(), f"{word} in {text[:300]!r}"


def test_a_duplicate_of_another_trials_series_reveals_nothing_of_it(
    api_client: Any, tmp_path: Path, media_root: Path
) -> None:
    first = visit("TRIAL-A", "A-SECRET-007")
    second = visit("TRIAL-B", "B-001")
    path = phi_zip(tmp_path)
    api_client.force_authenticate(make_member(first.patient.trial, MembershipRole.DATA_MANAGER))
    stored = upload(api_client, first.pk, path)
    assert stored.status_code == 202, stored.content
    series_id = stored.json()["series"]["id"]

    api_client.force_authenticate(make_member(second.patient.trial, MembershipRole.DATA_MANAGER))
    again = upload(api_client, second.pk, path)

    assert again.status_code == 409, again.content
    body = again.json()
    assert set(body) == {"detail"}
    for secret in ("A-SECRET-007", "TRIAL-A", "BASELINE", f"series {series_id} "):
        assert secret not in body["detail"]
    assert ImagingSeries.objects.count() == 1


def test_a_duplicate_in_a_visible_trial_still_points_to_the_stored_series(
    api_client: Any, tmp_path: Path, media_root: Path
) -> None:
    first = visit("TRIAL-A", "A-001")
    follow_up = make_timepoint(first.patient, visit_label="FU1", scan_date=dt.date(2025, 3, 6))
    api_client.force_authenticate(make_member(first.patient.trial, MembershipRole.DATA_MANAGER))
    path = phi_zip(tmp_path)
    series_id = upload(api_client, first.pk, path).json()["series"]["id"]
    again = upload(api_client, follow_up.pk, path)
    assert again.status_code == 409 and again.json()["existing_series"] == series_id


def test_file_name_and_series_description_are_never_stored_shown_or_audited(
    api_client: Any, tmp_path: Path, media_root: Path, settings: Any
) -> None:
    timepoint = visit("TRIAL-A", "A-001")
    manager = make_member(timepoint.patient.trial, MembershipRole.DATA_MANAGER)
    api_client.force_authenticate(manager)

    response = upload(api_client, timepoint.pk, phi_zip(tmp_path))

    assert response.status_code == 202, response.content
    assert_no_phi(response.content.decode())
    series = ImagingSeries.objects.get()
    assert series.series_description == "* T1 MPRAGE POST"
    assert not hasattr(series, "original_filename")
    assert_no_phi(api_client.get(f"/api/v1/series/{series.pk}/").content.decode())
    assert_no_phi(api_client.get(f"/api/v1/timepoints/{timepoint.pk}/series/").content.decode())
    events = AuditEvent.objects.filter(object_type="trials.imagingseries")
    assert events.exists()
    assert_no_phi(json.dumps([[e.before, e.after, e.object_repr, e.reason] for e in events]))
    assert_no_phi(api_client.get("/api/v1/audit-events/").content.decode())
    for row in HistoricalImagingSeries.objects.all():
        assert_no_phi(row.series_description)
    browser = Client()
    browser.force_login(manager)
    page = browser.get(f"/patients/{timepoint.patient.pk}/")
    assert page.status_code == 200
    assert "T1 MPRAGE POST" in page.content.decode()
    assert_no_phi(page.content.decode())


def test_the_several_series_error_does_not_echo_descriptions(
    api_client: Any, tmp_path: Path, media_root: Path
) -> None:
    timepoint = visit("TRIAL-A", "A-001")
    folder = tmp_path / "two"
    write_dicom_series(small_image(), folder / "a", patient_id="X", series_description="DOE JOHN T1 post")
    write_dicom_series(small_image(seed=1), folder / "b", patient_id="X", series_description="FLAIR 19650312")
    api_client.force_authenticate(make_member(timepoint.patient.trial, MembershipRole.DATA_MANAGER))

    response = upload(api_client, timepoint.pk, zip_folder(folder, tmp_path / "JOHN_DOE.zip"))

    assert response.status_code == 400
    detail = response.json()["detail"]
    assert "2 image series" in detail and "T1 post" in detail and "FLAIR" in detail
    assert_no_phi(detail)


def test_migration_0004_cleans_stored_rows_and_the_audit_trail() -> None:
    series = make_series(visit("TRIAL-A", "A-001"))
    # Rows as the code before the fix stored them.
    ImagingSeries.objects.filter(pk=series.pk).update(series_description=RAW_DESCRIPTION)
    old = record_audit_event(
        actor=None,
        action="create",
        obj=series,
        after={"series_description": RAW_DESCRIPTION, "original_filename": "DOE_JOHN.zip", "modality": "MR"},
    )
    migration = importlib.import_module("trials.migrations.0005_series_phi_removed")
    state = MigrationLoader(connection).project_state(("trials", "0005_series_phi_removed"))

    with connection.cursor() as cursor:
        # The table as 0004 knew it: columns added later (the hash chain, 0008) need a value for its insert.
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        for column in ("hash", "prev_hash"):
            cursor.execute(f"ALTER TABLE trials_auditevent ALTER COLUMN {column} SET DEFAULT ''")
    with connection.schema_editor(atomic=False) as editor:
        migration.forward(state.apps, editor)

    series.refresh_from_db()
    assert series.series_description == "* T1 MPRAGE POST"
    cleaned = AuditEvent.objects.get(pk=old.pk)
    assert cleaned.after == {"series_description": "* T1 MPRAGE POST", "modality": "MR"}
    note = AuditEvent.objects.get(action="phi_cleaned")
    assert note.after["events"] >= 1
    # The trigger is back: the trail is append-only again.
    with pytest.raises(Exception, match="append-only"), connection.cursor() as cursor:
        cursor.execute("UPDATE trials_auditevent SET reason = 'x' WHERE id = %s", [old.pk])
