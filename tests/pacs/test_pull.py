"""Pull mode: the trial's new studies found in a real Orthanc by QIDO-RS and retrieved by WADO-RS."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import SimpleITK as sitk

from tests.pacs.conftest import PacsWorld, write_study
from tests.processes import Orthanc, storescu, wait_for
from trials.actions.pacs import pull_studies
from trials.choices import ReceivedStudyState
from trials.models import ImagingSeries, ReceivedStudy

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def queued_only(settings: Any, media_root: Path, tmp_path: Path, monkeypatch: Any) -> None:
    from trials.pipeline import embedded

    settings.CELERY_EMBEDDED = True
    settings.PIPELINE_EMBEDDED_SYNC = False
    settings.DICOM_INBOX_DIR = tmp_path / "inbox"
    settings.DICOM_SPOOL_DIR = tmp_path / "spool"
    monkeypatch.setattr(embedded, "submit", lambda job_id: None)


@pytest.mark.timeout(600)
def test_pull_receives_the_trials_new_studies_once(
    pacs_world: PacsWorld, phantom_image: sitk.Image, tmp_path: Path, queued_only: None
) -> None:
    orthanc = Orthanc(tmp_path / "orthanc", modalities={"STORESCU": 104})
    try:
        orthanc.wait_ready()
        trial_study = write_study(
            phantom_image,
            tmp_path / "trial-study",
            patient_id="UNMAPPED-1",
            ClinicalTrialProtocolID="PACS-BM",
            ClinicalTrialSubjectID="SUBJ-001",
        )
        other_study = write_study(phantom_image, tmp_path / "other-study", patient_id="ANOTHER-PATIENT")
        for folders in (trial_study, other_study):
            sent = storescu(orthanc.dicom_port, folders["T1 MPRAGE post-contrast"], called=orthanc.ae_title)
            assert sent.returncode == 0, sent.stderr
        wait_for(lambda: len(orthanc.get("/studies")) == 2, 60, "Orthanc to hold both studies")

        pulled = pull_studies(orthanc.dicomweb_url)

        assert len(pulled) == 1, [(p.state, p.reason) for p in pulled]
        study = ReceivedStudy.objects.get()
        assert study.channel == "pull" and study.state == ReceivedStudyState.ROUTED, study.reason
        assert study.timepoint == pacs_world.baseline and study.series[0]["instances"] == 72
        assert ImagingSeries.objects.get().timepoint == pacs_world.baseline
        assert pull_studies(orthanc.dicomweb_url) == []  # nothing new: not pulled twice
        assert ReceivedStudy.objects.count() == 1
    finally:
        orthanc.kill()
