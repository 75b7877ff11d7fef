"""A pipeline job as the stages see it: is there anything left to do, who acts, progress, failure.

One uploaded series is one ``ProcessingJob`` of kind ``pipeline`` followed through every stage; a change
of a trial's criteria settings is one job of kind ``assess``. The stages (:mod:`.segmentation`,
:mod:`.analysis`, :mod:`.assessment`) claim the job (:func:`claim`: not finished, and the delivery is
of its current dispatch), start it, keep its heartbeat (:func:`heartbeat`), report progress and finish
it; a permanent error fails it once (:func:`fail_pipeline_job`). The sweeps (:mod:`.sweeps`) send again a
job whose worker stopped beating and fail one that ran past its time limit.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection

from trials.choices import JobKind, JobState, RunStatus
from trials.models import ProcessingJob, SegmentationRun
from trials.pipeline.errors import user_message
from trials.records.imaging import update_segmentation_run
from trials.records.jobs import beat, fail_job, update_job_progress

logger = logging.getLogger(__name__)

#: ``ProcessingJob.message`` of a job failed by the stuck-job sweep (``trials.pipeline.sweeps``).
TIMED_OUT_MESSAGE = "timed out"


def claim(job_id: int, dispatch_id: str = "") -> ProcessingJob | None:
    """The job, when this delivery has work to do; None when the job is finished or the delivery belongs
    to an earlier dispatch (the job was sent again after its worker was lost, or retried).

    ``dispatch_id`` empty (an in-process call) skips the dispatch check.
    """
    job = ProcessingJob.objects.select_related("created_by", "trial").get(pk=job_id)
    if is_finished(job):
        return None
    if dispatch_id and job.celery_task_id != dispatch_id:
        logger.info("job %s: delivery of an earlier dispatch %s ignored", job_id, dispatch_id)
        return None
    return job


@contextmanager
def heartbeat(job: ProcessingJob) -> Iterator[None]:
    """Refresh the job's ``heartbeat_at`` every ``PIPELINE_HEARTBEAT_S`` while the block runs.

    A worker killed outright stops beating; the lost-job sweep sends the job again once the beat is older
    than ``PIPELINE_LEASE_S``. The beat runs in a thread of its own (its own database connection, closed
    when it stops), so a long network step or a long transaction does not silence it.
    """
    interval = float(getattr(settings, "PIPELINE_HEARTBEAT_S", 30.0))
    stop = threading.Event()

    def run() -> None:
        try:
            while not stop.wait(interval):
                try:
                    beat(job.pk)
                except Exception:  # the database may be away for a moment; the next beat tries again
                    logger.warning("job %s: heartbeat not recorded", job.pk, exc_info=True)
        finally:
            connection.close()

    thread = threading.Thread(target=run, name=f"mettrack-heartbeat-{job.pk}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def progress(job: ProcessingJob | None, pct: int, stage: str, message: str = "") -> None:
    """Record a running job's progress (0-100) and stage, shown at once by the dashboard and the API."""
    if job is not None:
        update_job_progress(job, progress_pct=pct, stage=stage, message=message)


def is_finished(job: ProcessingJob) -> bool:
    """Whether a delivered task has nothing left to do for this job.

    A job the stuck-job sweep failed is not finished: its message, redelivered once the broker gives
    up on the lost worker, resumes it (so a killed worker's work is never lost).
    """
    if job.state == JobState.SUCCEEDED:
        return True
    return job.state == JobState.FAILED and job.message != TIMED_OUT_MESSAGE


def job_context(job: ProcessingJob, actor_id: int | None, correlation_id: str) -> tuple[Any | None, str]:
    """The acting user and correlation id a task was given (default: the job's own)."""
    actor = job.created_by
    if actor_id is not None and (actor is None or actor.pk != actor_id):
        actor = get_user_model().objects.filter(pk=actor_id).first()
    return actor, correlation_id or job.correlation_id


def fail_pipeline_job(job_id: int, exc: BaseException) -> None:
    """Mark a job failed with the error's user message (the tasks' policy for permanent errors).

    The segmentation runs of its series still running are failed with it, so that a retry starts them
    again. A job already finished is left as it is.
    """
    job = ProcessingJob.objects.filter(pk=job_id).first()
    if job is None or job.state in (JobState.SUCCEEDED, JobState.FAILED):
        return
    message = user_message(exc)
    fail_job(job, error=message, message=f"failed at stage {job.stage or 'start'}")
    for run in job_runs(job, RunStatus.RUNNING):
        update_segmentation_run(
            run, status=RunStatus.FAILED, error=message, actor=None, correlation_id=job.correlation_id
        )


def job_runs(job: ProcessingJob, status: str) -> list[SegmentationRun]:
    """The segmentation runs a job works on, in ``status``: those of its series for a pipeline job (the
    visit's own runs, never a shadow run), the candidate's shadow run of its series for a shadow job."""
    series_id = job.params.get("series_id")
    if not series_id:
        return []
    runs = SegmentationRun.objects.filter(series_id=series_id, status=status)
    if job.kind == JobKind.PIPELINE:
        return list(runs.filter(is_shadow=False))
    if job.kind == JobKind.SHADOW:
        return list(runs.filter(is_shadow=True, model_version_id=job.params.get("model_version_id")))
    return []


__all__ = [
    "TIMED_OUT_MESSAGE",
    "claim",
    "fail_pipeline_job",
    "heartbeat",
    "job_runs",
    "is_finished",
    "job_context",
    "progress",
]
