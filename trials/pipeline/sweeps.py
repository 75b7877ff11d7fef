"""Periodic sweeps (Celery beat, every ``PIPELINE_SWEEP_INTERVAL_S``): the jobs that need a nudge.

- :func:`sweep_unenqueued_jobs`: queued jobs whose message is not in the broker (never sent while Redis
  was down, or lost with a Redis restart) are handed to it again.
- :func:`sweep_lost_jobs`: running jobs whose worker stopped beating (killed, its node lost) are sent
  again as a new dispatch, within ``PIPELINE_LEASE_S`` (minutes, not the broker's 2-hour visibility
  timeout); after ``PIPELINE_MAX_ATTEMPTS`` losses the job fails with the reason.
- :func:`sweep_stuck_jobs`: jobs left running past their time limit (a hung task whose worker still
  beats) are failed; a message the broker delivers again later still resumes such a job
  (``jobs.is_finished``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from trials.audit import record_audit_event
from trials.choices import AuditAction, JobKind, JobState, RunStatus
from trials.models import ProcessingJob
from trials.pipeline.jobs import TIMED_OUT_MESSAGE, job_runs
from trials.pipeline.queue import broker_has_message, embedded_mode, enqueue_job
from trials.records.imaging import update_segmentation_run
from trials.records.jobs import fail_job, requeue_job


def _setting_s(name: str, default: float) -> float:
    return float(getattr(settings, name, default))


def _message_missing(job: ProcessingJob, requeue_cutoff: dt.datetime) -> bool:
    """Whether a queued job's dispatch is old enough and its message gone from the broker."""
    if job.dispatched_at is None or job.dispatched_at >= requeue_cutoff:
        return False
    # No broker to ask (embedded mode: the process that held the job in its thread may have restarted)
    # counts as missing; a broker that does not answer now is asked again at the next sweep.
    present = broker_has_message(job.celery_task_id)
    return present is False or (present is None and embedded_mode())


def sweep_unenqueued_jobs(
    *, older_than_s: float | None = None, enqueue: Callable[[ProcessingJob], bool] | None = None
) -> list[int]:
    """Send again the queued jobs whose message is not in the broker.

    Two cases: a job saved but never sent (the broker was down when it was saved: no dispatch after the
    grace period ``PIPELINE_ENQUEUE_GRACE_S``, default 30 s, so that a commit's own enqueue goes first),
    and a job whose message was lost with the broker (a Redis restart without persistence: dispatched
    longer than ``PIPELINE_REQUEUE_AFTER_S`` ago, default 300 s, and its message neither in a queue nor
    taken by a worker). Each is a new dispatch (a late delivery of the old one does nothing), audited.

    Returns:
        Ids of the jobs handed to the broker now.
    """
    now = timezone.now()
    grace = float(older_than_s if older_than_s is not None else _setting_s("PIPELINE_ENQUEUE_GRACE_S", 30))
    cutoff = now - dt.timedelta(seconds=grace)
    requeue_cutoff = now - dt.timedelta(seconds=_setting_s("PIPELINE_REQUEUE_AFTER_S", 300))
    enqueue = enqueue or enqueue_job
    done: list[int] = []
    candidates = ProcessingJob.objects.filter(
        kind__in=(JobKind.PIPELINE, JobKind.ASSESS), state=JobState.QUEUED, enqueued_at__lt=cutoff
    ).order_by("pk")
    for job in candidates:
        if job.celery_task_id and not _message_missing(job, requeue_cutoff):
            continue
        lost = bool(job.celery_task_id)
        if enqueue(job):
            _audit_reenqueue(job, lost)
            done.append(job.pk)
        else:
            break  # the broker is still down: the next sweep tries again
    return done


def sweep_lost_jobs(*, now: dt.datetime | None = None) -> list[int]:
    """Send again the running jobs whose worker stopped beating (killed outright, its node lost).

    A running job's heartbeat (``heartbeat_at``) older than ``PIPELINE_LEASE_S`` (default 300 s) means its
    worker is gone: the job becomes a new dispatch (its stored outputs are reused, and a late delivery of
    the old dispatch does nothing), audited. A job that lost its worker ``PIPELINE_MAX_ATTEMPTS`` times
    (default 3: e.g. a series that makes the worker run out of memory) fails instead, with the reason.

    A job between its two stages has no worker to beat for it: its segmentation is stored and its analysis
    waits in the ``default`` queue behind others. While that message waits in a queue the job is not lost,
    however long the queue (a backlog would otherwise send every waiting job again and fail it after
    ``PIPELINE_MAX_ATTEMPTS``). A message taken by a worker that then died is not "waiting": it sits in
    the broker's unacknowledged set until the visibility timeout, and the lease sends the job again.

    Returns:
        Ids of the jobs sent again or failed.
    """
    now = now or timezone.now()
    lease = _setting_s("PIPELINE_LEASE_S", 300)
    cutoff = now - dt.timedelta(seconds=lease)
    stale = ProcessingJob.objects.filter(state=JobState.RUNNING).filter(
        Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True, started_at__lt=cutoff)
    )
    handled: list[int] = []
    for job in stale.order_by("pk"):
        if job.celery_task_id and broker_has_message(job.celery_task_id, waiting_only=True):
            continue  # between stages, waiting for a worker: not lost
        if _requeue_lost(job, cutoff, lease):
            handled.append(job.pk)
    return handled


@transaction.atomic
def _requeue_lost(job: ProcessingJob, cutoff: dt.datetime, lease_s: float) -> bool:
    job = ProcessingJob.objects.select_for_update().get(pk=job.pk)
    beat = job.heartbeat_at or job.started_at
    if job.state != JobState.RUNNING or beat is None or beat >= cutoff:
        return False  # it moved on meanwhile
    max_attempts = int(getattr(settings, "PIPELINE_MAX_ATTEMPTS", 3))
    if job.attempts >= max_attempts:
        fail_job(
            job,
            error=f"The worker running this job was lost {job.attempts} times (no heartbeat for {lease_s:g} s, "
            f"stage: {job.stage or 'unknown'}); it is not sent again. Retry it once the cause is fixed.",
            message="worker lost",
        )
        _fail_runs(job, "worker lost", timezone.now())
        return True
    job = requeue_job(
        job,
        action=AuditAction.ENQUEUE,
        actor=None,
        reason=f"its worker stopped answering (no heartbeat for {lease_s:g} s at stage "
        f"{job.stage or 'unknown'}); sent again by the periodic sweep",
    )
    transaction.on_commit(lambda: enqueue_job(job))
    return True


@transaction.atomic
def _audit_reenqueue(job: ProcessingJob, lost: bool) -> None:
    why = "its message was lost by the broker" if lost else "the job had not reached the broker"
    record_audit_event(
        actor=None,
        action=AuditAction.ENQUEUE,
        obj=job,
        after={"celery_task_id": job.celery_task_id},
        reason=f"{why}; enqueued by the periodic sweep",
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
    _fail_runs(job, "timed out", now)


def _fail_runs(job: ProcessingJob, error: str, now: dt.datetime) -> None:
    """Fail the running segmentation runs of a failed job (a retry starts them again)."""
    for run in job_runs(job, RunStatus.RUNNING):
        update_segmentation_run(
            run, status=RunStatus.FAILED, error=error, finished_at=now, actor=None,
            correlation_id=job.correlation_id,
        )  # fmt: skip


__all__ = ["sweep_lost_jobs", "sweep_stuck_jobs", "sweep_unenqueued_jobs"]
