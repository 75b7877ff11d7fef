"""Handing jobs to the workers: saved first, sent by task name once the transaction commits.

A job row is saved in the transaction of the change that asks for it (an upload, a retry, a change of a
trial's criteria settings) and handed to the broker after commit (``transaction.on_commit``), so a worker
never receives the id of a job that does not exist. Tasks are sent by name (the Celery app's
``send_task`` through a signature): the pipeline does not import the worker's task module.

One uploaded series is the chain ``mettrack.pipeline.segment`` (queue ``gpu``) -> ``mettrack.pipeline.
analyse`` (queue ``default``); a trial re-assessment is ``mettrack.assess.trial`` (queue ``default``).
A broker that cannot be reached is not an error: the job stays ``queued`` without a task id and the
periodic sweep (:mod:`.sweeps`) sends it later.

Embedded mode (no ``CELERY_BROKER_URL``, ``make demo``): the job runs in a background thread of this
process instead (:mod:`.embedded`), or in the request itself with ``PIPELINE_EMBEDDED_SYNC``.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from celery import chain
from django.conf import settings

from config.celery import app
from trials.choices import JobKind
from trials.models import ImagingSeries, ProcessingJob, Trial
from trials.records.jobs import create_job, set_job_task_id

logger = logging.getLogger(__name__)

#: Task names (``worker/tasks.py`` registers the tasks under them).
SEGMENT_TASK = "mettrack.pipeline.segment"
ANALYSE_TASK = "mettrack.pipeline.analyse"
REASSESS_TRIAL_TASK = "mettrack.assess.trial"
SWEEP_UNENQUEUED_TASK = "mettrack.pipeline.sweep_unenqueued"
SWEEP_STUCK_TASK = "mettrack.pipeline.sweep_stuck"

GPU_QUEUE: str = getattr(settings, "CELERY_GPU_QUEUE", "gpu")
DEFAULT_QUEUE: str = getattr(settings, "CELERY_TASK_DEFAULT_QUEUE", "default")


def embedded_mode() -> bool:
    """True when no broker is configured (jobs run in-process)."""
    return bool(getattr(settings, "CELERY_EMBEDDED", not getattr(settings, "CELERY_BROKER_URL", "")))


def job_signature(job: ProcessingJob, task_id: str) -> Any:
    """The Celery signature of a job, its first task carrying ``task_id``: for a pipeline job the chain
    segment (gpu) -> analyse (default), for a re-assessment job the one trial task (default)."""
    context = {"job_id": job.pk, "actor_id": job.created_by_id, "correlation_id": job.correlation_id}
    if job.kind == JobKind.ASSESS:
        return app.signature(REASSESS_TRIAL_TASK, kwargs=context, immutable=True).set(
            task_id=task_id, queue=DEFAULT_QUEUE
        )
    return chain(
        app.signature(SEGMENT_TASK, kwargs=context, immutable=True).set(task_id=task_id, queue=GPU_QUEUE),
        app.signature(ANALYSE_TASK, kwargs=context).set(queue=DEFAULT_QUEUE),
    )


def _send(job: ProcessingJob) -> str:
    """Send a job to the broker, or run it in-process in embedded mode; returns its first task's id."""
    if embedded_mode():
        # Imported here: the embedded runner brings the network (torch, MONAI), which a web process that
        # hands its jobs to a broker never loads.
        from trials.pipeline import embedded

        task_id = f"embedded-{uuid.uuid4().hex}"
        if getattr(settings, "PIPELINE_EMBEDDED_SYNC", False):
            embedded.run_job_inline(job.pk)
        else:
            embedded.submit(job.pk)
        return task_id
    task_id = str(uuid.uuid4())
    job_signature(job, task_id).apply_async(
        retry=True,
        # Quick retries only: an upload request must not hang while Redis is down; the sweep catches up.
        retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1.0},
    )
    return task_id


def enqueue_job(job: ProcessingJob) -> bool:
    """Hand a saved job to Celery and record its task id. A broker that cannot be reached is not an error.

    The job stays ``queued`` without a task id and :func:`trials.pipeline.sweeps.sweep_unenqueued_jobs`
    sends it later.

    Returns:
        True when the broker accepted the job (or it ran in-process in embedded mode).
    """
    try:
        task_id = _send(job)
    except Exception as exc:  # kombu/redis raise many types for an unreachable broker
        logger.warning("job %s not enqueued (broker unavailable: %s); the sweep will enqueue it", job.pk, exc)
        return False
    if task_id:
        set_job_task_id(job, task_id)
    return True


def _time_limit_s() -> int:
    return int(getattr(settings, "PIPELINE_JOB_TIME_LIMIT_S", 3600))


def create_pipeline_job(
    series: ImagingSeries, *, enqueue: bool = True, actor: Any | None, correlation_id: str = ""
) -> ProcessingJob:
    """Save a queued pipeline job for a stored series; it is handed to the broker after commit."""
    return create_job(
        JobKind.PIPELINE,
        obj=series,
        params={"series_id": series.pk},
        time_limit_s=_time_limit_s(),
        enqueue=enqueue_job if enqueue else None,
        actor=actor,
        reason="segmentation, lesion tracking and assessment of a new series",
        correlation_id=correlation_id,
    )


def create_reassessment_job(
    trial: Trial, *, enqueue: bool = True, actor: Any | None, correlation_id: str = ""
) -> ProcessingJob:
    """Save a queued job re-assessing every patient of ``trial``; handed to the broker after commit."""
    return create_job(
        JobKind.ASSESS,
        obj=trial,
        params={"trial_id": trial.pk},
        time_limit_s=_time_limit_s(),
        enqueue=enqueue_job if enqueue else None,
        actor=actor,
        reason="the trial's response-criteria settings changed: every patient is re-assessed",
        correlation_id=correlation_id,
    )


__all__ = [
    "ANALYSE_TASK",
    "DEFAULT_QUEUE",
    "GPU_QUEUE",
    "REASSESS_TRIAL_TASK",
    "SEGMENT_TASK",
    "SWEEP_STUCK_TASK",
    "SWEEP_UNENQUEUED_TASK",
    "create_pipeline_job",
    "create_reassessment_job",
    "embedded_mode",
    "enqueue_job",
    "job_signature",
]
