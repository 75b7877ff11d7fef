"""Faults that needed a person before, each reproduced with real processes, now recovered by the sweeps.

* A Redis restart (no persistence) loses a queued job's message: the sweep finds it missing from the
  broker and sends the job again; it runs once.
* A segmentation that ends while Redis is down cannot hand over to the analysis: the job keeps its stored
  mask, its worker stops beating, and the lost-job sweep sends it again once Redis is back; the mask is
  reused and the job finishes.

The broker is a private redis-server the test stops and starts; the workers run ``celery -A worker
worker -B`` (beat inside, sweeps every 2 s) with short leases.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.factories import make_member
from tests.pipeline.conftest import SyntheticPatient
from tests.pipeline.test_worker import jobs_done, upload
from tests.processes import RedisServer, Worker, wait_for, worker_env
from trials.choices import JobState, MembershipRole
from trials.models import AuditEvent, ProcessingJob, SegmentationRun
from trials.pipeline.queue import broker_has_message

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

#: Sweeps every 2 s; a job's message missing 3 s after it was sent is sent again.
FAST_SWEEPS = {
    "PIPELINE_SWEEP_INTERVAL_S": "2",
    "PIPELINE_ENQUEUE_GRACE_S": "1",
    "PIPELINE_REQUEUE_AFTER_S": "3",
}


@pytest.mark.timeout(240)
def test_a_queued_job_whose_message_a_redis_restart_lost_runs_once(
    broker: Callable[[int], str],
    private_redis: RedisServer,
    api_client: Any,
    pipeline_patient: Any,
    synthetic_patient: SyntheticPatient,
    tiny_model_dir: Path,
    media_root: Path,
    settings: Any,
    tmp_path: Path,
) -> None:
    url = broker(private_redis.port)
    api_client.force_authenticate(make_member(pipeline_patient.trial, MembershipRole.DATA_MANAGER))
    response = upload(
        api_client, pipeline_patient.timepoints.get(visit_label="BASELINE").pk, synthetic_patient.zips[0]
    )
    assert response.status_code == 202, response.content
    job = ProcessingJob.objects.get(pk=response.json()["job"]["id"])
    assert job.state == JobState.QUEUED and job.celery_task_id  # sent: its message waits in the queue
    assert broker_has_message(job.celery_task_id) is True

    private_redis.stop()  # Redis restarts without persistence: the message is gone
    private_redis.start()
    assert broker_has_message(job.celery_task_id) is False

    worker = Worker(worker_env(url, media_root, tiny_model_dir, **FAST_SWEEPS), tmp_path / "w.log", beat=True)
    try:
        worker.wait_ready()
        wait_for(lambda: jobs_done([job.pk]), 150, "the job to be sent again and run", poll_s=0.5)
    finally:
        worker.stop()
    lost = job.celery_task_id
    job.refresh_from_db()
    assert job.state == JobState.SUCCEEDED, (job.error, worker.log()[-3000:])
    assert job.attempts == 1 and job.celery_task_id != lost  # one run, of a new dispatch
    assert AuditEvent.objects.filter(
        object_id=str(job.pk), reason__contains="its message was lost by the broker"
    ).exists()
    assert SegmentationRun.objects.filter(series_id=job.params["series_id"]).count() == 1


@pytest.mark.timeout(300)
def test_a_segmentation_ending_while_redis_is_down_is_analysed_once_redis_is_back(
    broker: Callable[[int], str],
    private_redis: RedisServer,
    api_client: Any,
    pipeline_patient: Any,
    synthetic_patient: SyntheticPatient,
    slow_tiny_model_dir: Path,
    media_root: Path,
    tmp_path: Path,
) -> None:
    url = broker(private_redis.port)
    env = worker_env(
        url, media_root, slow_tiny_model_dir, PIPELINE_LEASE_S="12", PIPELINE_HEARTBEAT_S="2", **FAST_SWEEPS
    )
    api_client.force_authenticate(make_member(pipeline_patient.trial, MembershipRole.DATA_MANAGER))
    worker = Worker(env, tmp_path / "w.log", beat=True)
    try:
        worker.wait_ready()
        response = upload(
            api_client, pipeline_patient.timepoints.get(visit_label="BASELINE").pk, synthetic_patient.zips[0]
        )
        assert response.status_code == 202, response.content
        job_id = response.json()["job"]["id"]

        def segmenting() -> bool:
            job = ProcessingJob.objects.get(pk=job_id)
            return job.stage == "segmentation" and job.progress_pct >= 10

        wait_for(segmenting, 90, "the network to start")
        private_redis.stop()  # the broker goes away while the network runs
        wait_for(lambda: "analysis not handed over" in worker.log(), 90, "the hand-over to fail")
        run = SegmentationRun.objects.get(series_id=ProcessingJob.objects.get(pk=job_id).params["series_id"])
        assert run.mask_file  # the segmentation is stored; only the hand-over is missing
        mask = media_root / run.mask_file.name
        stored = mask.stat().st_mtime_ns
        private_redis.start()
        wait_for(lambda: jobs_done([job_id]), 150, "the job to finish after Redis returned", poll_s=0.5)
    finally:
        worker.stop()
    job = ProcessingJob.objects.get(pk=job_id)
    assert job.state == JobState.SUCCEEDED, (job.error, worker.log()[-3000:])
    assert job.attempts == 2  # sent again once by the lost-job sweep
    assert AuditEvent.objects.filter(object_id=str(job_id), reason__contains="stopped answering").exists()
    assert list(SegmentationRun.objects.filter(series_id=job.params["series_id"])) == [run]
    assert mask.stat().st_mtime_ns == stored  # the mask was reused, not computed again


def test_a_job_waiting_between_its_stages_is_not_lost_however_long_the_queue(
    broker: Callable[[int], str], private_redis: RedisServer, pipeline_patient: Any
) -> None:
    """A stored segmentation whose analysis waits in the default queue behind a backlog has no heartbeat,
    yet nothing is lost: the lease must not send it again. Once its message is taken by a worker that dies
    (kombu's unacknowledged set), it is lost, and sent again."""
    import datetime as dt
    import json

    import redis
    from django.utils import timezone

    from trials.choices import JobKind
    from trials.pipeline import queue, sweeps
    from trials.records import jobs as job_records

    client = redis.Redis.from_url(broker(private_redis.port))
    job = job_records.create_job(JobKind.PIPELINE, obj=pipeline_patient, time_limit_s=3600, actor=None)
    job_records.start_job(job, stage="segmentation")
    dispatch = "dispatch-between-stages"
    stale = timezone.now() - dt.timedelta(hours=1)
    ProcessingJob.objects.filter(pk=job.pk).update(celery_task_id=dispatch, heartbeat_at=stale)
    message = json.dumps({"kwargs": {"job_id": job.pk, "dispatch_id": dispatch}}).encode()

    client.lpush(queue.DEFAULT_QUEUE, message)  # the analysis, handed over, waits for a worker
    assert sweeps.sweep_lost_jobs() == []
    assert ProcessingJob.objects.get(pk=job.pk).attempts == 1

    client.delete(queue.DEFAULT_QUEUE)
    client.hset("unacked", "tag-1", message)  # taken by a worker that then died
    assert sweeps.sweep_lost_jobs() == [job.pk]
    job.refresh_from_db()
    assert job.state == JobState.QUEUED and job.celery_task_id != dispatch
    assert AuditEvent.objects.filter(object_id=str(job.pk), reason__contains="stopped answering").exists()
