"""Actions on background jobs: retry a failed one (its stored outputs are reused), run or dispatch one."""

from __future__ import annotations

from typing import Any

from django.db import transaction

from trials.choices import JobState, RunStatus
from trials.exceptions import InvalidStateError
from trials.models import ProcessingJob
from trials.pipeline.jobs import job_runs
from trials.pipeline.queue import embedded_mode, enqueue_job
from trials.records.imaging import update_segmentation_run
from trials.records.jobs import requeue_job


@transaction.atomic
def retry_job(
    job: ProcessingJob, *, actor: Any | None, reason: str = "", correlation_id: str = ""
) -> ProcessingJob:
    """Put a failed job back in the queue (enqueued on commit); its earlier outputs are reused.

    A pipeline job's failed segmentation runs go back to ``running`` with it, so that the stages pick
    them up again (a stored mask is not computed twice).

    Raises:
        InvalidStateError: The job has not failed.
    """
    job = ProcessingJob.objects.select_for_update().get(pk=job.pk)
    if job.state != JobState.FAILED:
        raise InvalidStateError(f"Job {job.pk} is {job.state}; only a failed job can be retried.")
    correlation_id = correlation_id or job.correlation_id
    for run in job_runs(job, RunStatus.FAILED):
        update_segmentation_run(
            run, status=RunStatus.RUNNING, error="", actor=actor, correlation_id=correlation_id
        )
    job = requeue_job(
        job, action="retry", actor=actor, reason=reason or "retry", correlation_id=correlation_id
    )
    transaction.on_commit(lambda: enqueue_job(job))
    return job


def run_job(job: ProcessingJob) -> dict[str, Any] | None:
    """Run a queued job in this process now, with the workers' error policy (management commands that
    work without a broker, e.g. ``demo_pipeline``).

    Returns:
        The job's result, or None when it failed or was already finished.
    """
    # Imported here: the in-process runner brings the network (torch, MONAI), which a web process that
    # hands its jobs to a broker never loads (this module is imported by the API for retry_job).
    from trials.pipeline.embedded import run_job_inline

    return run_job_inline(job.pk)


def dispatch_job(job: ProcessingJob) -> None:
    """Hand a queued job to the workers, or, without a broker (embedded mode), run it here before
    returning (``manage.py import_series``)."""
    if embedded_mode():
        run_job(job)
    else:
        enqueue_job(job)


__all__ = ["dispatch_job", "retry_job", "run_job"]
