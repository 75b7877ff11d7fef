"""The receive action in-process: Clinical Trial attributes route a study without any mapping."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import SimpleITK as sitk

from tests.factories import make_timepoint
from tests.pacs.conftest import BASELINE_DATE, PacsWorld, write_study
from trials.actions.pacs import receive_study
from trials.choices import ReceivedStudyState
from trials.models import AuditEvent, SubjectMapping

pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.fixture
def no_pipeline(settings: Any, media_root: Path, tmp_path: Path) -> None:
    """Jobs stay queued (embedded mode without running them): only routing and storage are checked."""
    settings.CELERY_EMBEDDED = True
    settings.PIPELINE_EMBEDDED_SYNC = False
    settings.DICOM_INBOX_DIR = tmp_path / "inbox"


def test_clinical_trial_attributes_name_trial_subject_and_visit(
    pacs_world: PacsWorld, phantom_image: sitk.Image, tmp_path: Path, no_pipeline: None, monkeypatch: Any
) -> None:
    from trials.pipeline import embedded

    monkeypatch.setattr(embedded, "submit", lambda job_id: None)
    SubjectMapping.objects.all().delete()
    follow_up = make_timepoint(
        pacs_world.patient, visit_label="FU1", scan_date=BASELINE_DATE.replace(month=3)
    )
    write_study(
        phantom_image,
        tmp_path / "study",
        patient_id="UNMAPPED-7",
        ClinicalTrialSponsorName="Sponsor",
        ClinicalTrialProtocolID="pacs-bm",
        ClinicalTrialSubjectID="SUBJ-001",
        ClinicalTrialTimePointID="FU1",
    )
    item = receive_study(tmp_path / "study", channel="cstore", sender_ae_title="MODALITY1")
    assert item.state == ReceivedStudyState.ROUTED, item.reason
    assert item.timepoint == follow_up  # by Time Point ID, although the study date is the baseline's
    assert item.decision["patient"] == "Clinical Trial attributes: protocol 'pacs-bm', subject 'SUBJ-001'"
    assert item.decision["visit"] == "Clinical Trial Time Point ID 'FU1' names this visit"
    assert item.clinical_trial["ClinicalTrialSubjectID"] == "SUBJ-001"
    assert AuditEvent.objects.filter(
        action="receive", object_id=str(item.pk), trial=pacs_world.trial
    ).exists()

    write_study(
        phantom_image,
        tmp_path / "other",
        patient_id="UNMAPPED-7",
        ClinicalTrialProtocolID="PACS-BM",
        ClinicalTrialSubjectID="SUBJ-404",
    )
    lost = receive_study(tmp_path / "other", channel="cstore")
    assert lost.state == ReceivedStudyState.INBOX
    assert lost.reason == "Clinical Trial Subject ID 'SUBJ-404' names no patient of trial PACS-BM"
