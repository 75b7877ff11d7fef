"""Celery tasks of the pipeline: thin wrappers that pass ids to :mod:`trials.pipeline`.

One uploaded series is one chain: ``mettrack.pipeline.segment`` (queue ``gpu``) then
``mettrack.pipeline.analyse`` (queue ``default``), following one ``ProcessingJob``. Arguments are ids; the
acting user id and the correlation id travel with them and land in the audit trail.

Error policy (every task):
    * :class:`trials.pipeline.TransientError` (a lost database connection) is retried with exponential
      backoff and jitter, at most 5 times; then the job is failed.
    * Invalid input (:data:`trials.pipeline.PERMANENT_ERRORS`: an unusable image or model, data the rules
      cannot assess) fails the job once with its message; the chain stops there.
    * ``acks_late`` + ``reject_on_worker_lost``: a worker killed mid-task leaves the message to be
      delivered again; the stages are idempotent, so the rerun duplicates nothing.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from celery import Task, chain
from celery.exceptions import Ignore
from django.conf import settings
from django.db import close_old_connections, connection

from trials import pipeline
from trials.choices import JobKind
from trials.models import ProcessingJob
from trials.pipeline import PERMANENT_ERRORS, TransientError, transient_errors
from worker.celery import app

logger = logging.getLogger(__name__)

GPU_QUEUE: str = getattr(settings, "CELERY_GPU_QUEUE", "gpu")
DEFAULT_QUEUE: str = getattr(settings, "CELERY_TASK_DEFAULT_QUEUE", "default")
#: Hard limit of a segmentation task (s); the periodic check fails a job running past its own limit.
SEGMENT_TIME_LIMIT_S: int = int(getattr(settings, "PIPELINE_JOB_TIME_LIMIT_S", 3600))
MAX_RETRIES = 5


class PipelineTask(Task):
    """Base of the pipeline tasks: late acknowledgement, retries of transient errors only."""

    abstract = True
    acks_late = True
    reject_on_worker_lost = True
    autoretry_for = (TransientError,)
    max_retries = MAX_RETRIES
    retry_backoff = 2  # seconds, doubled at each retry
    retry_backoff_max = 120
    retry_jitter = True

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        """Retries exhausted or an unexpected error: the job must not stay "running" forever."""
        job_id = (kwargs or {}).get("job_id")
        if job_id is None:
            return
        try:
            pipeline.fail_pipeline_job(job_id, exc)
        except Exception:  # the database may be the reason we are here
            logger.exception("could not mark job %s failed after %s", job_id, exc)


@app.task(base=PipelineTask, bind=True, name="mettrack.pipeline.segment", time_limit=SEGMENT_TIME_LIMIT_S)
def segment_series(self: Task, *, job_id: int, actor_id: int | None = None, correlation_id: str = "") -> int:
    """Segment the job's series (queue gpu); returns the SegmentationRun id for the analysis task."""
    with transient_errors():
        try:
            run_id = pipeline.run_segmentation_stage(
                job_id, actor_id=actor_id, correlation_id=correlation_id, celery_task_id=self.request.id or ""
            )
        except PERMANENT_ERRORS as exc:
            pipeline.fail_pipeline_job(job_id, exc)
            raise Ignore() from exc  # acknowledged, and the chain stops: there is nothing to analyse
    if run_id is None:
        raise Ignore()  # the job was already finished (a duplicate delivery)
    return run_id


@app.task(base=PipelineTask, bind=True, name="mettrack.pipeline.analyse")
def analyse_series(
    self: Task, run_id: int, *, job_id: int, actor_id: int | None = None, correlation_id: str = ""
) -> dict[str, Any] | None:
    """Match and store the run's lesions, re-assess the patient from this visit on, finish the job."""
    with transient_errors():
        try:
            return pipeline.run_analysis_stage(
                job_id,
                run_id,
                actor_id=actor_id,
                correlation_id=correlation_id,
                celery_task_id=self.request.id or "",
            )
        except PERMANENT_ERRORS as exc:
            pipeline.fail_pipeline_job(job_id, exc)
            raise Ignore() from exc


@app.task(base=PipelineTask, bind=True, name="mettrack.assess.trial")
def reassess_trial(
    self: Task, *, job_id: int, actor_id: int | None = None, correlation_id: str = ""
) -> dict[str, Any] | None:
    """Re-assess every patient of a trial after its criteria settings changed (queue default)."""
    with transient_errors():
        try:
            return pipeline.run_trial_reassessment(
                job_id, actor_id=actor_id, correlation_id=correlation_id, celery_task_id=self.request.id or ""
            )
        except PERMANENT_ERRORS as exc:
            pipeline.fail_pipeline_job(job_id, exc)
            raise Ignore() from exc


@app.task(base=PipelineTask, name="mettrack.pipeline.sweep_unenqueued")
def sweep_unenqueued() -> list[int]:
    """Periodic: enqueue pipeline jobs that never reached the broker."""
    with transient_errors():
        return pipeline.sweep_unenqueued_jobs()


@app.task(base=PipelineTask, name="mettrack.pipeline.sweep_stuck")
def sweep_stuck() -> list[int]:
    """Periodic: fail jobs left running past their time limit."""
    with transient_errors():
        return pipeline.sweep_stuck_jobs()


# ----------------------------------------------------------------------------------------- enqueue


def pipeline_signature(job: ProcessingJob, segment_task_id: str) -> Any:
    """The chain segment (gpu) -> analyse (default) of one job."""
    context = {"job_id": job.pk, "actor_id": job.created_by_id, "correlation_id": job.correlation_id}
    return chain(
        segment_series.si(**context).set(task_id=segment_task_id, queue=GPU_QUEUE),
        analyse_series.s(**context).set(queue=DEFAULT_QUEUE),
    )


def embedded_mode() -> bool:
    """True when no broker is configured (tasks run in-process)."""
    return bool(getattr(settings, "CELERY_EMBEDDED", not getattr(settings, "CELERY_BROKER_URL", "")))


def enqueue_pipeline(job: ProcessingJob) -> str:
    """Send a job's chain to the broker, or run it in-process in embedded mode.

    Returns:
        The Celery task id of the first task (``embedded-...`` in embedded mode).

    Raises:
        Whatever kombu raises when the broker cannot be reached after a few quick retries; the caller
        (:func:`trials.pipeline.enqueue_pipeline_job`) leaves the job for the periodic sweep.
    """
    if embedded_mode():
        task_id = f"embedded-{uuid.uuid4().hex}"
        if getattr(settings, "PIPELINE_EMBEDDED_SYNC", False):
            run_pipeline_inline(job.pk)
        else:
            _embedded_executor().submit(_run_in_thread, job.pk)
        return task_id
    task_id = str(uuid.uuid4())
    if job.kind == JobKind.ASSESS:
        signature = reassess_trial.si(
            job_id=job.pk, actor_id=job.created_by_id, correlation_id=job.correlation_id
        ).set(task_id=task_id, queue=DEFAULT_QUEUE)
    else:
        signature = pipeline_signature(job, task_id)
    signature.apply_async(
        retry=True,
        # Quick retries only: an upload request must not hang while Redis is down; the sweep catches up.
        retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1.0},
    )
    return task_id


# ---------------------------------------------------------------------------------- embedded mode

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _embedded_executor() -> ThreadPoolExecutor:
    """One background thread: the embedded counterpart of a worker with concurrency 1."""
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mettrack-embedded-worker")
        return _executor


def _run_in_thread(job_id: int) -> None:
    try:
        run_pipeline_inline(job_id)
    except Exception:
        logger.exception("embedded pipeline job %s failed", job_id)
    finally:
        connection.close()  # this thread's connection; Django opens one per thread


def run_pipeline_inline(job_id: int, *, max_retries: int = MAX_RETRIES) -> dict[str, Any] | None:
    """Run a pipeline job's two stages in this process, with the tasks' error policy.

    Used by embedded mode, ``manage.py demo_pipeline`` and the benchmark. Transient errors are retried
    with exponential backoff (1, 2, 4... s); invalid input fails the job with its message.

    Returns:
        The job's result, or None when it failed or was already finished.
    """
    kind = ProcessingJob.objects.values_list("kind", flat=True).get(pk=job_id)
    for attempt in range(max_retries + 1):
        try:
            if attempt:
                close_old_connections()  # drop a connection the transient error left broken
            with transient_errors():
                try:
                    if kind == JobKind.ASSESS:
                        return pipeline.run_trial_reassessment(job_id)
                    run_id = pipeline.run_segmentation_stage(job_id)
                    return pipeline.run_analysis_stage(job_id, run_id)
                except PERMANENT_ERRORS as exc:
                    pipeline.fail_pipeline_job(job_id, exc)
                    return None
        except TransientError as exc:
            if attempt == max_retries:
                pipeline.fail_pipeline_job(job_id, exc)
                raise
            time.sleep(min(2.0**attempt, 30.0))
        except Exception as exc:  # a bug: the job must not stay "running" forever
            pipeline.fail_pipeline_job(job_id, exc)
            raise
    return None


def wait_for_embedded_jobs() -> None:
    """Block until the embedded worker thread has run every job submitted so far."""
    if _executor is None:
        return
    marker: Future[None] = _executor.submit(lambda: None)
    marker.result()


__all__ = [
    "analyse_series",
    "enqueue_pipeline",
    "pipeline_signature",
    "reassess_trial",
    "run_pipeline_inline",
    "segment_series",
    "sweep_stuck",
    "sweep_unenqueued",
    "wait_for_embedded_jobs",
]
