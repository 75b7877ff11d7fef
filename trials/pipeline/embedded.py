"""Jobs run in this process: embedded mode (no broker, ``make demo``), ``manage.py demo_pipeline`` and
``manage.py import_series``, with the same error policy as the Celery tasks.

Transient errors (a lost database connection) are retried with exponential backoff (1, 2, 4... s); a
permanent error (invalid input, an unusable model) fails the job with its message; any other error
fails the job too (it must not stay "running" forever) and is raised.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django.db import close_old_connections, connection

from trials.choices import JobKind
from trials.models import ProcessingJob
from trials.pipeline.analysis import run_analysis_stage
from trials.pipeline.assessment import run_trial_reassessment
from trials.pipeline.errors import PERMANENT_ERRORS, TransientError, transient_errors
from trials.pipeline.jobs import fail_pipeline_job
from trials.pipeline.segmentation import run_segmentation_stage
from trials.pipeline.shadow import run_shadow_stage
from trials.pipeline.training import run_training
from trials.pipeline.validation import run_validation

logger = logging.getLogger(__name__)

#: Retries of a transient error, as the tasks' ``max_retries`` (with backoff up to 5 min, about 20 min
#: in all: a database restart or failover is ridden out, an outage longer is left to the lost-job sweep).
MAX_RETRIES = 10


def run_job_inline(job_id: int, *, max_retries: int = MAX_RETRIES) -> dict[str, Any] | None:
    """Run a job's stages in this process (segment then analyse, or the trial re-assessment).

    Returns:
        The job's result, or None when it failed or was already finished.
    """
    # The dispatch this run is: if a sweep sends the job again meanwhile, this run stops at its next stage.
    kind, dispatch_id = ProcessingJob.objects.values_list("kind", "celery_task_id").get(pk=job_id)
    for attempt in range(max_retries + 1):
        try:
            if attempt:
                close_old_connections()  # drop a connection the transient error left broken
            with transient_errors():
                try:
                    if kind == JobKind.ASSESS:
                        return run_trial_reassessment(job_id, dispatch_id=dispatch_id)
                    if kind == JobKind.VALIDATE:
                        return run_validation(job_id, dispatch_id=dispatch_id)
                    if kind == JobKind.TRAIN:
                        return run_training(job_id, dispatch_id=dispatch_id)
                    if kind == JobKind.SHADOW:
                        return run_shadow_stage(job_id, dispatch_id=dispatch_id)
                    run_id = run_segmentation_stage(job_id, dispatch_id=dispatch_id)
                    return run_analysis_stage(job_id, run_id, dispatch_id=dispatch_id)
                except PERMANENT_ERRORS as exc:
                    fail_pipeline_job(job_id, exc)
                    return None
        except TransientError as exc:
            if attempt == max_retries:
                fail_pipeline_job(job_id, exc)
                raise
            time.sleep(min(2.0**attempt, 30.0))
        except Exception as exc:  # a bug: the job must not stay "running" forever
            fail_pipeline_job(job_id, exc)
            raise
    return None


_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _executor_thread() -> ThreadPoolExecutor:
    """One background thread: the embedded counterpart of a worker with concurrency 1."""
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mettrack-embedded-worker")
        return _executor


def _run_in_thread(job_id: int) -> None:
    try:
        run_job_inline(job_id)
    except Exception:
        logger.exception("embedded pipeline job %s failed", job_id)
    finally:
        connection.close()  # this thread's connection; Django opens one per thread


def submit(job_id: int) -> None:
    """Run a job in the background thread of this process (after the jobs submitted before it)."""
    _executor_thread().submit(_run_in_thread, job_id)


__all__ = ["MAX_RETRIES", "run_job_inline", "submit"]
