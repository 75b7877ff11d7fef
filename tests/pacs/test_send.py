"""Results sent back to a PACS: SEG and RTSTRUCT by C-STORE to a real Orthanc, found there by QIDO-RS with
their references to the source series; Orthanc down during the send -> retried -> delivered once back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import SimpleITK as sitk

from segmentation.contours import write_rtstruct, write_seg
from tests.factories import make_lesion, make_model_version, make_observation, make_run
from tests.pacs.conftest import PacsWorld, write_study
from tests.processes import Orthanc, wait_for
from trials.actions.imaging import upload_series
from trials.choices import DeliveryState, DeliveryTrigger, RunStatus
from trials.models import PacsDelivery, PacsDestination
from trials.pipeline.delivery import queue_deliveries
from trials.records.imaging import update_segmentation_run
from trials.storage import media_path, series_source_dir

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def fast_retries(settings: Any, media_root: Path, monkeypatch: Any) -> None:
    """Embedded mode (deliveries sent by a thread of this process) with short backoffs; pipeline jobs
    stay queued (this test makes the run's results itself)."""
    from trials.pipeline import embedded

    settings.CELERY_EMBEDDED = True
    settings.PIPELINE_EMBEDDED_SYNC = False
    settings.DICOM_AE_TITLE = "METTRACK"
    settings.PACS_SEND_BACKOFF_S = 0.5
    settings.PACS_SEND_BACKOFF_MAX_S = 1.0
    settings.PACS_SEND_MAX_RETRIES = 120
    monkeypatch.setattr(embedded, "submit", lambda job_id: None)


def analysed_run(world: PacsWorld, phantom: Any, tmp_path: Path) -> Any:
    """The phantom stored as the baseline's series, with a run whose SEG and RTSTRUCT hold its lesions."""
    folders = write_study(phantom.image, tmp_path / "study", patient_id="MRN-1001")
    series = upload_series(world.baseline, folders["T1 MPRAGE post-contrast"], actor=None).series
    run = make_run(series, make_model_version(), status=RunStatus.SUCCEEDED)
    labels = sitk.Image(phantom.labels)
    labels.CopyInformation(phantom.image)
    source = series_source_dir(series)
    names = {1: "L1", 2: "L2"}
    folder = f"runs/run-{run.pk}"
    media_path(folder).mkdir(parents=True)
    write_seg(labels, source, media_path(f"{folder}/seg.dcm"), lesion_names=names, algorithm_name="test",
              algorithm_version="1")  # fmt: skip
    write_rtstruct(labels, source, media_path(f"{folder}/rtstruct.dcm"), lesion_names=names)
    for diameter_mm in (21.5, 13.0):  # lesions L1 and L2 as the analysis would record them
        lesion = make_lesion(world.patient)
        make_observation(
            lesion,
            world.baseline,
            segmentation_run=run,
            longest_diameter_mm=diameter_mm,
            perpendicular_diameter_mm=diameter_mm / 2,
            volume_mm3=diameter_mm**3 / 2,
        )
    return update_segmentation_run(
        run, seg_file=f"{folder}/seg.dcm", rtstruct_file=f"{folder}/rtstruct.dcm", actor=None
    )


@pytest.mark.timeout(600)
def test_seg_and_rtstruct_reach_orthanc_after_an_outage(
    pacs_world: PacsWorld, phantom: Any, tmp_path: Path, fast_retries: None
) -> None:
    from dicomweb_client.api import DICOMwebClient

    orthanc = Orthanc(tmp_path / "orthanc", modalities={"METTRACK": 11112})
    try:
        orthanc.wait_ready()
        destination = PacsDestination.objects.create(
            trial=pacs_world.trial,
            name="Orthanc",
            protocol="cstore",
            ae_title=orthanc.ae_title,
            host="127.0.0.1",
            port=orthanc.dicom_port,
            sends=["seg", "rtstruct", "sr"],
            trigger=DeliveryTrigger.AI_DRAFT,
        )
        run = analysed_run(pacs_world, phantom, tmp_path)

        orthanc.kill()  # the PACS is down when the results are ready
        (delivery,) = queue_deliveries(run, trigger=DeliveryTrigger.AI_DRAFT)

        def failed_twice() -> bool:
            delivery.refresh_from_db()
            return delivery.attempts >= 2

        wait_for(failed_twice, 120, "two failed attempts")
        assert delivery.state in (DeliveryState.QUEUED, DeliveryState.SENDING)
        assert "METTRACK" not in delivery.last_error and orthanc.ae_title in delivery.last_error

        orthanc.restart()
        orthanc.wait_ready()

        def delivered() -> bool:
            delivery.refresh_from_db()
            return delivery.state == DeliveryState.DELIVERED

        wait_for(delivered, 180, "the delivery once Orthanc is back")
        assert delivery.sent_objects == ["seg", "rtstruct", "sr"] and delivery.delivered_at is not None
        assert queue_deliveries(run, trigger=DeliveryTrigger.AI_DRAFT) == []  # sent once
        assert PacsDelivery.objects.filter(destination=destination).count() == 1

        # Found in Orthanc by QIDO-RS, referencing the source series.
        series = run.series
        qido = DICOMwebClient(url=orthanc.dicomweb_url)
        found = {}
        for modality in ("SEG", "RTSTRUCT", "SR"):
            hits = qido.search_for_series(
                study_instance_uid=series.study_instance_uid, search_filters={"Modality": modality}
            )
            assert len(hits) == 1, (modality, hits)
            uid = hits[0]["0020000E"]["Value"][0]
            found[modality] = qido.retrieve_series_metadata(series.study_instance_uid, uid)[0]
        seg_refs = found["SEG"]["00081115"]["Value"]  # Referenced Series Sequence
        assert seg_refs[0]["0020000E"]["Value"] == [series.series_instance_uid]
        frame_refs = found["RTSTRUCT"]["30060010"]["Value"][0]  # Referenced Frame of Reference Sequence
        rt_series = frame_refs["30060012"]["Value"][0]["30060014"]["Value"][0]  # study -> series
        assert rt_series["0020000E"]["Value"] == [series.series_instance_uid]
        # The SR (TID 1500) names the SEG as its evidence and reports each lesion's longest diameter.
        report = found["SR"]
        evidence = report["0040A375"]["Value"][0]["00081115"]["Value"]  # Current Requested Procedure Evidence
        assert found["SEG"]["0020000E"]["Value"][0] in [item["0020000E"]["Value"][0] for item in evidence]
        import json

        text = json.dumps(report)
        assert '"L1"' in text and '"L2"' in text and "21.5" in text and "Long axis" in text

        # Shown on the visit page and in the API, with the trial's viewer link.
        from django.test import Client

        from tests.factories import make_member
        from trials.models import TrialPacsSettings

        TrialPacsSettings.objects.filter(trial=pacs_world.trial).update(
            viewer_url_template=f"{orthanc.url}/ohif/viewer?StudyInstanceUIDs={{study_instance_uid}}"
        )
        client = Client()
        client.force_login(make_member(pacs_world.trial, "investigator"))
        page = client.get(f"/visits/{pacs_world.baseline.pk}/").content.decode()
        assert "Sent to PACS" in page and "Delivered" in page
        assert f"StudyInstanceUIDs={series.study_instance_uid}" in page and "Open in PACS viewer" in page
        listed = client.get(f"/api/v1/pacs-deliveries/?timepoint={pacs_world.baseline.pk}").json()
        assert listed["count"] == 1 and listed["results"][0]["state"] == "delivered"
        assert listed["results"][0]["attempts"] == delivery.attempts >= 3

        # This Orthanc takes objects only from the AEs it knows (the test's config): a stranger is refused.
        from segmentation.scu import SendError, send_cstore

        with pytest.raises(SendError, match="rejected"):
            send_cstore(
                [media_path(run.seg_file.name)],
                host="127.0.0.1",
                port=orthanc.dicom_port,
                called_ae=orthanc.ae_title,
                calling_ae="STRANGER",
            )
    finally:
        orthanc.kill()


def test_signed_destinations_get_the_results_once_a_radiologist_signs(
    pacs_world: PacsWorld, phantom: Any, tmp_path: Path, fast_retries: None, monkeypatch: Any
) -> None:
    from tests.factories import DEFAULT_PASSWORD, make_assessment, make_member
    from trials.actions.assessments import confirm_assessment
    from trials.pipeline import delivery as delivery_module

    dispatched: list[int] = []
    monkeypatch.setattr(delivery_module, "dispatch", dispatched.append)
    create = {"protocol": "stow", "url": "http://pacs.invalid/dicom-web", "actor": None}
    from trials.actions.pacs import create_destination

    create_destination(pacs_world.trial, name="At once", sends=["seg"], trigger="ai_draft", **create)
    signed = create_destination(
        pacs_world.trial, name="Signed", sends=["seg", "rtstruct"], trigger="signed", **create
    )
    run = analysed_run(pacs_world, phantom, tmp_path)
    queue_deliveries(run, trigger=DeliveryTrigger.AI_DRAFT)  # what the analysis stage does
    assert list(PacsDelivery.objects.values_list("destination__name", flat=True)) == ["At once"]

    assessment = make_assessment(pacs_world.baseline)
    radiologist = make_member(pacs_world.trial, "radiologist")
    confirm_assessment(assessment, actor=radiologist, password=DEFAULT_PASSWORD)

    late = PacsDelivery.objects.get(destination=signed)
    assert late.sent_objects == ["seg", "rtstruct"] and late.state == DeliveryState.QUEUED
    assert sorted(dispatched) == sorted(PacsDelivery.objects.values_list("pk", flat=True))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_celery_task_retries_until_orthanc_is_back(
    pacs_world: PacsWorld,
    phantom: Any,
    tmp_path: Path,
    media_root: Path,
    tiny_model_dir: Path,
    broker: Any,
    monkeypatch: Any,
) -> None:
    """The same outage with the deployed path: the task on a real Celery worker (Redis broker) retries
    with backoff and delivers once Orthanc is back."""
    from tests.processes import SHARED_REDIS_PORT, Worker, port_open, worker_env
    from trials.pipeline import embedded

    if not port_open(SHARED_REDIS_PORT):
        pytest.skip("Redis is not running on 127.0.0.1:6379")
    monkeypatch.setattr(embedded, "submit", lambda job_id: None)
    url = broker(SHARED_REDIS_PORT)
    orthanc = Orthanc(tmp_path / "orthanc", modalities={"METTRACK": 11112})
    env = worker_env(
        url,
        media_root,
        tiny_model_dir,
        DICOM_AE_TITLE="METTRACK",
        PACS_SEND_BACKOFF_S="0.5",
        PACS_SEND_BACKOFF_MAX_S="1",
        PACS_SEND_MAX_RETRIES="200",
    )
    worker = Worker(env, tmp_path / "worker.log")
    try:
        orthanc.wait_ready()
        from trials.actions.pacs import create_destination

        create_destination(
            pacs_world.trial,
            name="Orthanc",
            protocol="cstore",
            ae_title=orthanc.ae_title,
            host="127.0.0.1",
            port=orthanc.dicom_port,
            sends=["seg", "rtstruct"],
            actor=None,
        )
        with monkeypatch.context() as patched:  # the series is stored with the pipeline job left alone
            patched.setattr("trials.pipeline.queue._send", lambda job, dispatch_id: None)
            run = analysed_run(pacs_world, phantom, tmp_path)
        orthanc.kill()
        worker.wait_ready()
        (delivery,) = queue_deliveries(run, trigger=DeliveryTrigger.AI_DRAFT)

        def failed_twice() -> bool:
            delivery.refresh_from_db()
            return delivery.attempts >= 2

        worker.wait_until(failed_twice, 120, "two failed attempts on the worker")
        orthanc.restart()
        orthanc.wait_ready()

        def delivered() -> bool:
            delivery.refresh_from_db()
            return delivery.state == DeliveryState.DELIVERED

        worker.wait_until(delivered, 180, "the worker to deliver once Orthanc is back")
        assert "Retry in" in worker.log() and "mettrack.pacs.deliver" in worker.log()
        assert len(orthanc.get("/instances")) == 2  # the SEG and the RTSTRUCT, once
    finally:
        worker.stop()
        orthanc.kill()


@pytest.mark.timeout(300)
def test_stow_rs_destination_stores_the_results_in_orthanc(
    pacs_world: PacsWorld, phantom: Any, tmp_path: Path, fast_retries: None
) -> None:
    from dicomweb_client.api import DICOMwebClient

    from trials.actions.pacs import create_destination

    orthanc = Orthanc(tmp_path / "orthanc")
    try:
        orthanc.wait_ready()
        create_destination(
            pacs_world.trial,
            name="Orthanc DICOMweb",
            protocol="stow",
            url=orthanc.dicomweb_url,
            sends=["seg", "sr"],
            actor=None,
        )
        run = analysed_run(pacs_world, phantom, tmp_path)
        (delivery,) = queue_deliveries(run, trigger=DeliveryTrigger.AI_DRAFT)

        def delivered() -> bool:
            delivery.refresh_from_db()
            return delivery.state == DeliveryState.DELIVERED

        wait_for(delivered, 120, "the STOW-RS delivery")
        assert delivery.attempts == 1
        found = DICOMwebClient(url=orthanc.dicomweb_url).search_for_series(
            study_instance_uid=run.series.study_instance_uid
        )
        assert sorted(item["00080060"]["Value"][0] for item in found) == ["SEG", "SR"]
    finally:
        orthanc.kill()
