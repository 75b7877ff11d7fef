"""The DICOM listener as a real process, fed by dcmtk's storescu and echoscu (a modality).

Each test starts ``manage.py dicom_listener`` on a free port with its own spool; the stored series' pipeline
jobs run inside the listener (embedded mode) with the tiny model.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import SimpleITK as sitk

from tests.pacs.conftest import MODALITY_AE, PacsWorld, write_study
from tests.processes import DicomListenerProcess, echoscu, storescu
from trials.choices import Criteria, JobState, ReceivedStudyState, SeriesSource
from trials.models import Assessment, AuditEvent, ImagingSeries, ProcessingJob, ReceivedStudy

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def received(count: int = 1) -> bool:
    return ReceivedStudy.objects.count() >= count


def job_of(series: ImagingSeries) -> ProcessingJob:
    return ProcessingJob.objects.filter(object_id=series.pk, kind="pipeline").get()


def wait_assessed(series: ImagingSeries, listener: DicomListenerProcess) -> None:
    def done() -> bool:
        return job_of(series).state in (JobState.SUCCEEDED, JobState.FAILED)

    listener.wait_until(done, 300, "the pipeline job of the received series")
    job = job_of(series)
    assert job.state == JobState.SUCCEEDED, (job.error, listener.log()[-3000:])


@pytest.mark.timeout(600)
def test_series_sent_by_storescu_ends_as_an_assessed_visit(
    pacs_world: PacsWorld,
    start_listener: Callable[..., DicomListenerProcess],
    phantom_image: sitk.Image,
    tmp_path: Path,
) -> None:
    listener = start_listener()
    echo = echoscu(listener.port, calling=MODALITY_AE)
    assert echo.returncode == 0, echo.stderr
    folders = write_study(phantom_image, tmp_path / "study", patient_id="MRN-1001", PatientName="Doe^Jane")

    sent = storescu(listener.port, folders["T1 MPRAGE post-contrast"], calling=MODALITY_AE)
    assert sent.returncode == 0, sent.stderr

    listener.wait_until(received, 120, "the study to be routed")
    study = ReceivedStudy.objects.get()
    assert study.state == ReceivedStudyState.ROUTED, (study.reason, listener.log()[-3000:])
    assert (study.channel, study.sender_ae_title, study.sender_host) == ("cstore", MODALITY_AE, "127.0.0.1")
    assert study.timepoint == pacs_world.baseline and study.patient == pacs_world.patient
    assert "mapped to this subject" in study.decision["patient"]
    series = study.imaging_series
    assert series is not None and series.source == SeriesSource.PACS
    assert series.timepoint == pacs_world.baseline and series.size_voxels == [80, 96, 72]
    wait_assessed(series, listener)
    assert Assessment.objects.filter(timepoint=pacs_world.baseline, criteria=Criteria.RANO_BM).exists()

    # No patient identity is kept: not in the stored copy, not in the row, not in the audit, not on disk.
    stored = sorted((Path(series.volume_file.path).parent / "source").iterdir())
    import pydicom

    header = pydicom.dcmread(stored[0], stop_before_pixels=True)
    assert str(header.PatientID) == "SUBJ-001" and "Doe" not in str(header.get("PatientName", ""))
    audit = list(
        AuditEvent.objects.filter(object_type="trials.receivedstudy").values_list("after", flat=True)
    )
    row = ReceivedStudy.objects.filter(pk=study.pk).values().get()
    for text in (repr(audit), repr(row), listener.log()):
        assert "MRN-1001" not in text and "Doe" not in text
    assert not any(listener.spool_dir.rglob("*.dcm"))  # raw instances gone once stored


@pytest.mark.timeout(600)
def test_study_with_pre_post_and_flair_picks_the_post_contrast_t1(
    pacs_world: PacsWorld,
    start_listener: Callable[..., DicomListenerProcess],
    phantom_image: sitk.Image,
    tmp_path: Path,
) -> None:
    listener = start_listener()
    study_dir = tmp_path / "study"
    write_study(
        phantom_image,
        study_dir,
        patient_id="MRN-1001",
        series=(
            ("T1 MPRAGE pre", {"ContrastBolusAgent": None}),
            ("T1 MPRAGE post Gd", {}),
            ("FLAIR 3D", {}),
        ),
    )
    sent = storescu(listener.port, study_dir, calling=MODALITY_AE)
    assert sent.returncode == 0, sent.stderr

    listener.wait_until(received, 180, "the study to be routed")
    study = ReceivedStudy.objects.get()
    assert study.state == ReceivedStudyState.ROUTED, (study.reason, listener.log()[-3000:])
    assert study.imaging_series.series_description == "T1 MPRAGE post Gd"
    verdicts = {v["series_description"]: v for v in study.decision["series"]["verdicts"]}
    assert not verdicts["T1 MPRAGE pre"]["passed"]
    assert any("no contrast agent" in r for r in verdicts["T1 MPRAGE pre"]["reasons"])
    assert not verdicts["FLAIR 3D"]["passed"]
    assert any("flair" in r for r in verdicts["FLAIR 3D"]["reasons"])
    assert verdicts["T1 MPRAGE post Gd"]["passed"]
    assert ImagingSeries.objects.count() == 1  # only the chosen series is stored
    assert [s["series_description"] for s in study.series] == [
        "T1 MPRAGE pre",
        "T1 MPRAGE post Gd",
        "FLAIR 3D",
    ]


@pytest.mark.timeout(300)
def test_unknown_calling_ae_is_rejected_at_association(
    pacs_world: PacsWorld,
    start_listener: Callable[..., DicomListenerProcess],
    phantom_image: sitk.Image,
    tmp_path: Path,
) -> None:
    listener = start_listener()
    echo = echoscu(listener.port, calling="INTRUDER")
    assert echo.returncode != 0
    assert "Rejected" in echo.stderr or "rejected" in echo.stderr.lower(), echo.stderr
    folders = write_study(phantom_image, tmp_path / "study", patient_id="MRN-1001")
    sent = storescu(listener.port, folders["T1 MPRAGE post-contrast"], calling="INTRUDER")
    assert sent.returncode != 0
    assert not any(listener.spool_dir.rglob("*.dcm"))
    assert ReceivedStudy.objects.count() == 0
    assert "INTRUDER" in listener.log() and "rejected" in listener.log()
    # The allowed AE from another host is refused too: the caller list pairs AE titles with hosts.
    other = start_listener(allow=[f"{MODALITY_AE}@10.1.2.3"])
    assert echoscu(other.port, calling=MODALITY_AE).returncode != 0
    assert echoscu(listener.port, calling=MODALITY_AE).returncode == 0


@pytest.fixture
def embedded(settings: Any, tiny_model_dir: Path, media_root: Path) -> None:
    """Jobs asked for in this process (an inbox assignment) run here, synchronously, with the tiny model."""
    settings.CELERY_EMBEDDED = True
    settings.PIPELINE_EMBEDDED_SYNC = True
    settings.PIPELINE_MODEL_DIR = str(tiny_model_dir)


@pytest.mark.timeout(600)
def test_unknown_patient_lands_in_the_inbox_is_assigned_and_processed(
    pacs_world: PacsWorld,
    start_listener: Callable[..., DicomListenerProcess],
    phantom_image: sitk.Image,
    tmp_path: Path,
    api_client: Any,
    embedded: None,
) -> None:
    from tests.factories import make_member, make_patient, make_timepoint
    from tests.pacs.conftest import BASELINE_DATE
    from trials.choices import MembershipRole
    from trials.models import SubjectMapping

    newcomer = make_patient(pacs_world.trial, site=pacs_world.site, subject_id="SUBJ-002")
    baseline = make_timepoint(newcomer, visit_label="BASELINE", scan_date=BASELINE_DATE, is_baseline=True)
    listener = start_listener()
    folders = write_study(phantom_image, tmp_path / "study", patient_id="MRN-9999", PatientName="Roe^Richard")
    assert storescu(listener.port, folders["T1 MPRAGE post-contrast"], calling=MODALITY_AE).returncode == 0

    listener.wait_until(received, 120, "the study to reach the inbox")
    item = ReceivedStudy.objects.get()
    assert item.state == ReceivedStudyState.INBOX and "unknown patient" in item.reason
    assert ImagingSeries.objects.count() == 0

    manager = make_member(pacs_world.trial, MembershipRole.DATA_MANAGER)
    investigator = make_member(pacs_world.trial, MembershipRole.INVESTIGATOR)
    api_client.force_authenticate(investigator)
    assert api_client.get("/api/v1/inbox/").json()["count"] == 0  # not for investigators
    api_client.force_authenticate(manager)
    listing = api_client.get("/api/v1/inbox/?state=inbox")
    assert listing.status_code == 200 and listing.json()["count"] == 1
    shown = listing.json()["results"][0]
    assert shown["sender_ae_title"] == MODALITY_AE and shown["study_date"] == BASELINE_DATE.isoformat()
    assert [s["series_description"] for s in shown["series"]] == ["T1 MPRAGE post-contrast"]
    assert "MRN-9999" not in listing.content.decode() and item.patient_key not in listing.content.decode()

    answer = api_client.post(
        f"/api/v1/inbox/{item.pk}/assign/",
        {"timepoint": baseline.pk, "remember_patient_id": True, "reason": "checked with the site"},
        format="json",
    )
    assert answer.status_code == 200, answer.content
    item.refresh_from_db()
    assert item.state == ReceivedStudyState.ASSIGNED and item.resolved_by == manager
    assert item.imaging_series is not None and item.imaging_series.timepoint == baseline
    assert job_of(item.imaging_series).state == JobState.SUCCEEDED
    assert Assessment.objects.filter(timepoint=baseline).exists()
    assert AuditEvent.objects.filter(action="assign", object_id=str(item.pk), actor=manager).exists()
    assert not (tmp_path / "inbox" / item.inbox_folder).exists() or not item.inbox_folder
    again = api_client.post(f"/api/v1/inbox/{item.pk}/discard/", {"reason": "x"}, format="json")
    assert again.status_code == 409  # no longer in the inbox

    # The Patient ID is remembered (as a hash only): the next study of this patient is routed directly.
    mapping = SubjectMapping.objects.get(patient=newcomer)
    assert mapping.patient_id_hmac != "MRN-9999" and len(mapping.patient_id_hmac) == 64
    follow_up = make_timepoint(newcomer, visit_label="FU1", scan_date=BASELINE_DATE.replace(month=3))
    second = write_study(
        phantom_image,
        tmp_path / "study2",
        patient_id="MRN-9999",
        study_date=BASELINE_DATE.replace(month=3, day=9),
    )
    assert storescu(listener.port, second["T1 MPRAGE post-contrast"], calling=MODALITY_AE).returncode == 0
    listener.wait_until(lambda: received(2), 120, "the second study")
    routed = ReceivedStudy.objects.exclude(pk=item.pk).get()
    assert routed.state == ReceivedStudyState.ROUTED and routed.timepoint == follow_up, routed.reason
    assert "3 day(s) from the scan date of FU1" in routed.decision["visit"]


@pytest.mark.timeout(600)
def test_inbox_study_discarded_keeps_its_row_and_drops_its_files(
    pacs_world: PacsWorld,
    start_listener: Callable[..., DicomListenerProcess],
    phantom_image: sitk.Image,
    tmp_path: Path,
    api_client: Any,
) -> None:
    from tests.factories import make_member
    from trials.choices import MembershipRole

    listener = start_listener()
    folders = write_study(phantom_image, tmp_path / "study", patient_id="MRN-0000")
    assert storescu(listener.port, folders["T1 MPRAGE post-contrast"], calling=MODALITY_AE).returncode == 0
    listener.wait_until(received, 120, "the study to reach the inbox")
    item = ReceivedStudy.objects.get()
    folder = tmp_path / "inbox" / item.inbox_folder
    assert item.state == ReceivedStudyState.INBOX and any(folder.rglob("*.dcm"))
    api_client.force_authenticate(make_member(pacs_world.trial, MembershipRole.DATA_MANAGER))
    assert api_client.post(f"/api/v1/inbox/{item.pk}/discard/", {}, format="json").status_code == 400
    answer = api_client.post(
        f"/api/v1/inbox/{item.pk}/discard/", {"reason": "not a trial patient"}, format="json"
    )
    assert answer.status_code == 200, answer.content
    item.refresh_from_db()
    assert item.state == ReceivedStudyState.DISCARDED and not folder.exists()
    assert AuditEvent.objects.filter(action="discard", object_id=str(item.pk)).exists()


@pytest.mark.timeout(600)
def test_the_same_series_sent_twice_is_stored_once(
    pacs_world: PacsWorld,
    start_listener: Callable[..., DicomListenerProcess],
    phantom_image: sitk.Image,
    tmp_path: Path,
) -> None:
    listener = start_listener()
    folders = write_study(phantom_image, tmp_path / "study", patient_id="MRN-1001")
    series = folders["T1 MPRAGE post-contrast"]
    assert storescu(listener.port, series, calling=MODALITY_AE).returncode == 0
    listener.wait_until(received, 120, "the first study")
    assert storescu(listener.port, series, calling=MODALITY_AE).returncode == 0
    listener.wait_until(lambda: received(2), 120, "the second study")
    first, second = ReceivedStudy.objects.order_by("pk")
    assert first.state == ReceivedStudyState.ROUTED, first.reason
    assert second.state == ReceivedStudyState.DUPLICATE and second.imaging_series == first.imaging_series
    assert ImagingSeries.objects.count() == 1
    assert ProcessingJob.objects.filter(kind="pipeline").count() == 1


@pytest.mark.timeout(600)
def test_listener_killed_mid_series_keeps_what_it_acknowledged(
    pacs_world: PacsWorld,
    start_listener: Callable[..., DicomListenerProcess],
    phantom_image: sitk.Image,
    tmp_path: Path,
) -> None:
    import pydicom
    from pynetdicom import AE

    listener = start_listener(quiet_period_s=600)
    folders = write_study(phantom_image, tmp_path / "study", patient_id="MRN-1001")
    files = sorted(folders["T1 MPRAGE post-contrast"].iterdir())
    first, rest = files[:30], files[30:]

    # The modality sends 30 instances, each acknowledged; the listener dies with the association open.
    scu = AE(ae_title=MODALITY_AE)
    scu.add_requested_context(pydicom.uid.MRImageStorage, pydicom.uid.ExplicitVRLittleEndian)
    assoc = scu.associate("127.0.0.1", listener.port, ae_title="METTRACK")
    assert assoc.is_established
    for path in first:
        status = assoc.send_c_store(pydicom.dcmread(path))
        assert status.Status == 0x0000
    listener.kill()
    assoc.abort()
    assert sum(1 for _ in (listener.spool_dir / "incoming").rglob("*.dcm")) == 30
    assert ReceivedStudy.objects.count() == 0

    # Restarted on the same spool, it keeps them; the modality resends what failed and the series completes.
    restarted = start_listener(quiet_period_s=600, port=listener.port)
    sent = storescu(restarted.port, rest, calling=MODALITY_AE)
    assert sent.returncode == 0, sent.stderr
    restarted.wait_until(received, 120, "the completed study")
    study = ReceivedStudy.objects.get()
    assert study.state == ReceivedStudyState.ROUTED, (study.reason, restarted.log()[-3000:])
    assert study.series[0]["instances"] == len(files)
    assert study.imaging_series.size_voxels == [80, 96, 72]


@pytest.mark.timeout(600)
def test_compressed_and_enhanced_multiframe_series_are_received_and_decoded(
    pacs_world: PacsWorld,
    start_listener: Callable[..., DicomListenerProcess],
    phantom_image: sitk.Image,
    tmp_path: Path,
) -> None:
    from tests.factories import make_timepoint
    from tests.pacs.conftest import BASELINE_DATE

    follow_up = make_timepoint(
        pacs_world.patient, visit_label="FU1", scan_date=BASELINE_DATE.replace(month=3)
    )
    listener = start_listener()
    jpeg2000 = write_study(phantom_image, tmp_path / "j2k", patient_id="MRN-1001", compress="jpeg2000")
    enhanced = write_study(
        phantom_image, tmp_path / "mf", patient_id="MRN-1001", study_date=follow_up.scan_date, multiframe=True
    )
    for folders, options in ((jpeg2000, ("-xv",)), (enhanced, ())):
        sent = storescu(
            listener.port, folders["T1 MPRAGE post-contrast"], calling=MODALITY_AE, options=options
        )
        assert sent.returncode == 0, sent.stderr
    listener.wait_until(lambda: received(2), 180, "both studies")
    by_visit = {r.timepoint: r for r in ReceivedStudy.objects.all()}
    for visit, instances in ((pacs_world.baseline, 72), (follow_up, 1)):
        study = by_visit[visit]
        assert study.state == ReceivedStudyState.ROUTED, (study.reason, study.decision)
        assert study.series[0]["instances"] == instances
        assert study.imaging_series.size_voxels == [80, 96, 72]
