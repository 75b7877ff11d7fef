"""Handing jobs to the workers: saved first, sent by task name once the transaction commits.

A job row is saved in the transaction of the change that asks for it (an upload, a retry, a change of a
trial's criteria settings) and handed to the broker after commit (``transaction.on_commit``), so a worker
never receives the id of a job that does not exist. Tasks are sent by name (the Celery app's
``send_task`` through a signature): the pipeline does not import the worker's task module.

One uploaded series is ``mettrack.pipeline.segment`` (queue ``gpu``), which hands over to
``mettrack.pipeline.analyse`` (queue ``default``); a trial re-assessment is ``mettrack.assess.trial``
(queue ``default``); a model validation ``mettrack.models.validate`` and a fine-tuning
``mettrack.models.train`` (queue ``gpu``). Every send is a *dispatch* with an id of its own (the first task's id, recorded on
the job before the message leaves): a delivery of an earlier dispatch does nothing. A broker that cannot
be reached is not an error: the job stays ``queued`` and the periodic sweep (:mod:`.sweeps`) sends it
again once its message is found missing (never sent, or lost with a broker restart).

Embedded mode (no ``CELERY_BROKER_URL``, ``make demo``): the job runs in a background thread of this
process instead (:mod:`.embedded`), or in the request itself with ``PIPELINE_EMBEDDED_SYNC``.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from django.conf import settings

from config.celery import app
from trials.choices import JobKind
from trials.models import ImagingSeries, ModelVersion, ProcessingJob, TrainingSet, Trial, TrialModel
from trials.records.jobs import clear_dispatch, create_job, record_dispatch

logger = logging.getLogger(__name__)

#: Task names (``worker/tasks.py`` registers the tasks under them).
SEGMENT_TASK = "mettrack.pipeline.segment"
ANALYSE_TASK = "mettrack.pipeline.analyse"
REASSESS_TRIAL_TASK = "mettrack.assess.trial"
VALIDATE_MODEL_TASK = "mettrack.models.validate"
TRAIN_MODEL_TASK = "mettrack.models.train"
SHADOW_TASK = "mettrack.models.shadow"
SWEEP_UNENQUEUED_TASK = "mettrack.pipeline.sweep_unenqueued"
SWEEP_STUCK_TASK = "mettrack.pipeline.sweep_stuck"
SWEEP_LOST_TASK = "mettrack.pipeline.sweep_lost"

GPU_QUEUE: str = getattr(settings, "CELERY_GPU_QUEUE", "gpu")
DEFAULT_QUEUE: str = getattr(settings, "CELERY_TASK_DEFAULT_QUEUE", "default")


def embedded_mode() -> bool:
    """True when no broker is configured (jobs run in-process)."""
    return bool(getattr(settings, "CELERY_EMBEDDED", not getattr(settings, "CELERY_BROKER_URL", "")))


def _context(job: ProcessingJob, dispatch_id: str) -> dict[str, Any]:
    return {
        "job_id": job.pk,
        "actor_id": job.created_by_id,
        "correlation_id": job.correlation_id,
        "dispatch_id": dispatch_id,
    }


def job_signature(job: ProcessingJob, dispatch_id: str) -> Any:
    """The Celery signature of a job's first task, its task id the dispatch id: the segmentation (gpu) of
    a pipeline job, which hands over to the analysis itself (:func:`hand_over_to_analysis`), or the one
    trial task (default) of a re-assessment job."""
    if job.kind == JobKind.ASSESS:
        name, queue = REASSESS_TRIAL_TASK, DEFAULT_QUEUE
    elif job.kind == JobKind.VALIDATE:
        name, queue = VALIDATE_MODEL_TASK, GPU_QUEUE
    elif job.kind == JobKind.TRAIN:
        name, queue = TRAIN_MODEL_TASK, GPU_QUEUE
    elif job.kind == JobKind.SHADOW:
        name, queue = SHADOW_TASK, GPU_QUEUE
    else:
        name, queue = SEGMENT_TASK, GPU_QUEUE
    return app.signature(name, kwargs=_context(job, dispatch_id), immutable=True).set(
        task_id=dispatch_id, queue=queue
    )


def _send(job: ProcessingJob, dispatch_id: str) -> None:
    """Send a job to the broker, or run it in-process in embedded mode."""
    if embedded_mode():
        # Imported here: the embedded runner brings the network (torch, MONAI), which a web process that
        # hands its jobs to a broker never loads.
        from trials.pipeline import embedded

        if getattr(settings, "PIPELINE_EMBEDDED_SYNC", False):
            embedded.run_job_inline(job.pk)
        else:
            embedded.submit(job.pk)
        return
    job_signature(job, dispatch_id).apply_async(
        retry=True,
        # Quick retries only: an upload request must not hang while Redis is down; the sweep catches up.
        retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1.0},
    )


def enqueue_job(job: ProcessingJob) -> bool:
    """Give a saved job a new dispatch and hand it to Celery. A broker that cannot be reached is not an
    error: the job stays ``queued`` and :func:`trials.pipeline.sweeps.sweep_unenqueued_jobs` sends it
    again once its message is found missing.

    The dispatch id is recorded before the message is sent, so the worker, however fast, finds it; it is
    cleared again when the message could not be sent.

    Returns:
        True when the broker accepted the job (or it ran in-process in embedded mode).
    """
    dispatch_id = f"embedded-{uuid.uuid4().hex}" if embedded_mode() else str(uuid.uuid4())
    record_dispatch(job, dispatch_id)
    try:
        _send(job, dispatch_id)
    except Exception as exc:  # kombu/redis raise many types for an unreachable broker
        # Not sent: the job shows it (no dispatch), the sweep sends it after the grace period, and were
        # the message out after all, its delivery finds no dispatch of its own and does nothing.
        clear_dispatch(job, dispatch_id)
        logger.warning("job %s not enqueued (broker unavailable: %s); the sweep will enqueue it", job.pk, exc)
        return False
    return True


def hand_over_to_analysis(
    job_id: int, run_id: int, *, dispatch_id: str, actor_id: int | None, correlation_id: str
) -> bool:
    """Send the analysis of a stored segmentation (queue ``default``), as the same dispatch.

    Sent by the segmentation task itself rather than as a chain's callback: when the broker is away at
    that moment the job stays running without a heartbeat, and the lost-job sweep sends it again once the
    broker is back (the stored mask is reused), instead of failing the job for good.

    Returns:
        True when the broker accepted the analysis.
    """
    context = {
        "job_id": job_id,
        "actor_id": actor_id,
        "correlation_id": correlation_id,
        "dispatch_id": dispatch_id,
    }
    try:
        app.signature(ANALYSE_TASK, args=(run_id,), kwargs=context).set(queue=DEFAULT_QUEUE).apply_async(
            retry=True,
            retry_policy={"max_retries": 5, "interval_start": 0.5, "interval_step": 1.0, "interval_max": 4.0},
        )
    except Exception as exc:  # kombu/redis raise many types for an unreachable broker
        logger.warning(
            "job %s: analysis not handed over (%s); the lost-job sweep will send the job again", job_id, exc
        )
        return False
    return True


def broker_has_message(dispatch_id: str, *, waiting_only: bool = False) -> bool | None:
    """Whether a dispatch's message is still in the broker: waiting in a queue, or (unless
    ``waiting_only``) taken by a worker and not yet acknowledged. None when that cannot be told (no Redis
    broker, or it does not answer).

    Read with one LRANGE per queue and one HVALS of kombu's ``unacked`` hash: queued jobs are few.
    """
    url = getattr(settings, "CELERY_BROKER_URL", "")
    if embedded_mode() or not url.startswith(("redis://", "rediss://")):
        return None
    import redis

    needle = dispatch_id.encode()
    try:
        client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)
        for queue in (GPU_QUEUE, DEFAULT_QUEUE):
            if any(needle in message for message in client.lrange(queue, 0, -1)):
                return True
        if waiting_only:
            return False
        return any(needle in message for message in client.hvals("unacked"))
    except redis.RedisError:
        return None


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


def create_validation_job(
    version: ModelVersion, trial: Trial, *, enqueue: bool = True, actor: Any | None, correlation_id: str = ""
) -> ProcessingJob:
    """Save a queued job validating a model version on a trial's signed visits (queue ``gpu``)."""
    return create_job(
        JobKind.VALIDATE,
        obj=trial,
        params={"trial_id": trial.pk, "model_version_id": version.pk},
        time_limit_s=_time_limit_s(),
        enqueue=enqueue_job if enqueue else None,
        actor=actor,
        reason=f"validation of {version} on the signed visits of {trial.code}",
        correlation_id=correlation_id,
    )


def create_training_job(
    training_set: TrainingSet,
    params: dict[str, Any],
    *,
    enqueue: bool = True,
    actor: Any | None,
    correlation_id: str = "",
) -> ProcessingJob:
    """Save a queued job fine-tuning a model on a training set (queue ``gpu``); ``params`` are its ids
    and counts (see :func:`trials.actions.training.start_fine_tuning`)."""
    return create_job(
        JobKind.TRAIN,
        obj=training_set,
        params=params,
        time_limit_s=_time_limit_s(),
        enqueue=enqueue_job if enqueue else None,
        actor=actor,
        reason=f"{params['method']} fine-tuning on training set {training_set.pk}",
        correlation_id=correlation_id,
    )


def create_shadow_job(
    series: ImagingSeries,
    trial_model: TrialModel,
    *,
    enqueue: bool = True,
    actor: Any | None,
    correlation_id: str = "",
) -> ProcessingJob:
    """Save a queued job segmenting a series with the trial's shadow candidate (queue ``gpu``): a job of
    its own, so the visit's pipeline job never waits for it nor fails with it."""
    return create_job(
        JobKind.SHADOW,
        obj=series,
        params={
            "series_id": series.pk,
            "trial_model_id": trial_model.pk,
            "model_version_id": trial_model.model_version_id,
        },
        time_limit_s=_time_limit_s(),
        enqueue=enqueue_job if enqueue else None,
        actor=actor,
        reason=f"shadow segmentation by the candidate {trial_model.model_version}",
        correlation_id=correlation_id,
    )


__all__ = [
    "ANALYSE_TASK",
    "DEFAULT_QUEUE",
    "GPU_QUEUE",
    "REASSESS_TRIAL_TASK",
    "SEGMENT_TASK",
    "SHADOW_TASK",
    "SWEEP_STUCK_TASK",
    "SWEEP_LOST_TASK",
    "SWEEP_UNENQUEUED_TASK",
    "TRAIN_MODEL_TASK",
    "VALIDATE_MODEL_TASK",
    "broker_has_message",
    "create_pipeline_job",
    "create_reassessment_job",
    "create_shadow_job",
    "create_training_job",
    "create_validation_job",
    "embedded_mode",
    "enqueue_job",
    "hand_over_to_analysis",
    "job_signature",
]
