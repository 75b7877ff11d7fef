"""Row helpers of background jobs (``ProcessingJob``): created queued, enqueued after commit, then
started, followed, finished or failed.

Starting a job and its progress are operational telemetry kept on the job row, not audit events; its
creation and its outcome (finished, failed) are audited.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib.contenttypes.models import ContentType
from django.db import models, transaction
from django.db.models import F
from django.utils import timezone

from trials.audit import new_correlation_id, record_audit_event, snapshot, trial_of
from trials.choices import AuditAction, JobKind, JobState
from trials.exceptions import InvalidInputError
from trials.models import ProcessingJob, Trial
from trials.records.base import save_validated, update_row


@transaction.atomic
def create_job(
    kind: str,
    *,
    obj: models.Model | None = None,
    trial: Trial | None = None,
    params: dict[str, Any] | None = None,
    time_limit_s: int | None = None,
    enqueue: Callable[[ProcessingJob], Any] | None = None,
    actor: Any | None,
    reason: str = "",
    correlation_id: str = "",
) -> ProcessingJob:
    """Save a queued job and, once the transaction commits, hand it to ``enqueue``.

    Saving first means a worker never receives the id of a job that does not exist (or was rolled back).

    Args:
        kind: ``JobKind`` value.
        obj: what the job works on (generic reference); its trial is used when ``trial`` is not given.
        trial: trial of the job (for per-trial access).
        params: task arguments (ids only).
        time_limit_s: hard time limit the task should run under.
        enqueue: called with the job after commit, e.g. ``lambda job: task.delay(job.pk)``; it may call
            ``set_job_task_id``.

    Raises:
        InvalidInputError: unknown kind.
    """
    if kind not in JobKind.values:
        raise InvalidInputError(
            f"Unknown job kind {kind!r}.", {"kind": [f"Must be one of {', '.join(JobKind.values)}."]}
        )
    correlation_id = correlation_id or new_correlation_id()
    job = ProcessingJob(
        kind=kind,
        trial=trial if trial is not None else trial_of(obj),
        content_type=ContentType.objects.get_for_model(obj) if obj is not None else None,
        object_id=obj.pk if obj is not None else None,
        params=params or {},
        time_limit_s=time_limit_s,
        correlation_id=correlation_id,
        created_by=actor,
        state=JobState.QUEUED,
    )
    save_validated(job)
    record_audit_event(
        actor=actor,
        action=AuditAction.ENQUEUE,
        obj=job,
        after=snapshot(job),
        reason=reason,
        correlation_id=correlation_id,
    )
    if enqueue is not None:
        transaction.on_commit(lambda: enqueue(job))
    return job


def record_dispatch(job: ProcessingJob, dispatch_id: str) -> None:
    """Make ``dispatch_id`` the job's current dispatch, before it is sent (plumbing, not audited).

    Recorded first so that the worker, however fast, finds its own dispatch on the row; a delivery of an
    earlier dispatch then finds another id and does nothing.
    """
    now = timezone.now()
    ProcessingJob.objects.filter(pk=job.pk).update(celery_task_id=dispatch_id, dispatched_at=now)
    job.celery_task_id, job.dispatched_at = dispatch_id, now


def clear_dispatch(job: ProcessingJob, dispatch_id: str) -> None:
    """Forget a dispatch whose message could not be sent (only if it is still the job's current one)."""
    ProcessingJob.objects.filter(pk=job.pk, celery_task_id=dispatch_id).update(
        celery_task_id="", dispatched_at=None
    )
    job.celery_task_id, job.dispatched_at = "", None


@transaction.atomic
def start_job(job: ProcessingJob, *, stage: str = "") -> ProcessingJob:
    """Mark a job running, count the attempt and start its heartbeat.

    Progress is operational telemetry kept on the job row itself, so starting and progress are not
    audit events; the outcome (finish_job / fail_job) is.
    """
    job = ProcessingJob.objects.select_for_update().get(pk=job.pk)
    now = timezone.now()
    job.state = JobState.RUNNING
    job.started_at = now
    job.heartbeat_at = now
    job.finished_at = None
    job.attempts = F("attempts") + 1
    job.error = ""
    job.stage = stage
    job.save()
    job.refresh_from_db()
    return job


def beat(job_id: int) -> None:
    """A running job's worker is alive (the heartbeat; plumbing, not audited)."""
    ProcessingJob.objects.filter(pk=job_id, state=JobState.RUNNING).update(heartbeat_at=timezone.now())


@transaction.atomic
def requeue_job(
    job: ProcessingJob, *, action: str, actor: Any | None, reason: str, correlation_id: str = ""
) -> ProcessingJob:
    """Put a job back in the queue as a new dispatch (the caller enqueues it after commit), audited.

    Raises:
        InvalidInputError: never for a job row; see ``update_row``.
    """
    return update_row(
        job,
        {
            "state": JobState.QUEUED,
            "error": "",
            "progress_pct": 0,
            "stage": "",
            "celery_task_id": "",
            "dispatched_at": None,
            "heartbeat_at": None,
            "finished_at": None,
        },
        allowed=(
            "state", "error", "progress_pct", "stage", "celery_task_id", "dispatched_at", "heartbeat_at",
            "finished_at",
        ),
        actor=actor,
        reason=reason,
        correlation_id=correlation_id or job.correlation_id,
        action=action,
    )  # fmt: skip


def update_job_progress(job: ProcessingJob, *, progress_pct: int, stage: str = "", message: str = "") -> None:
    """Record progress (0-100) of a running job, visible at once to the dashboard and the API.

    Raises:
        InvalidInputError: progress outside 0-100.
    """
    if not 0 <= progress_pct <= 100:
        raise InvalidInputError(f"progress_pct must be within 0-100, got {progress_pct}.")
    ProcessingJob.objects.filter(pk=job.pk).update(
        progress_pct=progress_pct, stage=stage, message=message[:500], heartbeat_at=timezone.now()
    )
    job.progress_pct, job.stage, job.message = progress_pct, stage, message[:500]


@transaction.atomic
def finish_job(
    job: ProcessingJob,
    *,
    result: dict[str, Any] | None = None,
    message: str = "",
    actor: Any | None = None,
    correlation_id: str = "",
) -> ProcessingJob:
    """Mark a job succeeded (100%) and audit it."""
    return update_row(
        job,
        {
            "state": JobState.SUCCEEDED,
            "progress_pct": 100,
            "finished_at": timezone.now(),
            "result": result or {},
            "message": message[:500],
        },
        allowed=("state", "progress_pct", "finished_at", "result", "message"),
        actor=actor,
        reason="",
        correlation_id=correlation_id or job.correlation_id,
        action=AuditAction.FINISH,
    )


@transaction.atomic
def fail_job(
    job: ProcessingJob,
    *,
    error: str,
    message: str = "",
    actor: Any | None = None,
    correlation_id: str = "",
) -> ProcessingJob:
    """Mark a job failed with a clear error and audit it."""
    return update_row(
        job,
        {"state": JobState.FAILED, "finished_at": timezone.now(), "error": error, "message": message[:500]},
        allowed=("state", "finished_at", "error", "message"),
        actor=actor,
        reason="",
        correlation_id=correlation_id or job.correlation_id,
        action=AuditAction.FAIL,
    )


__all__ = [
    "create_job",
    "fail_job",
    "finish_job",
    "beat",
    "clear_dispatch",
    "record_dispatch",
    "requeue_job",
    "start_job",
    "update_job_progress",
]
