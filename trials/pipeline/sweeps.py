"""Periodic sweeps (Celery beat, every ``PIPELINE_SWEEP_INTERVAL_S``): the jobs that need a nudge.

- :func:`sweep_unenqueued_jobs`: queued jobs that never reached the broker (an upload while Redis was
  down) are handed to it now.
- :func:`sweep_stuck_jobs`: jobs left running past their time limit (a lost worker, a hung task) are
  failed; a message the broker delivers again later still resumes such a job (``jobs.is_finished``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from trials.audit import record_audit_event
from trials.choices import AuditAction, JobKind, JobState, RunStatus
from trials.models import ProcessingJob, SegmentationRun
from trials.pipeline.jobs import TIMED_OUT_MESSAGE
from trials.pipeline.queue import enqueue_job
from trials.records.imaging import update_segmentation_run
from trials.records.jobs import fail_job


def sweep_unenqueued_jobs(
    *, older_than_s: float | None = None, enqueue: Callable[[ProcessingJob], bool] | None = None
) -> list[int]:
    """Enqueue pipeline jobs that were saved but never reached the broker (e.g. Redis was down).

    A job qualifies when it is ``queued``, has no Celery task id and is older than the grace period
    (``PIPELINE_ENQUEUE_GRACE_S``, default 30 s, so that a commit's own on-commit enqueue goes first).
    Each re-enqueue is audited.

    Returns:
        Ids of the jobs handed to the broker now.
    """
    grace = float(
        older_than_s if older_than_s is not None else getattr(settings, "PIPELINE_ENQUEUE_GRACE_S", 30)
    )
    cutoff = timezone.now() - dt.timedelta(seconds=grace)
    enqueue = enqueue or enqueue_job
    done: list[int] = []
    candidates = ProcessingJob.objects.filter(
        kind__in=(JobKind.PIPELINE, JobKind.ASSESS),
        state=JobState.QUEUED,
        celery_task_id="",
        enqueued_at__lt=cutoff,
    ).order_by("pk")
    for job in candidates:
        if enqueue(job):
            _audit_reenqueue(job)
            done.append(job.pk)
        else:
            break  # the broker is still down: the next sweep tries again
    return done


@transaction.atomic
def _audit_reenqueue(job: ProcessingJob) -> None:
    record_audit_event(
        actor=None,
        action=AuditAction.ENQUEUE,
        obj=job,
        after={"celery_task_id": job.celery_task_id},
        reason="the job had not reached the broker; enqueued by the periodic sweep",
        correlation_id=job.correlation_id,
    )


def sweep_stuck_jobs(*, now: dt.datetime | None = None) -> list[int]:
    """Fail jobs left ``running`` past their time limit (a lost worker, a hung task).

    Returns:
        Ids of the jobs marked failed.
    """
    now = now or timezone.now()
    failed: list[int] = []
    for job in ProcessingJob.objects.filter(
        state=JobState.RUNNING, time_limit_s__isnull=False, started_at__isnull=False
    ):
        assert job.started_at is not None and job.time_limit_s is not None  # the query's own filters
        if job.started_at + dt.timedelta(seconds=job.time_limit_s) >= now:
            continue
        _fail_stuck(job, now)
        failed.append(job.pk)
    return failed


@transaction.atomic
def _fail_stuck(job: ProcessingJob, now: dt.datetime) -> None:
    job = ProcessingJob.objects.select_for_update().get(pk=job.pk)
    if job.state != JobState.RUNNING:
        return
    minutes = (job.time_limit_s or 0) / 60
    fail_job(
        job,
        error=f"The job was still running after its time limit of {minutes:g} min (stage: {job.stage or 'unknown'}); "
        "the worker was probably lost. It resumes if its task is delivered again; otherwise retry the job.",
        message=TIMED_OUT_MESSAGE,
    )
    if job.kind == JobKind.PIPELINE and job.params.get("series_id"):
        for run in SegmentationRun.objects.filter(
            series_id=job.params["series_id"], status=RunStatus.RUNNING
        ):
            update_segmentation_run(
                run, status=RunStatus.FAILED, error="timed out", finished_at=now, actor=None,
                correlation_id=job.correlation_id,
            )  # fmt: skip


__all__ = ["sweep_stuck_jobs", "sweep_unenqueued_jobs"]
