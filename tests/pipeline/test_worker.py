"""Real Celery worker processes on a real Redis broker and the test PostgreSQL database.

* Three visits uploaded through the API are processed by a ``celery worker`` subprocess; the worker is
  killed with SIGKILL in the middle of the first segmentation; a new worker finishes every job exactly
  once and nothing is duplicated.
* A database outage seen by the worker (a TCP proxy to PostgreSQL that the test cuts) is retried with
  backoff, and the job succeeds once the database is reachable again.
* Uploads made while Redis is down are not lost: the job is stored, and once Redis is back the periodic
  sweep (beat inside the worker) hands it to the broker and the worker runs it. That test runs its own
  ``redis-server`` on another port; the shared server on 6379 is never stopped.

The worker uses its own queue names and Redis database number, so runs of other engineers on the same
Redis do not interfere. The model is the tiny model directory of conftest.py: these tests check the
mechanics, not segmentation accuracy (see test_longitudinal.py for the clinical results).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.factories import make_member
from tests.pipeline.conftest import SyntheticPatient
from tests.processes import (
    REDIS_HOST,
    SHARED_REDIS_PORT,
    RedisServer,
    TcpProxy,
    Worker,
    port_open,
    wait_for,
    worker_env,
)
from trials.choices import Criteria, JobState, MembershipRole, RunStatus
from trials.models import (
    Assessment,
    AuditEvent,
    ImagingSeries,
    LesionObservation,
    ProcessingJob,
    SegmentationRun,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def upload(client: Any, timepoint_id: int, path: Path) -> Any:
    with path.open("rb") as fh:
        return client.post(f"/api/v1/timepoints/{timepoint_id}/series/", {"file": fh}, format="multipart")


def jobs_done(ids: list[int]) -> bool:
    states = set(ProcessingJob.objects.filter(pk__in=ids).values_list("state", flat=True))
    return states <= {JobState.SUCCEEDED, JobState.FAILED}


@pytest.mark.timeout(300)
def test_three_visits_through_a_worker_killed_mid_segmentation(
    broker: Callable[[int], str],
    api_client: Any,
    pipeline_patient: Any,
    synthetic_patient: SyntheticPatient,
    slow_tiny_model_dir: Path,
    media_root: Path,
    tmp_path: Path,
) -> None:
    if not port_open(SHARED_REDIS_PORT):
        pytest.skip("Redis is not running on 127.0.0.1:6379")
    url = broker(SHARED_REDIS_PORT)
    env = worker_env(url, media_root, slow_tiny_model_dir)
    manager = make_member(pipeline_patient.trial, MembershipRole.DATA_MANAGER)
    api_client.force_authenticate(manager)
    visits = {tp.visit_label: tp for tp in pipeline_patient.timepoints.all()}

    first = Worker(env, tmp_path / "worker-1.log")
    try:
        first.wait_ready()
        assert "process warmed up" in first.log()  # config.warmup ran at worker start
        response = upload(api_client, visits["BASELINE"].pk, synthetic_patient.zips[0])
        assert response.status_code == 202, response.content
        job_ids = [response.json()["job"]["id"]]
        assert ProcessingJob.objects.get(pk=job_ids[0]).celery_task_id  # it reached Redis

        def segmenting() -> bool:
            job = ProcessingJob.objects.get(pk=job_ids[0])
            return job.state == JobState.RUNNING and job.stage == "segmentation" and job.progress_pct >= 10

        try:
            wait_for(segmenting, 90, "the first segmentation to start", poll_s=0.05)
        except AssertionError as exc:
            job = ProcessingJob.objects.get(pk=job_ids[0])
            raise AssertionError(
                f"{exc}; job {job.state} {job.stage} {job.error}\n{first.log()[-4000:]}"
            ) from None
        first.kill()
    finally:
        first.kill()
    # The other visits arrive while no worker runs: they wait in the queue.
    for label, path in zip(synthetic_patient.labels[1:], synthetic_patient.zips[1:], strict=True):
        response = upload(api_client, visits[label].pk, path)
        assert response.status_code == 202, response.content
        job_ids.append(response.json()["job"]["id"])
    killed = ProcessingJob.objects.get(pk=job_ids[0])
    assert killed.state == JobState.RUNNING and killed.attempts == 1  # left mid-way, not acknowledged

    second = Worker(env, tmp_path / "worker-2.log")
    try:
        second.wait_ready()
        wait_for(lambda: jobs_done(job_ids), 200, "every job to finish", poll_s=0.5)
    finally:
        second.stop()

    jobs = list(ProcessingJob.objects.filter(pk__in=job_ids).order_by("pk"))
    for job in jobs:
        assert job.state == JobState.SUCCEEDED, (job.error, second.log()[-3000:])
        assert job.progress_pct == 100 and job.finished_at is not None
    assert jobs[0].attempts == 2  # delivered again after the kill, run to the end once
    # Exactly one run per series, one observation per lesion and visit, one current assessment per
    # visit and criteria: the rerun duplicated nothing.
    assert SegmentationRun.objects.count() == 3 == ImagingSeries.objects.count()
    assert set(SegmentationRun.objects.values_list("status", flat=True)) == {RunStatus.SUCCEEDED}
    # The run records where and how its network ran: the tiny model has no ONNX export, so PyTorch.
    assert set(SegmentationRun.objects.values_list("device", flat=True)) == {"cpu/torch"}
    pairs = list(LesionObservation.objects.values_list("lesion_id", "timepoint_id"))
    assert len(pairs) == len(set(pairs))
    for tp in visits.values():
        for criteria in (Criteria.RANO_BM, Criteria.VOLUMETRIC):
            assert Assessment.objects.filter(timepoint=tp, criteria=criteria, is_current=True).count() == 1
    # The uploader and the correlation id travelled with the tasks into the audit trail.
    for job in jobs:
        finished = AuditEvent.objects.get(correlation_id=job.correlation_id, action="finish")
        assert finished.object_id == str(job.pk)
        run_events = AuditEvent.objects.filter(
            correlation_id=job.correlation_id, object_type="trials.segmentationrun", action="create"
        )
        assert run_events.count() == 1 and run_events.get().actor == manager


@pytest.mark.timeout(300)
def test_upload_while_redis_is_down_runs_after_redis_returns(
    broker: Callable[[int], str],
    private_redis: RedisServer,
    api_client: Any,
    pipeline_patient: Any,
    synthetic_patient: SyntheticPatient,
    tiny_model_dir: Path,
    media_root: Path,
    tmp_path: Path,
) -> None:
    url = broker(private_redis.port)
    env = worker_env(
        url, media_root, tiny_model_dir, PIPELINE_SWEEP_INTERVAL_S="2", PIPELINE_ENQUEUE_GRACE_S="1"
    )
    api_client.force_authenticate(make_member(pipeline_patient.trial, MembershipRole.DATA_MANAGER))
    worker = Worker(env, tmp_path / "worker-beat.log", beat=True)
    try:
        worker.wait_ready()
        private_redis.stop()

        response = upload(
            api_client, pipeline_patient.timepoints.get(visit_label="BASELINE").pk, synthetic_patient.zips[0]
        )
        assert response.status_code == 202, response.content
        job = ProcessingJob.objects.get(pk=response.json()["job"]["id"])
        assert job.state == JobState.QUEUED and job.celery_task_id == ""  # stored, not yet at the broker

        private_redis.start()
        wait_for(lambda: jobs_done([job.pk]), 150, "the job to run after Redis returned", poll_s=0.5)
        job.refresh_from_db()
        assert job.state == JobState.SUCCEEDED, (job.error, worker.log()[-3000:])
        assert job.celery_task_id and job.attempts == 1
        assert AuditEvent.objects.filter(
            object_type="trials.processingjob", object_id=str(job.pk), reason__contains="periodic sweep"
        ).exists()
    finally:
        worker.stop()


@pytest.mark.timeout(300)
def test_database_outage_is_retried_with_backoff_until_the_job_succeeds(
    broker: Callable[[int], str],
    api_client: Any,
    pipeline_patient: Any,
    synthetic_patient: SyntheticPatient,
    tiny_model_dir: Path,
    media_root: Path,
    tmp_path: Path,
) -> None:
    from django.db import connection

    if not port_open(SHARED_REDIS_PORT):
        pytest.skip("Redis is not running on 127.0.0.1:6379")
    url = broker(SHARED_REDIS_PORT)
    db = connection.settings_dict
    proxy = TcpProxy(int(db["PORT"] or 5432))
    proxy.start()
    env = worker_env(url, media_root, tiny_model_dir)
    env["DATABASE_URL"] = f"postgres://{db['USER']}@{REDIS_HOST}:{proxy.port}/{db['NAME']}"
    api_client.force_authenticate(make_member(pipeline_patient.trial, MembershipRole.DATA_MANAGER))
    worker = Worker(env, tmp_path / "worker-db.log")
    try:
        worker.wait_ready()
        proxy.cut()  # the worker's database goes away
        response = upload(
            api_client, pipeline_patient.timepoints.get(visit_label="BASELINE").pk, synthetic_patient.zips[0]
        )
        assert response.status_code == 202, response.content
        job_id = response.json()["job"]["id"]
        wait_for(lambda: "Retry in" in worker.log(), 60, "the task to be retried")
        proxy.start()  # the database is back
        wait_for(lambda: jobs_done([job_id]), 150, "the job to succeed after the outage", poll_s=0.5)
    finally:
        worker.stop()
        proxy.cut()
    job = ProcessingJob.objects.get(pk=job_id)
    assert job.state == JobState.SUCCEEDED, (job.error, worker.log()[-3000:])
    assert "TransientError" in worker.log() and "database unavailable" in worker.log()
    assert SegmentationRun.objects.filter(series_id=job.params["series_id"]).count() == 1


@pytest.mark.timeout(180)
def test_a_settings_change_is_re_assessed_by_a_worker(
    broker: Callable[[int], str], api_client: Any, tiny_model_dir: Path, media_root: Path, tmp_path: Path
) -> None:
    """A protocol amendment (max_targets 5 -> 1) through the API queues one re-assessment job that a
    real worker process runs on the default queue; the stored assessments then carry the new setting."""
    from tests.trials.test_api_edits_reassess import current, patient_with
    from trials.choices import JobKind

    if not port_open(SHARED_REDIS_PORT):
        pytest.skip("Redis is not running on 127.0.0.1:6379")
    url = broker(SHARED_REDIS_PORT)
    patient, (_, fu1) = patient_with({"L1": [20, 12], "L2": [15, 15]}, [0, 60])
    assert current(fu1).sum_ld_mm == pytest.approx(27.0)
    api_client.force_authenticate(make_member(patient.trial, MembershipRole.ADMIN))
    response = api_client.patch(
        f"/api/v1/trials/{patient.trial_id}/", {"reason": "test change", "max_targets": 1}, format="json"
    )
    assert response.status_code == 200, response.content
    job = ProcessingJob.objects.get(kind=JobKind.ASSESS)
    assert job.celery_task_id  # it reached Redis
    worker = Worker(worker_env(url, media_root, tiny_model_dir), tmp_path / "worker.log")
    try:
        worker.wait_ready()
        wait_for(lambda: jobs_done([job.pk]), 90, "the re-assessment job", poll_s=0.3)
    finally:
        worker.stop()
    job.refresh_from_db()
    assert job.state == JobState.SUCCEEDED, (job.error, worker.log()[-3000:])
    # every visit under both criteria: each stores the settings it was assessed under
    assert job.result == {"patients": 1, "assessments_created": 4}
    assert current(fu1).sum_ld_mm == pytest.approx(12.0) and current(fu1).settings["max_targets"] == 1
