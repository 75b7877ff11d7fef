"""Celery tasks of the pipeline: thin wrappers that pass ids to the stages of :mod:`trials.pipeline`.

One uploaded series is ``mettrack.pipeline.segment`` (queue ``gpu``), which hands over to
``mettrack.pipeline.analyse`` (queue ``default``), following one ``ProcessingJob``; the pipeline sends
them by task name (``trials.pipeline.queue``). Arguments are ids; the acting user id and the correlation
id travel with them into the audit trail, the dispatch id makes a late delivery of an earlier dispatch
do nothing.

Error policy (every task):
    * :class:`trials.pipeline.errors.TransientError` (a lost database connection) is retried with
      exponential backoff (2 s, doubled each time, at most 5 minutes apart), 10 times (about 18 minutes,
      no jitter); then the job is failed, or, with the database still away, left to the lost-job sweep
      once it is back.
    * Invalid input (:data:`trials.pipeline.errors.PERMANENT_ERRORS`: an unusable image or model, data the
      rules cannot assess) fails the job once with its message; nothing is handed over after it.
    * ``acks_late`` + ``reject_on_worker_lost``: a worker killed mid-task leaves the message to be
      delivered again; the stages are idempotent, so the rerun duplicates nothing.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task
from celery.exceptions import Ignore
from django.conf import settings

from config.celery import app
from segmentation.scu import SendError
from trials.actions.pacs import pull_studies
from trials.logs import correlation_id_bound
from trials.pipeline.analysis import run_analysis_stage
from trials.pipeline.assessment import run_trial_reassessment
from trials.pipeline.delivery import DELIVER_TASK, DeliveryError, backoff_s, max_retries, send_delivery
from trials.pipeline.embedded import MAX_RETRIES
from trials.pipeline.errors import PERMANENT_ERRORS, TransientError, transient_errors
from trials.pipeline.jobs import fail_pipeline_job
from trials.pipeline.queue import (
    ANALYSE_TASK,
    DEFAULT_QUEUE,
    GPU_QUEUE,
    REASSESS_TRIAL_TASK,
    SEGMENT_TASK,
    SHADOW_TASK,
    SWEEP_LOST_TASK,
    SWEEP_STUCK_TASK,
    SWEEP_UNENQUEUED_TASK,
    TRAIN_MODEL_TASK,
    VALIDATE_MODEL_TASK,
    hand_over_to_analysis,
)
from trials.pipeline.segmentation import run_segmentation_stage
from trials.pipeline.shadow import run_shadow_stage
from trials.pipeline.sweeps import sweep_lost_jobs, sweep_stuck_jobs, sweep_unenqueued_jobs
from trials.pipeline.training import run_training
from trials.pipeline.validation import run_validation

logger = logging.getLogger(__name__)

#: Hard limit of a segmentation task (s); the periodic check fails a job running past its own limit.
SEGMENT_TIME_LIMIT_S: int = int(getattr(settings, "PIPELINE_JOB_TIME_LIMIT_S", 3600))


class PipelineTask(Task):
    """Base of the pipeline tasks: late acknowledgement, retries of transient errors only."""

    abstract = True
    acks_late = True
    reject_on_worker_lost = True
    autoretry_for = (TransientError,)
    max_retries = MAX_RETRIES
    retry_backoff = 2  # seconds, doubled at each retry
    retry_backoff_max = 300
    # No jitter: Celery's is "full" (0 to the backoff), which can spend every retry within seconds; a few
    # workers retrying together do not make a thundering herd.
    retry_jitter = False

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        """Retries exhausted or an unexpected error: the job must not stay "running" forever."""
        job_id = (kwargs or {}).get("job_id")
        if job_id is None:
            return
        try:
            fail_pipeline_job(job_id, exc)
        except Exception:  # the database may be the reason we are here
            logger.exception("could not mark job %s failed after %s", job_id, exc)


@app.task(base=PipelineTask, bind=True, name=SEGMENT_TASK, time_limit=SEGMENT_TIME_LIMIT_S)
def segment_series(
    self: Task, *, job_id: int, actor_id: int | None = None, correlation_id: str = "", dispatch_id: str = ""
) -> int:
    """Segment the job's series (queue gpu), then hand the stored segmentation over to the analysis."""
    with correlation_id_bound(correlation_id), transient_errors():
        try:
            run_id = run_segmentation_stage(
                job_id, dispatch_id=dispatch_id, actor_id=actor_id, correlation_id=correlation_id
            )
        except PERMANENT_ERRORS as exc:
            fail_pipeline_job(job_id, exc)
            raise Ignore() from exc  # acknowledged: there is nothing to analyse
    if run_id is None:
        raise Ignore()  # the job is finished, or this delivery belongs to an earlier dispatch
    hand_over_to_analysis(
        job_id, run_id, dispatch_id=dispatch_id, actor_id=actor_id, correlation_id=correlation_id
    )
    return run_id


@app.task(base=PipelineTask, bind=True, name=ANALYSE_TASK)
def analyse_series(
    self: Task,
    run_id: int,
    *,
    job_id: int,
    actor_id: int | None = None,
    correlation_id: str = "",
    dispatch_id: str = "",
) -> dict[str, Any] | None:
    """Match and store the run's lesions, re-assess the patient from this visit on, finish the job."""
    with correlation_id_bound(correlation_id), transient_errors():
        try:
            return run_analysis_stage(
                job_id, run_id, dispatch_id=dispatch_id, actor_id=actor_id, correlation_id=correlation_id
            )
        except PERMANENT_ERRORS as exc:
            fail_pipeline_job(job_id, exc)
            raise Ignore() from exc


@app.task(base=PipelineTask, bind=True, name=REASSESS_TRIAL_TASK)
def reassess_trial(
    self: Task, *, job_id: int, actor_id: int | None = None, correlation_id: str = "", dispatch_id: str = ""
) -> dict[str, Any] | None:
    """Re-assess every patient of a trial after its criteria settings changed (queue default)."""
    with correlation_id_bound(correlation_id), transient_errors():
        try:
            return run_trial_reassessment(
                job_id, dispatch_id=dispatch_id, actor_id=actor_id, correlation_id=correlation_id
            )
        except PERMANENT_ERRORS as exc:
            fail_pipeline_job(job_id, exc)
            raise Ignore() from exc


@app.task(base=PipelineTask, bind=True, name=VALIDATE_MODEL_TASK)
def validate_model(
    self: Task, *, job_id: int, actor_id: int | None = None, correlation_id: str = "", dispatch_id: str = ""
) -> dict[str, Any] | None:
    """Validate a model version on a trial's signed visits and store its report (queue gpu)."""
    with correlation_id_bound(correlation_id), transient_errors():
        try:
            return run_validation(
                job_id, dispatch_id=dispatch_id, actor_id=actor_id, correlation_id=correlation_id
            )
        except PERMANENT_ERRORS as exc:
            fail_pipeline_job(job_id, exc)
            raise Ignore() from exc


@app.task(base=PipelineTask, bind=True, name=TRAIN_MODEL_TASK)
def train_model(
    self: Task, *, job_id: int, actor_id: int | None = None, correlation_id: str = "", dispatch_id: str = ""
) -> dict[str, Any] | None:
    """Fine-tune a model on a training set and register it as a new version (queue gpu)."""
    with correlation_id_bound(correlation_id), transient_errors():
        try:
            return run_training(
                job_id, dispatch_id=dispatch_id, actor_id=actor_id, correlation_id=correlation_id
            )
        except PERMANENT_ERRORS as exc:
            fail_pipeline_job(job_id, exc)
            raise Ignore() from exc


@app.task(base=PipelineTask, bind=True, name=SHADOW_TASK, time_limit=SEGMENT_TIME_LIMIT_S)
def shadow_segment(
    self: Task, *, job_id: int, actor_id: int | None = None, correlation_id: str = "", dispatch_id: str = ""
) -> dict[str, Any] | None:
    """Segment a visit's series with the trial's shadow candidate, for comparison only (queue gpu); a
    failure fails this job and the shadow run, never the visit's own result."""
    with correlation_id_bound(correlation_id), transient_errors():
        try:
            return run_shadow_stage(
                job_id, dispatch_id=dispatch_id, actor_id=actor_id, correlation_id=correlation_id
            )
        except PERMANENT_ERRORS as exc:
            fail_pipeline_job(job_id, exc)
            raise Ignore() from exc


@app.task(base=PipelineTask, name=SWEEP_UNENQUEUED_TASK)
def sweep_unenqueued() -> list[int]:
    """Periodic: enqueue pipeline jobs that never reached the broker."""
    with transient_errors():
        return sweep_unenqueued_jobs()


@app.task(base=PipelineTask, name=SWEEP_STUCK_TASK)
def sweep_stuck() -> list[int]:
    """Periodic: fail jobs left running past their time limit."""
    with transient_errors():
        return sweep_stuck_jobs()


@app.task(base=PipelineTask, name=SWEEP_LOST_TASK)
def sweep_lost() -> list[int]:
    """Periodic: send again the running jobs whose worker stopped beating."""
    with transient_errors():
        return sweep_lost_jobs()


__all__ = [
    "DEFAULT_QUEUE",
    "GPU_QUEUE",
    "analyse_series",
    "reassess_trial",
    "segment_series",
    "shadow_segment",
    "sweep_lost",
    "sweep_stuck",
    "sweep_unenqueued",
    "train_model",
    "validate_model",
]


@app.task(bind=True, name=DELIVER_TASK, acks_late=True, reject_on_worker_lost=True, max_retries=None)
def deliver_results(self: Task, *, delivery_id: int) -> str:
    """Send a visit's results to a PACS destination; a failed attempt is retried with backoff
    (``PACS_SEND_BACKOFF_S`` doubled, ``PACS_SEND_MAX_RETRIES`` times), the last one marks it failed."""
    final = self.request.retries >= max_retries()
    with transient_errors():
        try:
            return send_delivery(delivery_id, final=final).state
        except DeliveryError as exc:
            if final:
                raise Ignore() from exc
            raise self.retry(exc=exc, countdown=backoff_s(self.request.retries)) from exc


@app.task(name="mettrack.pacs.pull", acks_late=True)
def pull_dicomweb() -> list[int]:
    """Periodic (``DICOMWEB_PULL_URL`` set): receive the trials' new studies from the DICOMweb source.
    A source that cannot be reached is logged and tried again at the next period."""
    url = str(getattr(settings, "DICOMWEB_PULL_URL", ""))
    if not url:
        return []
    try:
        return [study.pk for study in pull_studies(url)]
    except SendError as exc:
        logger.warning("DICOMweb pull failed: %s", exc)
        return []
