"""The data managers' inbox page: a received study that routing could not place, assigned to a new
unscheduled visit or discarded through the page (in-process: the study is handed to the receive action
as the listener does)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
import SimpleITK as sitk
from django.test import Client

from tests.factories import make_member
from tests.pacs.conftest import BASELINE_DATE, PacsWorld, write_study
from trials.actions.pacs import receive_study
from trials.choices import JobState, MembershipRole, ReceivedStudyState
from trials.models import AuditEvent, ProcessingJob, ReceivedStudy, Timepoint

pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.fixture
def embedded(settings: Any, tiny_model_dir: Path, media_root: Path, tmp_path: Path) -> None:
    settings.CELERY_EMBEDDED = True
    settings.PIPELINE_EMBEDDED_SYNC = True
    settings.PIPELINE_MODEL_DIR = str(tiny_model_dir)
    settings.DICOM_INBOX_DIR = tmp_path / "inbox"


def test_study_far_from_every_visit_is_assigned_to_a_new_unscheduled_visit_on_the_page(
    pacs_world: PacsWorld, phantom_image: sitk.Image, tmp_path: Path, embedded: None
) -> None:
    late = BASELINE_DATE + dt.timedelta(days=90)
    write_study(phantom_image, tmp_path / "study", patient_id="MRN-1001", study_date=late)
    item = receive_study(tmp_path / "study", channel="cstore", sender_ae_title="MODALITY1")
    assert item.state == ReceivedStudyState.INBOX and item.patient == pacs_world.patient
    assert item.proposed_visit_label == f"UNSCHED-{late:%Y%m%d}"
    assert "no visit within 14 days" in item.reason
    assert not (tmp_path / "study").exists()

    client = Client()
    client.force_login(make_member(pacs_world.trial, MembershipRole.DATA_MANAGER))
    page = client.get("/inbox/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "no visit within 14 days" in html and "T1 MPRAGE post-contrast" in html and "MRN-1001" not in html
    answer = client.post(
        f"/inbox/{item.pk}/assign/",
        {
            "patient": pacs_world.patient.pk,
            "visit_label": item.proposed_visit_label,
            "reason": "unscheduled scan",
        },
    )
    assert answer.status_code == 302
    item.refresh_from_db()
    assert item.state == ReceivedStudyState.ASSIGNED, item.reason
    visit = Timepoint.objects.get(patient=pacs_world.patient, visit_label=item.proposed_visit_label)
    assert visit.scan_date == late and item.timepoint == visit
    job = ProcessingJob.objects.get(object_id=item.imaging_series_id, kind="pipeline")
    assert job.state == JobState.SUCCEEDED
    assert AuditEvent.objects.filter(action="assign", object_id=str(item.pk)).exists()
    assert "Recently received" in client.get("/inbox/").content.decode()


def test_investigators_neither_see_nor_resolve_the_inbox(
    pacs_world: PacsWorld, phantom_image: sitk.Image, tmp_path: Path, embedded: None
) -> None:
    write_study(phantom_image, tmp_path / "study", patient_id="MRN-4242")
    item = receive_study(tmp_path / "study", channel="cstore", sender_ae_title="MODALITY1")
    assert item.state == ReceivedStudyState.INBOX and item.trial is None
    client = Client()
    client.force_login(make_member(pacs_world.trial, MembershipRole.INVESTIGATOR))
    assert "The inbox is empty" in client.get("/inbox/").content.decode()
    assert client.post(f"/inbox/{item.pk}/discard/", {"reason": "no"}).status_code == 404
    assert ReceivedStudy.objects.get(pk=item.pk).state == ReceivedStudyState.INBOX
