"""Job reliability pieces in-process: sweeps, task policy, error mapping, ``manage.py import_series``."""

from __future__ import annotations

import datetime as dt
import io
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import OperationalError
from django.utils import timezone

from tests.pipeline.conftest import SyntheticPatient
from trials import exceptions
from trials.actions import imaging, jobs
from trials.choices import JobKind, JobState
from trials.models import AuditEvent, ImagingSeries, ProcessingJob
from trials.pipeline import errors, sweeps
from trials.pipeline import segmentation as segmentation_stage
from trials.pipeline.embedded import run_job_inline
from trials.records import jobs as job_records


@pytest.fixture
def embedded(settings: Any, tiny_model_dir: Path, media_root: Path) -> None:
    settings.CELERY_EMBEDDED = True
    settings.PIPELINE_EMBEDDED_SYNC = True
    settings.PIPELINE_MODEL_DIR = str(tiny_model_dir)


def test_task_policy_is_late_ack_retry_transient_only() -> None:
    from config.celery import app
    from worker.tasks import GPU_QUEUE, analyse_series, segment_series

    for task in (segment_series, analyse_series):
        assert task.acks_late and task.reject_on_worker_lost
        assert task.autoretry_for == (errors.TransientError,)
        assert task.max_retries == 10 and task.retry_backoff and not task.retry_jitter
        # A database outage of minutes (a restart, a failover) is ridden out: the backoff doubles up to
        # 5 minutes apart, about 18 minutes in all (jitter off: with full jitter the total could be seconds).
        waits = [min(task.retry_backoff * 2**k, task.retry_backoff_max) for k in range(task.max_retries)]
        assert sum(waits) >= 15 * 60
    assert app.conf.worker_prefetch_multiplier == 1
    assert app.amqp.router.route({}, "mettrack.pipeline.segment")["queue"].name == GPU_QUEUE


def test_database_connection_errors_become_transient() -> None:
    with pytest.raises(errors.TransientError, match="database unavailable"), errors.transient_errors():
        raise OperationalError("server closed the connection unexpectedly")
    # Anything else passes through unchanged.
    with pytest.raises(ValueError, match="bad value"), errors.transient_errors():
        raise ValueError("bad value")


@pytest.mark.django_db
def test_stuck_running_job_past_its_limit_is_failed_and_audited(pipeline_patient: Any) -> None:
    old = job_records.create_job(JobKind.PIPELINE, obj=pipeline_patient, time_limit_s=600, actor=None)
    recent = job_records.create_job(JobKind.PIPELINE, obj=pipeline_patient, time_limit_s=600, actor=None)
    job_records.start_job(old, stage="segmentation")
    job_records.start_job(recent, stage="segmentation")
    ProcessingJob.objects.filter(pk=old.pk).update(started_at=timezone.now() - dt.timedelta(seconds=601))

    assert sweeps.sweep_stuck_jobs() == [old.pk]

    old.refresh_from_db()
    recent.refresh_from_db()
    assert (
        old.state == JobState.FAILED and "time limit of 10 min" in old.error and "segmentation" in old.error
    )
    assert recent.state == JobState.RUNNING
    assert AuditEvent.objects.filter(
        object_type="trials.processingjob", object_id=str(old.pk), action="fail"
    ).exists()
    assert sweeps.sweep_stuck_jobs() == []  # nothing left to fail


@pytest.mark.django_db
def test_sweep_enqueues_only_jobs_that_never_reached_the_broker(
    pipeline_patient: Any, synthetic_patient: SyntheticPatient, embedded: None, settings: Any
) -> None:
    settings.PIPELINE_ENQUEUE_GRACE_S = 60
    visit = pipeline_patient.timepoints.get(visit_label="BASELINE")
    upload = imaging.upload_series(visit, synthetic_patient.zips[0], enqueue=False, actor=None)
    assert upload.job.celery_task_id == ""
    assert sweeps.sweep_unenqueued_jobs() == []  # younger than the grace period: its own enqueue may come
    ProcessingJob.objects.filter(pk=upload.job.pk).update(
        enqueued_at=timezone.now() - dt.timedelta(seconds=61)
    )

    assert sweeps.sweep_unenqueued_jobs() == [upload.job.pk]

    upload.job.refresh_from_db()
    assert upload.job.state == JobState.SUCCEEDED and upload.job.celery_task_id.startswith("embedded-")
    assert (
        AuditEvent.objects.filter(object_id=str(upload.job.pk), reason__contains="periodic sweep").count()
        == 1
    )
    assert sweeps.sweep_unenqueued_jobs() == []


@pytest.mark.django_db
def test_failed_job_can_be_retried_and_reuses_the_stored_series(
    pipeline_patient: Any,
    synthetic_patient: SyntheticPatient,
    embedded: None,
    settings: Any,
    tmp_path: Path,
    tiny_model_dir: Path,
    django_capture_on_commit_callbacks: Any,
) -> None:
    settings.PIPELINE_MODEL_DIR = str(tmp_path / "no-model-here")
    visit = pipeline_patient.timepoints.get(visit_label="BASELINE")
    upload = imaging.upload_series(visit, synthetic_patient.zips[0], enqueue=False, actor=None)
    run_job_inline(upload.job.pk)
    job = ProcessingJob.objects.get(pk=upload.job.pk)
    assert job.state == JobState.FAILED and "config.json" in job.error and job.attempts == 1

    settings.PIPELINE_MODEL_DIR = str(tiny_model_dir)
    with django_capture_on_commit_callbacks(execute=True):
        jobs.retry_job(job, actor=None, reason="model installed")
    job.refresh_from_db()
    assert job.state == JobState.SUCCEEDED and job.attempts == 2 and job.error == ""
    assert ImagingSeries.objects.count() == 1
    with pytest.raises(exceptions.InvalidStateError, match="only a failed job"):
        jobs.retry_job(job, actor=None)


@pytest.mark.django_db
def test_import_series_command_runs_the_pipeline_in_embedded_mode(
    pipeline_patient: Any, synthetic_patient: SyntheticPatient, embedded: None, tmp_path: Path
) -> None:
    call_command("import_series", "SUBJ-001", "BASELINE", str(synthetic_patient.zips[0]))
    series = ImagingSeries.objects.get()
    job = ProcessingJob.objects.get(object_id=series.pk)
    assert job.state == JobState.SUCCEEDED and series.timepoint.visit_label == "BASELINE"

    with pytest.raises(CommandError, match="already stored"):
        call_command("import_series", "SUBJ-001", "FU1", str(synthetic_patient.zips[0]))
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    with pytest.raises(CommandError, match="DICOM"):
        call_command("import_series", "SUBJ-001", "FU1", str(bad))
    with pytest.raises(CommandError, match="No patient"):
        call_command("import_series", "NOBODY", "FU1", str(bad))
    with pytest.raises(CommandError, match="no visit"):
        call_command("import_series", "SUBJ-001", "FU9", str(bad))
    assert ImagingSeries.objects.count() == 1


@pytest.mark.django_db
def test_a_job_failed_by_the_stuck_sweep_resumes_when_its_task_is_delivered_again(
    pipeline_patient: Any, synthetic_patient: SyntheticPatient, embedded: None
) -> None:
    visit = pipeline_patient.timepoints.get(visit_label="BASELINE")
    upload = imaging.upload_series(visit, synthetic_patient.zips[0], enqueue=False, actor=None)
    job_records.start_job(upload.job, stage="segmentation")  # the worker that took it was lost
    ProcessingJob.objects.filter(pk=upload.job.pk).update(started_at=timezone.now() - dt.timedelta(hours=2))
    assert sweeps.sweep_stuck_jobs() == [upload.job.pk]

    run_job_inline(upload.job.pk)  # the broker delivers the message again

    job = ProcessingJob.objects.get(pk=upload.job.pk)
    assert job.state == JobState.SUCCEEDED and job.attempts == 2 and job.error == ""
    # A job that failed on its input is not rerun by a late duplicate delivery.
    job_records.fail_job(
        job.__class__.objects.create(kind=JobKind.PIPELINE, params=job.params), error="bad image"
    )
    failed = ProcessingJob.objects.get(error="bad image")
    assert segmentation_stage.run_segmentation_stage(failed.pk) is None
    assert ProcessingJob.objects.get(pk=failed.pk).attempts == 0


@pytest.mark.slow
@pytest.mark.django_db
def test_demo_pipeline_processes_every_visit_once(embedded: None) -> None:
    from tests.factories import make_patient, make_timepoint, make_trial

    trial = make_trial("DEMO-T")
    patient = make_patient(trial, subject_id="DEMO-001")
    make_timepoint(patient, visit_label="BASELINE", scan_date=dt.date(2025, 1, 6), is_baseline=True)
    make_timepoint(patient, visit_label="FU1", scan_date=dt.date(2025, 3, 3))

    out = io.StringIO()
    call_command("demo_pipeline", trial="DEMO-T", stdout=out)

    assert "BASELINE" in out.getvalue() and "succeeded" in out.getvalue()
    jobs = ProcessingJob.objects.filter(kind=JobKind.PIPELINE)
    assert jobs.count() == 2 and set(jobs.values_list("state", flat=True)) == {JobState.SUCCEEDED}
    assert set(ImagingSeries.objects.values_list("timepoint__visit_label", flat=True)) == {"BASELINE", "FU1"}
    assert set(ImagingSeries.objects.values_list("source", flat=True)) == {"synthetic"}
    call_command("demo_pipeline", trial="DEMO-T", stdout=io.StringIO())  # nothing left to do
    assert ImagingSeries.objects.count() == 2 and jobs.count() == 2


def test_every_gpu_task_is_routed_to_the_gpu_queue_by_its_name() -> None:
    """The pipeline names each task's queue when it sends it; a task sent without one (by hand, from a
    shell or another tool) must still reach the GPU workers through the app's routes."""
    from config.celery import app
    from trials.pipeline import queue

    gpu = {queue.SEGMENT_TASK, queue.VALIDATE_MODEL_TASK, queue.TRAIN_MODEL_TASK, queue.SHADOW_TASK}
    for name in gpu:
        assert app.amqp.router.route({}, name)["queue"].name == queue.GPU_QUEUE, name
    for name in (queue.ANALYSE_TASK, queue.REASSESS_TRIAL_TASK, queue.SWEEP_LOST_TASK):
        assert app.amqp.router.route({}, name)["queue"].name == queue.DEFAULT_QUEUE, name
