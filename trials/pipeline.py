"""The longitudinal pipeline as services: upload -> segmentation -> lesion tracking -> RANO-BM assessment.

Every state change here is a transactional function that writes its ``AuditEvent`` through the helpers of
:mod:`trials.services` (most of them *are* calls of those services), so the conventions of that module
hold: keyword-only ``actor`` (``None`` = the pipeline itself), ``reason`` and ``correlation_id``; bad input
raises a ``trials.exceptions.ServiceError`` subclass. Celery tasks (``worker/tasks.py``) are thin: they pass
ids and call the ``run_*_stage`` functions below.

Stages of one uploaded series (one ``ProcessingJob`` of kind ``pipeline`` follows them all):

1. :func:`ingest_upload` (web request or ``manage.py import_series``): validate the upload with the imaging
   module, store the de-identified series under ``MEDIA_ROOT/series/<folder>/`` (``source/`` holds the
   DICOM files or the NIfTI, ``volume.nii`` the volume the worker reads), record the ``ImagingSeries``
   and the job in one transaction, and enqueue the job once that transaction commits.
2. :func:`run_segmentation_stage` (queue ``gpu``): UNETR segmentation of the stored volume, stored as a
   ``SegmentationRun`` whose component label image goes to ``MEDIA_ROOT/masks/run_<id>/labels.nii.gz``.
3. :func:`run_analysis_stage` (queue ``default``): :func:`analyse_run` measures the components, matches
   them against every other visit of the patient in a common space (the grid of the patient's first
   analysed series, with a rigid registration) and stores ``Lesion`` / ``LesionObservation`` rows
   (source ``ai``); :func:`export_run_contours` writes the run's lesions (named by their stable labels)
   as DICOM RTSTRUCT and SEG referencing the stored series (DICOM uploads); then :func:`reassess_patient`
   recomputes the draft AI assessments of this visit and of every later visit.

Idempotency comes from database constraints, not from checks done before inserting: one run per series
and model weights, one lesion per patient and label, one observation per lesion and visit, one current
assessment per visit and criteria. A stage that is run again (a redelivered message after a worker was
killed) finds its earlier rows and reuses them; the analysis of one run is a single transaction, so a
crash leaves either all of its rows or none.

Reliability: :func:`sweep_unenqueued_jobs` enqueues queued jobs that never reached the broker (uploads
made while Redis was down); :func:`sweep_stuck_jobs` fails jobs left running past their time limit.
Database connection failures are re-raised as :class:`TransientError`, which the tasks retry with backoff;
invalid input (:data:`PERMANENT_ERRORS`) fails the job once with a message a user can read.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import SimpleITK as sitk
from django.conf import settings
from django.contrib.contenttypes.models import ContentType
from django.db import InterfaceError, OperationalError, transaction
from django.utils import timezone

from rano import ENGINE_VERSION
from rano import response as engine
from rano.errors import RanoError
from rano.match import (
    Footprint,
    MatchKind,
    footprints,
    lesion_number,
    match_components,
    register_rigid,
    to_reference,
)
from rano.measure import Geometry, LesionMeasurement, label_components, measure_lesions
from rano.settings import ResponseSettings
from segmentation.errors import ImagingError
from segmentation.io import ingest_series, new_series_folder_name
from segmentation.model import LoadedModel, ModelError, load_model, sha256_file
from trials import services
from trials.choices import (
    AssessmentSource,
    AssessmentStatus,
    AuditAction,
    ClinicalStatus,
    Criteria,
    JobKind,
    JobState,
    LesionRole,
    ObservationSource,
    ResponseChoices,
    RunStatus,
    SeriesSource,
)
from trials.exceptions import DuplicateError, InvalidInputError, InvalidStateError, ServiceError
from trials.models import (
    Assessment,
    ImagingSeries,
    Lesion,
    LesionObservation,
    ModelVersion,
    Patient,
    ProcessingJob,
    SegmentationRun,
    Timepoint,
    Trial,
)
from trials.rules import too_small_flag_applies

logger = logging.getLogger(__name__)

__all__ = [
    "PERMANENT_ERRORS",
    "DuplicateSeriesError",
    "TransientError",
    "UploadRejectedError",
    "UploadResult",
    "analyse_run",
    "create_reassessment_job",
    "earlier_lesion_for",
    "enqueue_pipeline_job",
    "ingest_upload",
    "load_pipeline_model",
    "override_assessment",
    "reassess_patient",
    "record_segmentation",
    "resegment_series",
    "response_settings",
    "retry_job",
    "run_analysis_stage",
    "run_segmentation_stage",
    "run_trial_reassessment",
    "sweep_stuck_jobs",
    "sweep_unenqueued_jobs",
    "update_trial",
    "user_message",
]


# ------------------------------------------------------------------------------------------ errors


class TransientError(Exception):
    """A failure that may go away by itself (database or broker connection): the task is retried."""


class UploadRejectedError(InvalidInputError):
    """The upload is not a usable MR series (HTTP 400); the message is the imaging module's."""


class DuplicateSeriesError(DuplicateError):
    """The series is already stored (HTTP 409).

    Attributes:
        existing: The ImagingSeries already holding this Series Instance UID.
    """

    def __init__(self, message: str, existing: ImagingSeries) -> None:
        super().__init__(message, {"series_instance_uid": [message]})
        self.existing = existing


#: Errors that no retry can fix: the job fails once with the error's message.
PERMANENT_ERRORS: tuple[type[BaseException], ...] = (ImagingError, ModelError, RanoError, ServiceError)

#: Database errors worth a retry (connection lost, server restarting, serialisation failures).
TRANSIENT_DATABASE_ERRORS: tuple[type[BaseException], ...] = (OperationalError, InterfaceError)


def user_message(exc: BaseException) -> str:
    """The message of an error in words for the dashboard and the API (never a traceback)."""
    if isinstance(exc, ImagingError):
        return exc.user_message
    if isinstance(exc, ServiceError):
        return exc.message
    return str(exc) or exc.__class__.__name__


@contextmanager
def transient_errors() -> Iterator[None]:
    """Re-raise database connection failures as :class:`TransientError` (so that tasks retry them)."""
    try:
        yield
    except TRANSIENT_DATABASE_ERRORS as exc:
        raise TransientError(f"database unavailable: {exc}") from exc


# ---------------------------------------------------------------------------------------- settings


def _setting(name: str, default: Any) -> Any:
    return getattr(settings, name, default)


def _media_root() -> Path:
    return Path(settings.MEDIA_ROOT)


def _media_path(name: str) -> Path:
    return _media_root() / name


def response_settings(patient: Patient) -> ResponseSettings:
    """The trial's criteria settings as the engine's :class:`ResponseSettings` (``*_pct`` -> percent)."""
    values = {name.removesuffix("_pct"): value for name, value in patient.trial.criteria_settings().items()}
    return ResponseSettings.from_dict(values)


# ------------------------------------------------------------------------------------------ upload


@dataclass(frozen=True)
class UploadResult:
    """What :func:`ingest_upload` stored: the series and its queued pipeline job.

    ``timings_s``: seconds per step, ``read`` (unpacking, validating and decoding the series), ``store``
    (de-identified copy), ``volume`` (the worker's NIfTI volume and its checksum), ``record`` (database
    rows and the job, in one transaction).
    """

    series: ImagingSeries
    job: ProcessingJob
    timings_s: dict[str, float] = dataclasses.field(default_factory=dict)


def _content_uid(image: sitk.Image) -> str:
    """A DICOM UID derived from pixel data and geometry (for NIfTI uploads, which carry no UID).

    The ``2.25.<integer>`` form (PS3.5 B.2) from 128 bits of a sha256, so that the same NIfTI uploaded
    twice gets the same Series Instance UID and the database refuses the duplicate.
    """
    digest = hashlib.sha256()
    digest.update(sitk.GetArrayViewFromImage(image).tobytes())
    for values in (image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()):
        digest.update(np.asarray(values, dtype=np.float64).round(6).tobytes())
    return f"2.25.{int(digest.hexdigest()[:32], 16)}"


def ingest_upload(
    timepoint: Timepoint,
    upload: str | Path,
    *,
    original_filename: str = "",
    series_uid: str | None = None,
    source: str | None = None,
    enqueue: bool = True,
    actor: Any | None,
    reason: str = "",
    correlation_id: str = "",
) -> UploadResult:
    """Validate, de-identify and store one uploaded MR series, record it and queue its pipeline job.

    The files are validated entirely before anything is stored; on any error the stored folder is removed
    again, so a rejected upload leaves nothing behind (no files, no rows).

    Args:
        timepoint: The visit the series belongs to.
        upload: A zip of one DICOM series, a DICOM folder or a NIfTI file (what
            :func:`segmentation.io.read_series` accepts), on local disk.
        original_filename: The client's file name (stored for reference only).
        series_uid: Series Instance UID to pick when the upload holds several series.
        source: ``SeriesSource`` value (default: from the format of the upload).
        enqueue: Enqueue the job on commit (False leaves it queued, e.g. to run it in-process).
        actor: The uploading user (None for the system). reason, correlation_id: see trials.services.

    Returns:
        The stored series and its queued job.

    Raises:
        UploadRejectedError: The upload is not a usable MR series (the imaging module's message).
        DuplicateSeriesError: The series (same Series Instance UID) is already stored.
    """
    correlation_id = correlation_id or services.new_correlation_id()
    patient = timepoint.patient
    folder = f"series/{new_series_folder_name()}"
    folder_path = _media_path(folder)
    try:
        try:
            ingested = ingest_series(
                upload, folder_path / "source", subject_id=patient.subject_id, series_uid=series_uid
            )
        except ImagingError as exc:
            raise UploadRejectedError(exc.user_message) from exc
        loaded = ingested.series
        info = loaded.info
        timings = dict(ingested.timings_s)
        started = time.perf_counter()
        # The worker (and the viewer) read one NIfTI volume: the same file whatever the upload format.
        # Uncompressed: gzip took 40 ms of a 120 x 120 x 90 upload and slows every read, while the
        # de-identified DICOM copy beside it, the archival one, is no smaller.
        volume_name = f"{folder}/volume.nii"
        sitk.WriteImage(loaded.image, str(_media_path(volume_name)))
        uid = info.series_instance_uid or _content_uid(loaded.image)
        is_nifti = info.source_format == "nifti"
        fields = {
            "study_instance_uid": info.study_instance_uid or "",
            "modality": info.modality or "MR",
            "series_description": (info.series_description or "")[:255],
            "size_voxels": list(info.size),
            "spacing_mm": list(info.spacing_mm),
            "origin_mm": list(info.origin_mm),
            "direction": list(info.direction),
            "volume_file": volume_name,
            "checksum_sha256": sha256_file(_media_path(volume_name)),
            "source": source or (SeriesSource.UPLOAD_NIFTI if is_nifti else SeriesSource.UPLOAD_DICOM),
            "original_filename": (original_filename or Path(upload).name)[:255],
            "uploaded_by": actor if getattr(actor, "is_authenticated", False) else None,
        }
        timings["volume"] = time.perf_counter() - started
        started = time.perf_counter()
        result = _record_upload(
            timepoint, uid, fields, enqueue=enqueue, actor=actor, reason=reason, correlation_id=correlation_id
        )
        timings["record"] = time.perf_counter() - started
        return dataclasses.replace(result, timings_s={k: round(v, 4) for k, v in timings.items()})
    except BaseException:
        shutil.rmtree(folder_path, ignore_errors=True)
        raise


@transaction.atomic
def _record_upload(
    timepoint: Timepoint,
    uid: str,
    fields: dict[str, Any],
    *,
    enqueue: bool,
    actor: Any | None,
    reason: str,
    correlation_id: str,
) -> UploadResult:
    try:
        series = services.register_series(
            timepoint,
            series_instance_uid=uid,
            actor=actor,
            reason=reason or "series uploaded",
            correlation_id=correlation_id,
            **fields,
        )
    except DuplicateError:
        existing = (
            ImagingSeries.objects.select_related("timepoint__patient").filter(series_instance_uid=uid).first()
        )
        if existing is None:  # the other upload was rolled back meanwhile: a plain conflict
            raise
        raise DuplicateSeriesError(
            f"This series (Series Instance UID {uid}) is already stored as series {existing.pk} of visit "
            f"{existing.timepoint.visit_label} of {existing.timepoint.patient.subject_id}.",
            existing,
        ) from None
    job = create_pipeline_job(series, enqueue=enqueue, actor=actor, correlation_id=correlation_id)
    return UploadResult(series=series, job=job)


def create_pipeline_job(
    series: ImagingSeries, *, enqueue: bool = True, actor: Any | None, correlation_id: str = ""
) -> ProcessingJob:
    """Save a queued pipeline job for a stored series; it is handed to the broker after commit."""
    return services.create_job(
        JobKind.PIPELINE,
        obj=series,
        params={"series_id": series.pk},
        time_limit_s=int(_setting("PIPELINE_JOB_TIME_LIMIT_S", 3600)),
        enqueue=enqueue_pipeline_job if enqueue else None,
        actor=actor,
        reason="segmentation, lesion tracking and assessment of a new series",
        correlation_id=correlation_id,
    )


@transaction.atomic
def resegment_series(
    series: ImagingSeries, *, actor: Any | None, reason: str = "", correlation_id: str = ""
) -> ProcessingJob:
    """Queue a new pipeline job for a stored series (e.g. after a new model was installed).

    Raises:
        InvalidStateError: A pipeline job of this series is still queued or running.
    """
    ImagingSeries.objects.select_for_update().filter(pk=series.pk).first()  # one request at a time
    busy = ProcessingJob.objects.filter(
        content_type=ContentType.objects.get_for_model(ImagingSeries),
        object_id=series.pk,
        kind=JobKind.PIPELINE,
        state__in=(JobState.QUEUED, JobState.RUNNING),
    ).first()
    if busy is not None:
        raise InvalidStateError(
            f"Series {series.pk} is already being processed (job {busy.pk}, {busy.state})."
        )
    return create_pipeline_job(
        series, actor=actor, correlation_id=correlation_id or services.new_correlation_id()
    )


def enqueue_pipeline_job(job: ProcessingJob) -> bool:
    """Hand a saved job to Celery; record its task id. A broker that cannot be reached is not an error.

    The job stays ``queued`` without a task id and :func:`sweep_unenqueued_jobs` enqueues it later.

    Returns:
        True when the broker accepted the task (or it ran in-process in embedded mode).
    """
    from worker.tasks import enqueue_pipeline  # the worker package imports this module: import late

    try:
        task_id = enqueue_pipeline(job)
    except Exception as exc:  # kombu/redis raise many types for an unreachable broker
        logger.warning("job %s not enqueued (broker unavailable: %s); the sweep will enqueue it", job.pk, exc)
        return False
    if task_id:
        services.set_job_task_id(job, task_id)
    return True


# ------------------------------------------------------------------------------------------- model

_MODEL_CACHE: dict[tuple[str, str], LoadedModel] = {}


def _model_dir() -> Path:
    from segmentation.model import DEMO_MODEL_DIR

    return Path(_setting("PIPELINE_MODEL_DIR", "") or DEMO_MODEL_DIR)


def load_pipeline_model(
    *, actor: Any | None = None, correlation_id: str = ""
) -> tuple[LoadedModel, ModelVersion]:
    """Load the configured model directory (cached per process) and its ``ModelVersion`` row.

    The model is registered on first use; its weights sha256 identifies it (unique in the database).

    Raises:
        ModelError: The directory is missing, incomplete or its checksum does not match.
    """
    directory = _model_dir()
    config_path = directory / "config.json"
    key = (str(directory.resolve()), str(config_path.stat().st_mtime_ns) if config_path.exists() else "")
    model = _MODEL_CACHE.get(key)
    if model is None:
        model = load_model(directory)
        _MODEL_CACHE.clear()
        _MODEL_CACHE[key] = model
    cfg = model.config
    version = ModelVersion.objects.filter(weights_sha256=cfg.weights_sha256).first()
    if version is None:
        try:
            version = services.register_model_version(
                name=cfg.name,
                version=cfg.version
                if not ModelVersion.objects.filter(name=cfg.name, version=cfg.version).exists()
                else f"{cfg.version}+{cfg.weights_sha256[:12]}",
                architecture="MONAI UNETR",
                weights_sha256=cfg.weights_sha256,
                config=cfg.to_dict(),
                weights_path=str(directory),
                training_provenance=dict(cfg.extra.get("training", {})),
                validation_metrics=dict(cfg.extra.get("metrics", {})),
                intended_use=cfg.intended_use,
                is_demo="demo" in cfg.name.lower() or "not for clinical use" in cfg.label.lower(),
                actor=actor,
                reason="model registered on first use by the pipeline",
                correlation_id=correlation_id,
            )
        except DuplicateError:  # another worker registered it at the same moment
            version = ModelVersion.objects.get(weights_sha256=cfg.weights_sha256)
    return model, version


# ------------------------------------------------------------------------------------ segmentation


def _run_file(run: SegmentationRun, name: str) -> str:
    return f"masks/run_{run.pk}/{name}"


def get_or_create_run(
    series: ImagingSeries, model_version: ModelVersion, *, actor: Any | None, correlation_id: str = ""
) -> SegmentationRun:
    """The run of ``model_version`` on ``series``: the existing row, or a new one (the constraint decides)."""
    existing = SegmentationRun.objects.filter(
        series=series, model_weights_sha256=model_version.weights_sha256
    ).first()
    if existing is not None:
        existing.series = series  # the caller's object, with the visit, patient and trial it has loaded
        return existing
    try:
        return services.create_segmentation_run(
            series, model_version, actor=actor, correlation_id=correlation_id, status=RunStatus.RUNNING
        )
    except DuplicateError:
        return SegmentationRun.objects.get(series=series, model_weights_sha256=model_version.weights_sha256)


def record_segmentation(
    series: ImagingSeries,
    model_version: ModelVersion,
    mask: sitk.Image,
    *,
    device: str = "",
    timings_s: dict[str, float] | None = None,
    started_at: dt.datetime | None = None,
    actor: Any | None = None,
    correlation_id: str = "",
    labelled: bool = False,
) -> SegmentationRun:
    """Store a lesion mask of a series as the output of a segmentation run (created if needed).

    The mask is split into 26-connected components (components under the trial's
    ``min_lesion_volume_mm3`` dropped) and saved as ``masks/run_<id>/labels.nii.gz`` on the series' grid.
    The run stays ``running`` until :func:`analyse_run` has stored its lesions. A run that already has a
    stored mask is returned unchanged (idempotent: same weights, same series, same mask).

    Args:
        series: The segmented series.
        model_version: The model (or ground-truth source) that produced the mask.
        mask: Binary mask or label image on the series' native grid.
        device: Where the network ran (``cpu``, ``cuda:0``).
        timings_s: Seconds per stage.
        started_at: When the segmentation started (the run keeps the earliest start it was given).
        labelled: ``mask`` is already the run's components (labels 1..n in raster order, none under
            the trial's ``min_lesion_volume_mm3``), as ``segment_image`` returns them with the trial's
            settings: stored as it is instead of being labelled again.

    Raises:
        InvalidInputError: The mask is not on the series' grid.
    """
    size = list(mask.GetSize())
    if series.size_voxels and size != list(series.size_voxels):
        raise InvalidInputError(f"The mask size {size} differs from the series size {series.size_voxels}.")
    run = get_or_create_run(series, model_version, actor=actor, correlation_id=correlation_id)
    if run.mask_file and run.status in (RunStatus.RUNNING, RunStatus.SUCCEEDED):
        # The same weights on the same series give the same mask: keep what is stored (a redelivery).
        return run
    patient = series.timepoint.patient
    if labelled:
        labels = mask
    else:
        binary = sitk.Cast(mask > 0, sitk.sitkUInt8)
        labels = label_components(binary, response_settings(patient).min_lesion_volume_mm3)
    name = _run_file(run, "labels.nii.gz")
    path = _media_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_label_image(labels, path)
    return services.update_segmentation_run(
        run,
        mask_file=name,
        device=device or run.device,
        timings_s={**(run.timings_s or {}), **(timings_s or {})},
        started_at=min((t for t in (run.started_at, started_at) if t is not None), default=timezone.now()),
        status=RunStatus.RUNNING,
        error="",
        actor=actor,
        reason="segmentation stored",
        correlation_id=correlation_id,
    )


def _write_label_image(labels: sitk.Image, path: Path) -> None:
    """Write a label image (gzipped NIfTI) in the smallest unsigned type that holds its largest label.

    Readers take any integer type; a 120 x 120 x 90 map compresses in 3 ms as UInt8/UInt16 against
    11 ms as UInt32.
    """
    largest = int(sitk.GetArrayViewFromImage(labels).max(initial=0))
    for pixel_type, limit in ((sitk.sitkUInt8, 0xFF), (sitk.sitkUInt16, 0xFFFF)):
        if largest <= limit:
            labels = sitk.Cast(labels, pixel_type)
            break
    sitk.WriteImage(labels, str(path), useCompression=True)


def _progress(job: ProcessingJob | None, pct: int, stage: str, message: str = "") -> None:
    if job is not None:
        services.update_job_progress(job, progress_pct=pct, stage=stage, message=message)


#: ``ProcessingJob.message`` of a job failed by :func:`sweep_stuck_jobs`.
TIMED_OUT_MESSAGE = "timed out"


def _finished(job: ProcessingJob) -> bool:
    """Whether a delivered task has nothing left to do for this job.

    A job the stuck-job sweep failed is not finished: its message, redelivered once the broker gives
    up on the lost worker, resumes it (so a killed worker's work is never lost).
    """
    if job.state == JobState.SUCCEEDED:
        return True
    return job.state == JobState.FAILED and job.message != TIMED_OUT_MESSAGE


def _job_context(job: ProcessingJob, actor_id: int | None, correlation_id: str) -> tuple[Any | None, str]:
    """The acting user and correlation id a task was given (default: the job's own)."""
    actor = job.created_by
    if actor_id is not None and (actor is None or actor.pk != actor_id):
        from django.contrib.auth import get_user_model

        actor = get_user_model().objects.filter(pk=actor_id).first()
    return actor, correlation_id or job.correlation_id


def run_segmentation_stage(
    job_id: int, *, actor_id: int | None = None, correlation_id: str = "", celery_task_id: str = ""
) -> int | None:
    """Stage 1 of a pipeline job: segment its series with the configured model (queue ``gpu``).

    Idempotent: when the run of this model on this series already has a stored mask, the network is not
    run again (a message redelivered after a worker was killed before it acknowledged).

    Returns:
        The SegmentationRun id, or None when the job is already finished (nothing left to do).

    Raises:
        Any of :data:`PERMANENT_ERRORS` (invalid image, unusable model), database errors.
    """
    from segmentation.inference import InferenceOptions, segment_image

    job = ProcessingJob.objects.select_related("created_by", "trial").get(pk=job_id)
    if _finished(job):
        return None
    job = services.start_job(job, celery_task_id=celery_task_id, stage="segmentation")
    actor, cid = _job_context(job, actor_id, correlation_id)
    series = ImagingSeries.objects.select_related("timepoint__patient__trial").get(pk=job.params["series_id"])
    _progress(job, 5, "loading model")
    # The model is registered by the system, whoever uploaded the series that first used it.
    model, version = load_pipeline_model(actor=None, correlation_id=cid)
    run = get_or_create_run(series, version, actor=actor, correlation_id=cid)
    if run.mask_file and run.status in (RunStatus.RUNNING, RunStatus.SUCCEEDED):
        _progress(job, 60, "segmentation", "segmentation already stored; reused")
        return run.pk
    _progress(job, 10, "segmentation", f"{model.config.name} {model.config.version}")
    started = timezone.now()
    image = sitk.ReadImage(str(_media_path(series.volume_file.name)))
    # The model drops components under its own minimum volume, the trial under its own: segment_image
    # applies the larger, so its labels are already the components the run stores.
    trial_settings = response_settings(series.timepoint.patient)
    min_volume = max(trial_settings.min_lesion_volume_mm3, model.config.postprocessing.min_lesion_volume_mm3)
    result = segment_image(
        image,
        model,
        InferenceOptions(device=str(_setting("PIPELINE_DEVICE", "auto"))),
        dataclasses.replace(trial_settings, min_lesion_volume_mm3=min_volume),
    )
    _progress(job, 55, "storing segmentation", f"{len(result.lesions)} lesion(s) found")
    run = record_segmentation(
        series,
        version,
        result.labels,
        device=result.device,
        timings_s={k: round(v, 3) for k, v in result.timings_s.items()},
        started_at=started,
        actor=actor,
        correlation_id=cid,
        labelled=True,
    )
    _progress(job, 60, "segmentation", f"{len(result.lesions)} lesion(s) found")
    return run.pk


# ---------------------------------------------------------------------------------------- analysis


def _read(name: str) -> sitk.Image:
    return sitk.ReadImage(str(_media_path(name)))


def _analysed_runs(patient: Patient) -> list[SegmentationRun]:
    return list(
        SegmentationRun.objects.filter(series__timepoint__patient=patient, status=RunStatus.SUCCEEDED)
        .exclude(mask_file="")
        .select_related("series__timepoint")
        .order_by("finished_at", "pk")
    )


def _slice_spacing_mm(series: ImagingSeries) -> float | None:
    """Spacing along the index axis closest to the physical superior-inferior axis (rano-bm.md 2)."""
    if not series.spacing_mm or not series.direction:
        return None
    geometry = Geometry(
        tuple(series.spacing_mm), tuple(series.origin_mm or (0, 0, 0)), tuple(series.direction)
    )
    axis, _angle = geometry.axial_axis()
    return float(series.spacing_mm[axis])


def _observation_values(parts: list[LesionMeasurement], run: SegmentationRun) -> dict[str, Any]:
    """Observation fields of one lesion from its component(s); fragments of a split lesion are summed."""
    main = max(parts, key=lambda p: p.longest_diameter_mm)
    total_volume = sum(p.volume_mm3 for p in parts)
    weights = [p.volume_mm3 / total_volume if total_volume > 0 else 1.0 / len(parts) for p in parts]
    centroid = [sum(w * p.centroid_mm[i] for w, p in zip(weights, parts, strict=True)) for i in range(3)]
    return {
        "segmentation_run": run,
        "source": ObservationSource.AI,
        "present": True,
        "component_label": int(main.label),
        "fragment_count": len(parts),
        "longest_diameter_mm": float(sum(p.longest_diameter_mm for p in parts)),
        "perpendicular_diameter_mm": float(main.perpendicular_diameter_mm),
        "volume_mm3": float(total_volume),
        "max_3d_diameter_mm": float(max(p.max_3d_diameter_mm for p in parts)),
        "centroid_x_mm": float(centroid[0]),
        "centroid_y_mm": float(centroid[1]),
        "centroid_z_mm": float(centroid[2]),
        "slice_count": int(max(p.slice_count for p in parts)),
        "ld_slice_index": main.ld_slice_index,
        "caliper_points_mm": [list(map(float, p)) for p in main.ld_endpoints_mm]
        if main.ld_endpoints_mm
        else None,
        "perpendicular_points_mm": (
            [list(map(float, p)) for p in main.perpendicular_endpoints_mm]
            if main.perpendicular_endpoints_mm
            else None
        ),
        "intensity_mean": main.intensity_mean,
        "intensity_sd": main.intensity_sd,
        "intensity_min": main.intensity_min,
        "intensity_max": main.intensity_max,
        "measurable": bool(main.measurable),
        "measurable_reason": (main.not_measurable_reason or "")[:255],
    }


def _absent_values(run: SegmentationRun, why: str = "", merged_into: Lesion | None = None) -> dict[str, Any]:
    values: dict[str, Any] = {
        "segmentation_run": run,
        "source": ObservationSource.AI,
        "present": False,
        "merged_into": merged_into,
        "component_label": None,
        "fragment_count": 1,
        "measurable": False,
        "measurable_reason": why[:255],
    }
    for name in (
        "longest_diameter_mm", "perpendicular_diameter_mm", "volume_mm3", "max_3d_diameter_mm",
        "centroid_x_mm", "centroid_y_mm", "centroid_z_mm", "slice_count", "ld_slice_index",
        "caliper_points_mm", "perpendicular_points_mm", "intensity_mean", "intensity_sd",
        "intensity_min", "intensity_max",
    ):  # fmt: skip
        values[name] = None
    return values


def _upsert_observation(
    lesion: Lesion, timepoint: Timepoint, values: dict[str, Any], *, actor: Any | None, correlation_id: str
) -> LesionObservation | None:
    existing = LesionObservation.objects.filter(lesion=lesion, timepoint=timepoint).first()
    if existing is None:
        return services.record_observation(
            lesion, timepoint, actor=actor, reason="AI measurement", correlation_id=correlation_id, **values
        )
    if existing.source != ObservationSource.AI:
        return existing  # a reader's edit or manual measurement is never overwritten by the AI
    # actor None: the pipeline's update keeps the source "ai" (a user's edit would make it "edited").
    return services.update_observation(
        existing, actor=None, reason="AI measurement (re-analysis)", correlation_id=correlation_id, **values
    )


def _prior_footprints(
    patient: Patient,
    timepoint: Timepoint,
    runs: list[SegmentationRun],
    geometry: Geometry,
    this_run: SegmentationRun,
) -> tuple[dict[str, Footprint], frozenset[str]]:
    """Each known lesion's footprint in the reference grid, from the visit nearest before this one.

    A lesion never seen before this visit (a late-arriving earlier visit) takes its footprint from the
    earliest later visit, then from an older run of this same visit, so it keeps its label.
    """
    latest_per_visit: dict[int, SegmentationRun] = {}
    same_visit: list[SegmentationRun] = []
    for run in runs:
        if run.pk == this_run.pk:
            continue
        if run.series.timepoint_id == timepoint.pk:
            same_visit.append(run)
        else:
            latest_per_visit[run.series.timepoint_id] = run  # runs are in finish order: keep the last
    ordered = sorted(latest_per_visit.values(), key=lambda r: (r.series.timepoint.scan_date, r.pk))
    before = [r for r in ordered if r.series.timepoint.scan_date < timepoint.scan_date]
    after = [r for r in ordered if r.series.timepoint.scan_date >= timepoint.scan_date]
    candidates = [*reversed(before), *after, *reversed(same_visit)]
    labels = dict(Lesion.objects.filter(patient=patient).values_list("label", "pk"))
    by_number = {lesion_number(label): label for label in labels}
    prior: dict[str, Footprint] = {}
    for run in candidates:
        path = _media_path(_run_file(run, "lesions_ref.nii.gz"))
        if not path.exists():
            continue
        array = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
        for number, footprint in footprints(array, geometry).items():
            label = by_number.get(int(number))
            if label is not None and label not in prior:
                prior[label] = footprint
    absent_last: frozenset[str] = frozenset()
    if before:
        last_tp = before[-1].series.timepoint
        absent_last = frozenset(
            LesionObservation.objects.filter(timepoint=last_tp, present=False).values_list(
                "lesion__label", flat=True
            )
        )
    return prior, absent_last


def earlier_lesion_for(timepoint: Timepoint, mask: sitk.Image, image: sitk.Image) -> Lesion | None:
    """The known lesion a reader-drawn region at ``timepoint`` is, or None when it is new.

    rano-bm.md sections 3 and 5: a lesion is new only when it matches no lesion seen at any other
    visit, and a target absent at one visit and present again keeps its identity. The region is
    brought into the patient's common space (rigid registration, as the analysis does) and matched
    like an AI component against the known lesions the visit does not already show.

    Args:
        timepoint: The visit the reader drew on.
        mask: Binary region on the visit's volume grid.
        image: The visit's volume (for the registration).
    """
    patient = timepoint.patient
    runs = _analysed_runs(patient)
    if not runs:
        return None
    reference_run = runs[0]
    if reference_run.series.timepoint_id == timepoint.pk:
        reference, transform = image, None
    else:
        reference = _read(reference_run.series.volume_file.name)
        transform = register_rigid(reference, image)
    geometry = Geometry.of(reference)
    region = to_reference(sitk.Cast(mask > 0, sitk.sitkUInt32), reference, transform)
    current = footprints(sitk.GetArrayFromImage(region), geometry)
    if not current:
        return None
    this_visit = [r for r in runs if r.series.timepoint_id == timepoint.pk]
    prior, absent_last = _prior_footprints(patient, timepoint, runs, geometry, (this_visit or runs)[-1])
    shown = set(
        LesionObservation.objects.filter(timepoint=timepoint, present=True).values_list(
            "lesion__label", flat=True
        )
    )
    dropped = set(
        Lesion.objects.filter(patient=patient, is_false_positive=True).values_list("label", flat=True)
    )
    candidates = {label: fp for label, fp in prior.items() if label not in shown | dropped}
    match = match_components(current, candidates, absent_last_visit=absent_last)
    for assignment in match.assignments:
        if assignment.kind != MatchKind.NEW:
            return Lesion.objects.get(patient=patient, label=assignment.lesion_id)
    return None


@transaction.atomic
def analyse_run(
    run: SegmentationRun, *, actor: Any | None = None, correlation_id: str = ""
) -> dict[str, Any]:
    """Measure a run's lesions, match them across the patient's visits and store lesions and observations.

    Runs under a lock on the patient row, so two visits of one patient are never matched at the same
    time, and in one transaction, so a crash stores nothing. A run already analysed (status succeeded)
    is left as it is.

    The common space is the grid of the patient's first analysed series; this visit's image is rigidly
    registered to it (rano.match.register_rigid) and its component labels resampled onto it. The
    resulting lesion map (voxel value = lesion number) is saved as ``masks/run_<id>/lesions_ref.nii.gz``
    for the matching of later visits.

    Returns:
        A summary: ``{"lesions": {label: kind}, "new": [...], "absent": [...], "timings_s": {...}}``.

    Raises:
        InvalidStateError: The run has no stored mask.
        RanoError: Matching failed (e.g. registration).
    """

    run = (
        SegmentationRun.objects.select_for_update()
        .select_related("series__timepoint__patient__trial")
        .get(pk=run.pk)
    )
    series = run.series
    timepoint = series.timepoint
    patient = Patient.objects.select_for_update().select_related("trial").get(pk=timepoint.patient_id)
    if run.status == RunStatus.SUCCEEDED:
        return {"already_analysed": True}
    if not run.mask_file:
        raise InvalidStateError(f"Segmentation run {run.pk} has no stored mask to analyse.")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    settings_ = response_settings(patient)
    labels = sitk.Cast(_read(run.mask_file.name), sitk.sitkUInt32)
    image = _read(series.volume_file.name)
    measurements = measure_lesions(labels, image, settings=settings_, relabel=False)
    timings["measure_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    runs = _analysed_runs(patient)
    reference_run = runs[0] if runs else run
    if reference_run.pk == run.pk:
        reference, transform = image, None
    else:
        reference = _read(reference_run.series.volume_file.name)
        transform = register_rigid(reference, image)
    timings["register_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    geometry = Geometry.of(reference)
    resampled = to_reference(labels, reference, transform)
    ref_labels = sitk.GetArrayFromImage(resampled)
    current = footprints(ref_labels, geometry)
    prior, absent_last = _prior_footprints(patient, timepoint, runs, geometry, run)
    next_number = lesion_number(services.next_lesion_label(patient))
    # A merged mass goes to the target it overlaps most (rano-bm.md section 3): roles as stored.
    targets = frozenset(
        Lesion.objects.filter(patient=patient, role=LesionRole.TARGET).values_list("label", flat=True)
    )
    match = match_components(
        current, prior, next_number=next_number, absent_last_visit=absent_last, targets=targets
    )
    components = {lesion_id: list(labs) for lesion_id, labs in match.components_of().items()}
    new_ids = list(match.new_ids)
    number = match.next_number
    for m in measurements:  # a component that left the reference field of view still is a lesion
        if m.label not in current:
            lesion_id = f"L{number}"
            number += 1
            new_ids.append(lesion_id)
            components[lesion_id] = [m.label]
    timings["match_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    lesions = {
        lesion.label: lesion
        for lesion in Lesion.objects.filter(patient=patient).select_related("first_seen_timepoint")
    }
    for lesion_id in new_ids:
        lesions[lesion_id] = services.create_lesion(
            patient,
            label=lesion_id,
            first_seen_timepoint=timepoint,
            actor=actor,
            reason="new lesion found by the AI",
            correlation_id=correlation_id,
        )
    by_label = {m.label: m for m in measurements}
    for lesion_id, labs in components.items():
        lesion = lesions[lesion_id]
        _upsert_observation(
            lesion, timepoint, _observation_values([by_label[lab] for lab in labs], run),
            actor=actor, correlation_id=correlation_id,
        )  # fmt: skip
        first = lesion.first_seen_timepoint
        if first is None or first.scan_date > timepoint.scan_date:
            services.update_lesion(
                lesion, first_seen_timepoint=timepoint, actor=None, correlation_id=correlation_id,
                reason="seen at an earlier visit",
            )  # fmt: skip
    for lesion_id, lesion in lesions.items():
        if lesion_id in components:
            continue
        into = lesions.get(match.merged_into.get(lesion_id, ""))
        why = f"merged into {into.label}" if into is not None else ""
        _upsert_observation(
            lesion, timepoint, _absent_values(run, why, into), actor=actor, correlation_id=correlation_id
        )

    lesion_map = np.zeros(ref_labels.shape, dtype=np.uint32)
    for lesion_id, labs in components.items():
        for lab in labs:
            lesion_map[ref_labels == lab] = lesion_number(lesion_id)
    map_image = sitk.GetImageFromArray(lesion_map)
    map_image.CopyInformation(reference)
    map_path = _media_path(_run_file(run, "lesions_ref.nii.gz"))
    map_path.parent.mkdir(parents=True, exist_ok=True)
    _write_label_image(map_image, map_path)
    # The same lesion numbers on the series' own grid: what the RTSTRUCT and SEG of this run show.
    native_labels = sitk.GetArrayFromImage(labels)
    lut = np.zeros(int(native_labels.max()) + 1, dtype=np.uint32)  # component label -> lesion number
    for lesion_id, labs in components.items():
        lut[list(labs)] = lesion_number(lesion_id)
    native = sitk.GetImageFromArray(lut[native_labels])
    native.CopyInformation(labels)
    _write_label_image(native, _media_path(_run_file(run, LESION_MAP)))
    _complete_later_visits(patient, timepoint, runs, actor=actor, correlation_id=correlation_id)
    timings["store_s"] = time.perf_counter() - t0

    services.update_segmentation_run(
        run,
        status=RunStatus.SUCCEEDED,
        finished_at=timezone.now(),
        timings_s={**(run.timings_s or {}), **{k: round(v, 3) for k, v in timings.items()}},
        actor=actor,
        reason="lesions measured and matched",
        correlation_id=correlation_id,
    )
    kinds = {a.lesion_id: str(a.kind) for a in match.assignments}
    return {
        "run_id": run.pk,
        "reference_run_id": reference_run.pk,
        "lesions": {k: kinds.get(k, "new") for k in components},
        "new": new_ids,
        "absent": list(match.absent_ids),
        "merged_into": dict(match.merged_into),
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
    }


def _complete_later_visits(
    patient: Patient,
    timepoint: Timepoint,
    runs: list[SegmentationRun],
    *,
    actor: Any | None,
    correlation_id: str,
) -> None:
    """Record "absent" at each later analysed visit for lesions it has no observation of.

    When an earlier visit arrives (or is re-processed) after later ones, the lesions first found there
    were not known when the later visits were matched. Any such lesion overlapping a later visit's
    component took that component's label in the matching (see :func:`_prior_footprints`), so a lesion
    still without an observation at a later visit is one the AI did not find there.
    """
    later = {
        r.series.timepoint_id: r for r in runs if r.series.timepoint.scan_date > timepoint.scan_date
    }  # runs are in finish order: the last run of each visit wins
    if not later:
        return
    lesions = list(Lesion.objects.filter(patient=patient))
    observed = set(
        LesionObservation.objects.filter(timepoint_id__in=later).values_list("lesion_id", "timepoint_id")
    )
    for tp_id, later_run in later.items():
        for lesion in lesions:
            if (lesion.pk, tp_id) not in observed:
                _upsert_observation(
                    lesion,
                    later_run.series.timepoint,
                    _absent_values(
                        later_run, "not found at this visit (first seen at an earlier visit analysed later)"
                    ),
                    actor=actor,
                    correlation_id=correlation_id,
                )


#: Native-grid lesion map of a run (voxel value = lesion number, 3 for L3), written by :func:`analyse_run`.
LESION_MAP = "lesions.nii.gz"

#: Downloadable outputs of a run: kind -> (file name, media type).
RUN_FILE_KINDS: dict[str, tuple[str, str]] = {
    "mask": ("labels.nii.gz", "application/gzip"),
    "lesions": (LESION_MAP, "application/gzip"),
    "rtstruct": ("rtstruct.dcm", "application/dicom"),
    "seg": ("seg.dcm", "application/dicom"),
}


def run_file_path(run: SegmentationRun, kind: str) -> Path | None:
    """The stored file of ``kind`` (see :data:`RUN_FILE_KINDS`) of a run, or None while it is not written."""
    if kind not in RUN_FILE_KINDS:
        return None
    if kind == "lesions":  # written by the analysis, not recorded on the run
        path = _media_path(_run_file(run, LESION_MAP))
    else:
        recorded = getattr(run, f"{kind}_file")  # mask_file, rtstruct_file, seg_file
        if not recorded:
            return None
        path = _media_path(recorded.name)
    return path if path.is_file() else None


def export_run_contours(
    run: SegmentationRun, *, actor: Any | None = None, correlation_id: str = ""
) -> SegmentationRun | None:
    """Write an analysed run's lesions as DICOM RTSTRUCT and SEG next to its mask.

    Each ROI / segment is named by the lesion's stable label (L1, L2, ...) and references the stored,
    de-identified source series, so a PACS or treatment-planning system shows the AI lesions on the
    images they came from. Done once per run: a run with both files stored is returned unchanged.

    SEG and RTSTRUCT are written independently: a series one format cannot encode (RTSTRUCT needs square
    pixels) still gets the other.

    Returns:
        The updated run, or None when there is nothing to write: the series was uploaded as NIfTI (no
        DICOM to reference), the run has no lesion map, or it found no lesion.

    Raises:
        ContourExportError: rt-utils or highdicom could not encode these lesions on this series (whatever
            could be written is stored first; the message names what was not).
    """
    from segmentation.contours import write_rtstruct, write_seg
    from segmentation.errors import ContourExportError
    from segmentation.model import algorithm_version
    from segmentation.model import provenance as model_provenance

    if run.rtstruct_file and run.seg_file:
        return run
    series = run.series
    source_dir = _media_path(series.volume_file.name).parent / "source"
    map_path = _media_path(_run_file(run, LESION_MAP))
    if not map_path.exists() or not any(source_dir.glob("*.dcm")):
        return None
    lesion_map = sitk.ReadImage(str(map_path))
    numbers = sorted(int(v) for v in np.unique(sitk.GetArrayViewFromImage(lesion_map)) if v)
    if not numbers:
        return None
    names = {n: f"L{n}" for n in numbers}
    description = f"MetTrack lesions ({run.model_version.name})"
    # Headers only, read once for both writers: the stored copy was validated when it was uploaded.
    headers = [pydicom.dcmread(path, stop_before_pixels=True) for path in sorted(source_dir.glob("*.dcm"))]
    version = run.model_version
    label = str((version.config or {}).get("label", "")) if isinstance(version.config, dict) else ""
    provenance = model_provenance(version.name, version.version, run.model_weights_sha256, label)
    writers: dict[str, Callable[[Path], Any]] = {  # kind (see RUN_FILE_KINDS) -> writer
        "seg": lambda out: write_seg(
            lesion_map, headers, out, lesion_names=names, algorithm_name=version.name,
            algorithm_version=algorithm_version(version.version, run.model_weights_sha256),
            algorithm_parameters={"weights_sha256": run.model_weights_sha256, "label": label},
            series_description=description,
        ),
        "rtstruct": lambda out: write_rtstruct(
            lesion_map, headers, out, lesion_names=names, series_description=description,
            provenance=provenance,
        ),
    }  # fmt: skip
    stored: dict[str, str] = {}  # run field -> file name
    written: list[str] = []
    errors: list[str] = []
    for kind, write in writers.items():
        if getattr(run, f"{kind}_file"):
            continue
        name = _run_file(run, RUN_FILE_KINDS[kind][0])
        try:
            write(_media_path(name))
        except ImagingError as exc:
            errors.append(f"{kind.upper()}: {exc.user_message}")
            continue
        stored[f"{kind}_file"] = name
        written.append(kind.upper())
    if stored:
        run = services.update_segmentation_run(
            run,
            **stored,
            actor=actor,
            reason="lesions exported as DICOM " + " and ".join(written),
            correlation_id=correlation_id,
        )
    if errors:
        raise ContourExportError(" ".join(errors))
    return run


def run_analysis_stage(
    job_id: int,
    run_id: int | None,
    *,
    actor_id: int | None = None,
    correlation_id: str = "",
    celery_task_id: str = "",
) -> dict[str, Any] | None:
    """Stage 2 of a pipeline job (queue ``default``): match and store lesions, then re-assess the patient.

    Returns:
        The job's result, or None when there was nothing to do (job already finished, or no run).
    """
    job = ProcessingJob.objects.select_related("created_by", "trial").get(pk=job_id)
    if _finished(job) or run_id is None:
        return None
    if job.state != JobState.RUNNING:
        job = services.start_job(job, celery_task_id=celery_task_id, stage="lesion matching")
    actor, cid = _job_context(job, actor_id, correlation_id)
    run = SegmentationRun.objects.select_related("series__timepoint__patient__trial").get(pk=run_id)
    _progress(job, 65, "lesion matching")
    summary = analyse_run(run, actor=actor, correlation_id=cid)
    timepoint = run.series.timepoint
    _progress(job, 75, "DICOM export")
    contours_note = ""
    t0 = time.perf_counter()
    try:
        export_run_contours(run, actor=actor, correlation_id=cid)
    except ImagingError as exc:  # the lesions and assessments stand without their DICOM copies
        contours_note = f"DICOM export incomplete: {exc.user_message}"
        logger.warning("run %s: %s", run.pk, contours_note)
    if "timings_s" in summary:
        summary["timings_s"]["dicom_export_s"] = round(time.perf_counter() - t0, 3)
    _progress(job, 85, "assessment")
    created = reassess_patient(
        timepoint.patient,
        from_timepoint=timepoint,
        actor=actor,
        reason=f"new imaging of {timepoint.visit_label} analysed",
        correlation_id=cid,
    )
    result = {
        **summary,
        "series_id": run.series_id,
        "assessments": [a.pk for a in created],
        **({"contours_error": contours_note} if contours_note else {}),
    }
    message = f"{len(summary.get('lesions', {}))} lesion(s); assessed" + (
        f"; {contours_note}" if contours_note else ""
    )
    services.finish_job(job, result=result, message=message[:500])
    return result


# -------------------------------------------------------------------------------------- assessment


@dataclass(frozen=True)
class _PatientInputs:
    visits: list[engine.VisitInput]
    timepoints: dict[str, Timepoint]
    reader: engine.ReaderInputs


def _visit_inputs(patient: Patient, settings_: ResponseSettings) -> _PatientInputs | None:
    """Engine input from stored rows: analysed visits, their observations and the reader's inputs.

    Visits enter in date order from the baseline on: those with a succeeded segmentation run or any
    observation (imaging available), and those whose series all failed processing (not evaluable, NE).
    A visit without imaging enters as missing imaging (rano-bm.md section 6: NE, or PD when the clinical
    status is worse) once a later visit has imaging (it was passed without a readable scan) or when its
    clinical status is worse. Visits still being processed, and the latest visits still awaiting their
    scan, are left out. Returns None while the baseline has not been analysed.
    """
    # Through the patient, so each visit knows its patient (and trial) without a query per visit.
    timepoints = list(patient.timepoints.order_by("scan_date", "pk"))
    analysed = set(
        SegmentationRun.objects.filter(
            series__timepoint__patient=patient, status=RunStatus.SUCCEEDED
        ).values_list("series__timepoint_id", flat=True)
    )
    observed = set(
        LesionObservation.objects.filter(timepoint__patient=patient).values_list("timepoint_id", flat=True)
    )
    series_by_tp: dict[int, list[ImagingSeries]] = {}
    for s in ImagingSeries.objects.filter(timepoint__patient=patient):
        series_by_tp.setdefault(s.timepoint_id, []).append(s)
    failed_series = set(
        ProcessingJob.objects.filter(
            content_type=ContentType.objects.get_for_model(ImagingSeries),
            kind=JobKind.PIPELINE,
            state=JobState.FAILED,
            object_id__in=[s.pk for v in series_by_tp.values() for s in v],
        ).values_list("object_id", flat=True)
    )
    baseline = next((tp for tp in timepoints if tp.is_baseline), None)
    if baseline is None:
        baseline = next((tp for tp in timepoints if tp.pk in analysed or tp.pk in observed), None)
    if baseline is None or not (baseline.pk in analysed or baseline.pk in observed):
        return None
    observations = list(
        LesionObservation.objects.filter(
            timepoint__patient=patient, lesion__is_false_positive=False
        ).select_related("lesion", "merged_into", "segmentation_run__series")
    )
    by_tp: dict[int, list[LesionObservation]] = {}
    present_at: dict[int, set[int]] = {}  # visit -> lesions seen on their own there
    for obs in observations:
        by_tp.setdefault(obs.timepoint_id, []).append(obs)
        if obs.present:
            present_at.setdefault(obs.timepoint_id, set()).add(obs.lesion_id)
    visits: list[engine.VisitInput] = []
    chosen: dict[str, Timepoint] = {}
    seen_lesions: set[str] = set()
    last_imaged = max(
        (tp.scan_date for tp in timepoints if tp.pk in analysed or tp.pk in observed),
        default=baseline.scan_date,
    )
    for tp in timepoints:
        if tp.scan_date < baseline.scan_date or (tp.scan_date == baseline.scan_date and tp.pk != baseline.pk):
            continue
        imaged = tp.pk in analysed or tp.pk in observed
        series = series_by_tp.get(tp.pk, [])
        all_failed = bool(series) and all(s.pk in failed_series for s in series)
        missing = not series and (tp.scan_date < last_imaged or tp.clinical_status == ClinicalStatus.WORSE)
        if not imaged and tp.pk == baseline.pk:
            continue
        if not imaged and not all_failed and not missing:
            continue  # being processed, or its scan is still to come
        obs_inputs = []
        for obs in by_tp.get(tp.pk, []) if imaged else []:
            lesion = obs.lesion
            seen_lesions.add(lesion.label)
            spacing = _slice_spacing_mm(obs.segmentation_run.series) if obs.segmentation_run else None
            obs_inputs.append(
                engine.LesionObservation(
                    lesion.label,
                    present=obs.present,
                    merged_into=_merged_into_label(obs, present_at.get(tp.pk, set())),
                    longest_diameter_mm=float(obs.longest_diameter_mm or 0.0),
                    perpendicular_diameter_mm=float(obs.perpendicular_diameter_mm or 0.0),
                    volume_mm3=float(obs.volume_mm3 or 0.0),
                    slice_count=int(obs.slice_count or 0),
                    slice_spacing_mm=spacing,
                    too_small_to_measure=too_small_flag_applies(
                        lesion.too_small_to_measure,
                        present=obs.present,
                        at_baseline=tp.pk == baseline.pk,
                        longest_diameter_mm=obs.longest_diameter_mm,
                        measurable_min_ld_mm=settings_.measurable_min_ld_mm,
                    ),
                    fragment_count=int(obs.fragment_count or 1),
                )
            )
        visits.append(
            engine.VisitInput(
                tp.visit_label,
                tp.scan_date,
                tuple(obs_inputs),
                steroids=engine.Steroids(tp.corticosteroid_status),
                clinical_status=engine.ClinicalStatus(tp.clinical_status),
                imaging_available=imaged,
                unequivocal_non_target_progression=any(
                    o.unequivocal_progression and o.present for o in by_tp.get(tp.pk, [])
                ),
            )
        )
        chosen[tp.visit_label] = tp
    lesions = list(Lesion.objects.filter(patient=patient, is_false_positive=False, label__in=seen_lesions))
    flags = tuple(
        engine.LesionFlags(
            lesion.label,
            cystic=lesion.is_cystic,
            dural=lesion.is_dural,
            bony=lesion.is_bony,
            leptomeningeal=lesion.is_leptomeningeal,
            previously_irradiated=lesion.previously_irradiated,
            progressing_since_treatment=lesion.progressing_since_treatment,
        )
        for lesion in lesions
        if any(
            (
                lesion.is_cystic,
                lesion.is_dural,
                lesion.is_bony,
                lesion.is_leptomeningeal,
                lesion.previously_irradiated,
                lesion.progressing_since_treatment,
            )
        )  # fmt: skip
    )
    target_ids: tuple[str, ...] | None = None
    if any(lesion.role_set_by_reader for lesion in lesions):
        # The reader changed the selection: the current roles (theirs and the engine's) are the selection.
        baseline_present = {o.lesion_id for o in visits[0].observations if o.counts_as_present}
        target_ids = tuple(
            sorted(
                (
                    les.label
                    for les in lesions
                    if les.role == LesionRole.TARGET and les.label in baseline_present
                ),
                key=lambda label: (lesion_number(label), label),
            )
        )
    return _PatientInputs(visits, chosen, engine.ReaderInputs(lesion_flags=flags, target_ids=target_ids))


def _merged_into_label(obs: LesionObservation, present: set[int]) -> str | None:
    """The label of the lesion whose mass absorbed ``obs``'s lesion, when that lesion is seen at the visit
    (a merge into a lesion since marked absent or a false positive is an absence)."""
    if obs.present or obs.merged_into_id is None or obs.merged_into_id not in present:
        return None
    return obs.merged_into.label


_COMPARED_FIELDS = (
    "sum_ld_mm", "baseline_sum_ld_mm", "nadir_sum_ld_mm", "sum_volume_mm3", "baseline_sum_volume_mm3",
    "nadir_sum_volume_mm3", "pct_change_from_baseline", "pct_change_from_nadir", "target_response",
    "non_target_response", "new_lesion_status", "overall_response", "volumetric_response", "confirmed",
    "best_overall_response", "progression_date", "reasons", "settings", "engine_version",
)  # fmt: skip


def _assessment_values(
    va: engine.VisitAssessment,
    other: engine.VisitAssessment,
    prefix: engine.Assessment,
    timepoints: dict[str, Timepoint],
    volumetric: bool,
    trial_settings: dict[str, Any],
    disagreements: tuple[str, ...],
) -> dict[str, Any]:
    """Assessment fields of one visit (``other`` is the same visit under the other criteria)."""

    def text(value: Any) -> str:
        return str(value) if value is not None else ""

    values: dict[str, Any] = {
        "sum_ld_mm": va.sum_ld_mm,
        "sum_volume_mm3": va.sum_volume_mm3,
        "pct_change_from_baseline": va.pct_change_from_baseline,
        "pct_change_from_nadir": va.pct_change_from_nadir,
        "nadir_timepoint": timepoints[va.nadir_visit] if va.nadir_visit else None,
        "target_response": text(va.target_response),
        "non_target_response": text(va.non_target_response),
        "new_lesion_status": text(va.new_lesions) or "none",
        "overall_response": text(va.overall_response),
        "volumetric_response": text(other.overall_response if not volumetric else va.overall_response),
        "confirmed": bool(va.confirmed),
        # Best overall response and progression date as known at this visit (visits up to it).
        "best_overall_response": text(prefix.best_overall_response),
        "progression_date": prefix.progression_date,
        "reasons": [*va.reasons, *(f"criteria disagree: {d}" for d in disagreements)],
        "settings": trial_settings,
        "engine_version": ENGINE_VERSION,
    }
    if volumetric:
        values.update(
            baseline_sum_volume_mm3=va.baseline_sum, nadir_sum_volume_mm3=va.nadir_sum,
            baseline_sum_ld_mm=None, nadir_sum_ld_mm=None,
        )  # fmt: skip
    else:
        values.update(
            baseline_sum_ld_mm=va.baseline_sum, nadir_sum_ld_mm=va.nadir_sum,
            baseline_sum_volume_mm3=other.baseline_sum, nadir_sum_volume_mm3=other.nadir_sum,
        )  # fmt: skip
    return values


def _same_result(row: Assessment | None, values: dict[str, Any]) -> bool:
    if row is None:
        return False
    after = services.snapshot(Assessment(**{k: v for k, v in values.items()}), _COMPARED_FIELDS)
    before = services.snapshot(row, _COMPARED_FIELDS)
    nadir = values["nadir_timepoint"]
    return before == after and row.nadir_timepoint_id == (nadir.pk if nadir is not None else None)


def _ai_row(current: Assessment | None) -> Assessment | None:
    """The AI result behind the current row (the row a radiologist's override superseded)."""
    while current is not None and current.source != AssessmentSource.AI:
        current = current.supersedes
    return current


_ENGINE_CRITERIA = {
    Criteria.RANO_BM: engine.Criteria.RANO_BM,
    Criteria.VOLUMETRIC: engine.Criteria.VOLUMETRIC,
}


def _overridden_responses(patient: Patient) -> dict[str, dict[str, str]]:
    """Criteria -> visit label -> the overall response a radiologist's current override set."""
    out: dict[str, dict[str, str]] = {Criteria.RANO_BM: {}, Criteria.VOLUMETRIC: {}}
    rows = Assessment.objects.filter(
        timepoint__patient=patient, is_current=True, status=AssessmentStatus.OVERRIDDEN
    ).select_related("timepoint")
    for row in rows:
        if row.overall_response and row.criteria in out:
            out[row.criteria][row.timepoint.visit_label] = row.overall_response
    return out


@transaction.atomic
def override_assessment(
    assessment: Assessment,
    *,
    overall_response: str,
    actor: Any,
    reason: str,
    correlation_id: str = "",
    **changes: Any,
) -> Assessment:
    """A radiologist's override (:func:`trials.services.override_assessment`) with what follows from it.

    The new row's confirmation, best overall response and progression date are derived with the
    reader's response (rano-bm.md section 7) instead of being copied from the superseded row, and
    the patient is re-assessed: later visits' best overall response and progression date, and an
    earlier CR/PR's confirmation, follow the overridden response.

    Raises:
        What :func:`trials.services.override_assessment` raises.
    """
    cid = correlation_id or services.new_correlation_id()
    timepoint = assessment.timepoint
    patient = Patient.objects.select_for_update().get(pk=timepoint.patient_id)
    settings_ = response_settings(patient)
    inputs = _visit_inputs(patient, settings_)
    label = timepoint.visit_label
    derived: dict[str, Any] = {}
    if (
        inputs is not None
        and label in inputs.timepoints
        and assessment.criteria in _ENGINE_CRITERIA
        and overall_response in ResponseChoices.values
    ):
        overrides = {**_overridden_responses(patient)[assessment.criteria], label: overall_response}
        index = [v.visit for v in inputs.visits].index(label)
        criteria = _ENGINE_CRITERIA[assessment.criteria]
        try:
            full = engine.assess(
                inputs.visits, inputs.reader, settings_, criteria, overall_overrides=overrides
            )
            prefix = engine.assess(
                inputs.visits[: index + 1], inputs.reader, settings_, criteria, overall_overrides=overrides
            )
        except RanoError as exc:
            raise InvalidInputError(f"{patient.subject_id} cannot be assessed: {exc}") from exc
        derived = {
            "confirmed": bool(full.visits[index].confirmed),
            "best_overall_response": str(prefix.best_overall_response or ""),
            "progression_date": prefix.progression_date,
        }
    new = services.override_assessment(
        assessment,
        overall_response=overall_response,
        actor=actor,
        reason=reason,
        correlation_id=cid,
        **{**derived, **changes},
    )
    reassess_patient(patient, from_timepoint=timepoint, actor=actor, reason=reason, correlation_id=cid)
    return new


@transaction.atomic
def reassess_patient(
    patient: Patient,
    *,
    from_timepoint: Timepoint | None,
    actor: Any | None,
    reason: str = "",
    correlation_id: str = "",
) -> list[Assessment]:
    """Recompute the AI assessments of a patient after a change at ``from_timepoint``.

    The rules engine (:func:`rano.response.assess`) runs on the stored observations and the reader's
    inputs: lesion flags (cystic, dural, bony, leptomeningeal, previously irradiated / progressing), "too
    small to measure", reader-set target roles (``Lesion.role_set_by_reader``), unequivocal non-target
    progression on observations, steroid and clinical status of the visits, and the trial's criteria
    settings. Both criteria are stored: RANO-BM (diameters) and volumetric, one draft ``Assessment`` (source
    ``ai``) each per visit. A new row supersedes the current one (``supersedes``, ``is_current``), so the
    earlier versions stay; when the result is unchanged the current row is kept (a reader's confirmation
    or override of an unchanged result stays in force). Visits before ``from_timepoint`` are compared
    too and get a new row only when their result depends on the change (confirmation by a later visit,
    a flag that changes the baseline's targets).

    Lesion roles chosen by the engine at baseline are written back to ``Lesion.role`` unless a reader
    set them.

    Args:
        patient: Whose assessments.
        from_timepoint: The visit whose data changed (None: no particular one); checked to belong to
            the patient. Every visit is compared either way.
        actor: The user whose change triggered this (a reader's edit) or None for the pipeline.
        reason: Why (lands in the audit trail of every new row).
        correlation_id: Shared by the audit events of this recomputation.

    Returns:
        The Assessment rows created (empty when nothing changed or the baseline is not analysed yet).

    Raises:
        InvalidInputError: The stored data cannot be assessed (e.g. two visits on one date, a reader
            selection of more targets than the protocol allows); the engine's message.
    """
    correlation_id = correlation_id or services.new_correlation_id()
    patient = Patient.objects.select_for_update().select_related("trial").get(pk=patient.pk)
    if from_timepoint is not None and from_timepoint.patient_id != patient.pk:
        raise InvalidInputError("The visit to re-assess from belongs to another patient.")
    settings_ = response_settings(patient)
    inputs = _visit_inputs(patient, settings_)
    if inputs is None:
        return []
    try:
        diameter = engine.assess(inputs.visits, inputs.reader, settings_, engine.Criteria.RANO_BM)
        volume = engine.assess(inputs.visits, inputs.reader, settings_, engine.Criteria.VOLUMETRIC)
    except RanoError as exc:
        raise InvalidInputError(f"{patient.subject_id} cannot be assessed: {exc}") from exc
    trial_settings = patient.trial.criteria_settings()
    reason = reason or "re-assessment"
    created: list[Assessment] = []
    overrides = _overridden_responses(patient)
    current_rows = {
        (row.timepoint_id, row.criteria): row
        for row in Assessment.objects.filter(timepoint__patient=patient, is_current=True)
    }

    def run(visits: list[engine.VisitInput], criteria: str, own: str) -> engine.Assessment:
        # The radiologists' responses at the other visits (a visit's own AI row is the rules' answer).
        others = {label: r for label, r in overrides[criteria].items() if label != own}
        return engine.assess(
            visits, inputs.reader, settings_, _ENGINE_CRITERIA[criteria], overall_overrides=others or None
        )

    # Every visit is recomputed and compared, not only those from ``from_timepoint`` on: an earlier
    # visit's result can depend on later data (a CR/PR is confirmed by a later visit, rano-bm.md
    # section 7; a lesion flag set at a follow-up can change the baseline's targets). Rows are created
    # only where the result changed.
    for index, visit in enumerate(inputs.visits):
        timepoint = inputs.timepoints[visit.visit]
        prefix_d = run(inputs.visits[: index + 1], Criteria.RANO_BM, visit.visit)
        prefix_v = run(inputs.visits[: index + 1], Criteria.VOLUMETRIC, visit.visit)
        full_d, full_v = diameter, volume
        if any(overrides.values()):
            full_d = run(inputs.visits, Criteria.RANO_BM, visit.visit)
            full_v = run(inputs.visits, Criteria.VOLUMETRIC, visit.visit)
        va_d, va_v = full_d.visits[index], full_v.visits[index]
        disagreements = tuple(
            d for d in engine.compare_criteria(full_d, full_v) if d.startswith(f"{visit.visit}: ")
        )
        for criteria, va, other, prefix, volumetric in (
            (Criteria.RANO_BM, va_d, va_v, prefix_d, False),
            (Criteria.VOLUMETRIC, va_v, va_d, prefix_v, True),
        ):
            values = _assessment_values(
                va, other, prefix, inputs.timepoints, volumetric, trial_settings, disagreements
            )
            current = current_rows.get((timepoint.pk, criteria))
            if _same_result(_ai_row(current), values):
                continue
            created.append(
                services.create_assessment(
                    timepoint,
                    criteria=criteria,
                    source=AssessmentSource.AI,
                    actor=actor,
                    reason=reason,
                    correlation_id=correlation_id,
                    **values,
                )
            )
    for lesion in Lesion.objects.filter(patient=patient, role_set_by_reader=False):
        role = diameter.roles.get(lesion.label)
        wanted = LesionRole.TARGET if role == engine.Role.TARGET else LesionRole.NON_TARGET
        if lesion.role != wanted:
            services.update_lesion(
                lesion, role=wanted, actor=None, reason="target selection by the rules engine",
                correlation_id=correlation_id,
            )  # fmt: skip
    return created


# ------------------------------------------------------------------------- trial-wide re-assessment


def update_trial(
    trial: Trial, *, actor: Any | None, reason: str = "", correlation_id: str = "", **changes: Any
) -> Trial:
    """:func:`trials.services.update_trial`; a change of the response-criteria settings (rano-bm.md
    section 9) re-assesses every patient of the trial in a background job, since each assessment
    stores the settings it was made under.
    """
    cid = correlation_id or services.new_correlation_id()
    with transaction.atomic():
        before = trial.criteria_settings()
        trial = services.update_trial(trial, actor=actor, reason=reason, correlation_id=cid, **changes)
        if trial.criteria_settings() != before:
            create_reassessment_job(trial, actor=actor, correlation_id=cid)
    return trial


def create_reassessment_job(
    trial: Trial, *, enqueue: bool = True, actor: Any | None, correlation_id: str = ""
) -> ProcessingJob:
    """Save a queued job re-assessing every patient of ``trial``; handed to the broker after commit."""
    return services.create_job(
        JobKind.ASSESS,
        obj=trial,
        params={"trial_id": trial.pk},
        time_limit_s=int(_setting("PIPELINE_JOB_TIME_LIMIT_S", 3600)),
        enqueue=enqueue_pipeline_job if enqueue else None,
        actor=actor,
        reason="the trial's response-criteria settings changed: every patient is re-assessed",
        correlation_id=correlation_id,
    )


def run_trial_reassessment(
    job_id: int, *, actor_id: int | None = None, correlation_id: str = "", celery_task_id: str = ""
) -> dict[str, Any] | None:
    """Run a re-assessment job (queue ``default``): every patient of the trial, with its settings now.

    Idempotent: re-assessment creates rows only where a result changed, so a redelivered job repeats
    nothing.

    Returns:
        ``{"patients": n, "assessments_created": k}``, or None when the job was already finished.
    """
    job = ProcessingJob.objects.select_related("created_by", "trial").get(pk=job_id)
    if _finished(job):
        return None
    job = services.start_job(job, celery_task_id=celery_task_id, stage="re-assessment")
    actor, cid = _job_context(job, actor_id, correlation_id)
    trial = Trial.objects.get(pk=job.params["trial_id"])
    patients = list(trial.patients.order_by("pk"))
    created = 0
    for index, patient in enumerate(patients, start=1):
        created += len(
            reassess_patient(
                patient, from_timepoint=None, actor=actor, reason="trial criteria settings changed",
                correlation_id=cid,
            )
        )  # fmt: skip
        _progress(
            job, min(99, 100 * index // len(patients)), "re-assessment", f"{index}/{len(patients)} patients"
        )
    result = {"patients": len(patients), "assessments_created": created}
    services.finish_job(job, result=result, message=f"{len(patients)} patient(s) re-assessed", actor=actor,
                        correlation_id=cid)  # fmt: skip
    return result


# ------------------------------------------------------------------------------------------- sweeps


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
    grace = float(older_than_s if older_than_s is not None else _setting("PIPELINE_ENQUEUE_GRACE_S", 30))
    cutoff = timezone.now() - dt.timedelta(seconds=grace)
    enqueue = enqueue or enqueue_pipeline_job
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
    services.record_audit_event(
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
    minutes = job.time_limit_s / 60
    services.fail_job(
        job,
        error=f"The job was still running after its time limit of {minutes:g} min (stage: {job.stage or 'unknown'}); "
        "the worker was probably lost. It resumes if its task is delivered again; otherwise retry the job.",
        message=TIMED_OUT_MESSAGE,
    )
    if job.kind == JobKind.PIPELINE and job.params.get("series_id"):
        for run in SegmentationRun.objects.filter(
            series_id=job.params["series_id"], status=RunStatus.RUNNING
        ):
            services.update_segmentation_run(
                run, status=RunStatus.FAILED, error="timed out", finished_at=now, actor=None,
                correlation_id=job.correlation_id,
            )  # fmt: skip


def fail_pipeline_job(job_id: int, exc: BaseException) -> None:
    """Mark a job failed with the error's user message (used by the tasks for permanent errors)."""
    job = ProcessingJob.objects.filter(pk=job_id).first()
    if job is None or job.state in (JobState.SUCCEEDED, JobState.FAILED):
        return
    message = user_message(exc)
    services.fail_job(job, error=message, message=f"failed at stage {job.stage or 'start'}")
    if job.kind == JobKind.PIPELINE and job.params.get("series_id"):
        for run in SegmentationRun.objects.filter(
            series_id=job.params["series_id"], status=RunStatus.RUNNING
        ):
            services.update_segmentation_run(
                run, status=RunStatus.FAILED, error=message, actor=None, correlation_id=job.correlation_id
            )


@transaction.atomic
def retry_job(
    job: ProcessingJob, *, actor: Any | None, reason: str = "", correlation_id: str = ""
) -> ProcessingJob:
    """Put a failed pipeline job back in the queue (enqueued on commit); its earlier outputs are reused.

    Raises:
        InvalidStateError: The job has not failed.
    """
    job = ProcessingJob.objects.select_for_update().get(pk=job.pk)
    if job.state != JobState.FAILED:
        raise InvalidStateError(f"Job {job.pk} is {job.state}; only a failed job can be retried.")
    if job.kind == JobKind.PIPELINE:
        for run in SegmentationRun.objects.filter(
            series_id=job.params.get("series_id"), status=RunStatus.FAILED
        ):
            services.update_segmentation_run(
                run,
                status=RunStatus.RUNNING,
                error="",
                actor=actor,
                correlation_id=correlation_id or job.correlation_id,
            )
    job = services._update(  # noqa: SLF001 - the same audited update every service uses
        job,
        {
            "state": JobState.QUEUED,
            "error": "",
            "progress_pct": 0,
            "stage": "",
            "celery_task_id": "",
            "finished_at": None,
        },
        allowed=("state", "error", "progress_pct", "stage", "celery_task_id", "finished_at"),
        actor=actor,
        reason=reason or "retry",
        correlation_id=correlation_id or job.correlation_id,
        action="retry",
    )
    transaction.on_commit(lambda: enqueue_pipeline_job(job))
    return job
