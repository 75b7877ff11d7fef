"""The DICOM listener as a real process, fed by dcmtk's storescu and echoscu (a modality).

Each test starts ``manage.py dicom_listener`` on a free port with its own spool; the stored series' pipeline
jobs run inside the listener (embedded mode) with the tiny model.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

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
