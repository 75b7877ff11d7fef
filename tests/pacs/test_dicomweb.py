"""DICOMweb: STOW-RS from a real client (dicomweb-client over HTTP to the live test server)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
import pytest
import SimpleITK as sitk

from tests.factories import make_member
from tests.pacs.conftest import PacsWorld, write_study
from trials.choices import MembershipRole, ReceivedStudyState, SeriesSource
from trials.models import ImagingSeries, ProcessingJob, ReceivedStudy

pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.fixture
def queued_only(settings: Any, media_root: Path, tmp_path: Path, monkeypatch: Any) -> None:
    """Embedded mode, jobs left queued: these tests check receiving, routing and storage."""
    from trials.pipeline import embedded

    settings.CELERY_EMBEDDED = True
    settings.PIPELINE_EMBEDDED_SYNC = False
    settings.DICOM_INBOX_DIR = tmp_path / "inbox"
    settings.DICOM_SPOOL_DIR = tmp_path / "spool"
    monkeypatch.setattr(embedded, "submit", lambda job_id: None)


def client_for(live_server: Any, user: Any) -> Any:
    from dicomweb_client.api import DICOMwebClient

    from trials.actions.accounts import issue_token

    token = issue_token(user, reason="STOW-RS test")
    # One request with a Content-Length (Django reads no chunked request body), and no keep-alive: the
    # live server's request thread (and its database connection) ends with the answer.
    return DICOMwebClient(
        url=f"{live_server.url}/dicomweb",
        headers={"Authorization": f"Token {token.key}", "Connection": "close"},
        chunk_size=2**30,
    )


def test_stow_rs_stores_a_series_routed_like_c_store(
    pacs_world: PacsWorld, phantom_image: sitk.Image, tmp_path: Path, live_server: Any, queued_only: None
) -> None:
    folders = write_study(phantom_image, tmp_path / "study", patient_id="MRN-1001")
    datasets = [pydicom.dcmread(p) for p in sorted(folders["T1 MPRAGE post-contrast"].iterdir())]
    client = client_for(live_server, make_member(pacs_world.trial, MembershipRole.DATA_MANAGER))

    answer = client.store_instances(datasets)

    referenced = answer.ReferencedSOPSequence
    assert len(referenced) == len(datasets) and "FailedSOPSequence" not in answer
    assert {item.ReferencedSOPInstanceUID for item in referenced} == {ds.SOPInstanceUID for ds in datasets}
    study = ReceivedStudy.objects.get()
    assert study.channel == "stow" and study.state == ReceivedStudyState.ROUTED, study.reason
    series = ImagingSeries.objects.get()
    assert series.timepoint == pacs_world.baseline and series.source == SeriesSource.PACS
    assert series.uploaded_by is not None and series.uploaded_by.username in study.sender_host
    assert ProcessingJob.objects.filter(object_id=series.pk, kind="pipeline").exists()
    assert not any((tmp_path / "spool").rglob("*.dcm"))


def test_stow_rs_needs_the_upload_role_and_refuses_other_objects(
    pacs_world: PacsWorld, phantom_image: sitk.Image, tmp_path: Path, live_server: Any, queued_only: None
) -> None:
    from requests.exceptions import HTTPError

    folders = write_study(phantom_image, tmp_path / "study", patient_id="MRN-1001")
    datasets = [pydicom.dcmread(p) for p in sorted(folders["T1 MPRAGE post-contrast"].iterdir())[:3]]
    investigator = client_for(live_server, make_member(pacs_world.trial, MembershipRole.INVESTIGATOR))
    with pytest.raises(HTTPError) as refused:
        investigator.store_instances(datasets)
    assert refused.value.response.status_code == 403

    report = datasets[0].copy()
    report.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.22"  # Enhanced SR: not an image to route
    manager = client_for(live_server, make_member(pacs_world.trial, MembershipRole.DATA_MANAGER))
    with pytest.raises(HTTPError) as failed:
        manager.store_instances([report])
    assert failed.value.response.status_code == 409
    assert failed.value.response.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0x0122]
    assert ReceivedStudy.objects.count() == 0
