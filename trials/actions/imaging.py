"""Actions on imaging: upload a series of a visit (which queues its pipeline job), segment it again.

Data managers upload (API ``POST /api/v1/timepoints/{id}/series/``, the dashboard, ``manage.py
import_series``); the upload is validated, de-identified and stored before anything is recorded, then
the series and its queued job are recorded in one transaction (the job reaches the broker once it
commits). A rejected or conflicting upload leaves nothing behind: no files, no rows.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from django.contrib.contenttypes.models import ContentType
from django.db import transaction

from segmentation.scu import SendError
from trials.audit import new_correlation_id
from trials.choices import AssessmentStatus, JobKind, JobState, RunStatus
from trials.exceptions import DuplicateError, DuplicateSeriesError, InvalidStateError
from trials.models import Assessment, ImagingSeries, ProcessingJob, SegmentationRun, Timepoint
from trials.permissions import VIEW, user_capabilities
from trials.pipeline.delivery import measurement_report_path
from trials.pipeline.queue import create_pipeline_job
from trials.pipeline.upload import StoredUpload, discard_upload, store_upload
from trials.records.imaging import register_series


@dataclasses.dataclass(frozen=True)
class UploadResult:
    """What :func:`upload_series` stored: the series and its queued pipeline job.

    ``timings_s``: seconds per step, ``read`` (unpacking, validating and decoding the series), ``store``
    (de-identified copy), ``volume`` (the worker's NIfTI volume and its checksum), ``record`` (database
    rows and the job, in one transaction).
    """

    series: ImagingSeries
    job: ProcessingJob
    timings_s: dict[str, float] = dataclasses.field(default_factory=dict)


def upload_series(
    timepoint: Timepoint,
    upload: str | Path,
    *,
    series_uid: str | None = None,
    source: str | None = None,
    enqueue: bool = True,
    actor: Any | None,
    reason: str = "",
    correlation_id: str = "",
) -> UploadResult:
    """Validate, de-identify and store one uploaded MR series, record it and queue its pipeline job.

    Args:
        timepoint: The visit the series belongs to.
        upload: A zip of one DICOM series, a DICOM folder or a NIfTI file, on local disk.
        series_uid: Series Instance UID to pick when the upload holds several series.
        source: ``SeriesSource`` value (default: from the format of the upload).
        enqueue: Enqueue the job on commit (False leaves it queued, e.g. to run it in-process).
        actor: The uploading user (None for the system). reason, correlation_id: for the audit trail.

    Returns:
        The stored series and its queued job.

    Raises:
        UploadRejectedError: The upload is not a usable MR series (the imaging module's message).
        DuplicateSeriesError: The series (same Series Instance UID) is already stored. Where the stored
            one is in a trial the actor cannot see, the error names nothing of it (``existing`` None).

    The client's file name is never passed in or stored: names like ``DOE_JOHN_MRI.zip`` are common.
    """
    correlation_id = correlation_id or new_correlation_id()
    stored = store_upload(
        timepoint,
        upload,
        series_uid=series_uid,
        source=source,
        actor=actor,
    )
    try:
        started = time.perf_counter()
        series, job = _record_upload(
            timepoint, stored, enqueue=enqueue, actor=actor, reason=reason, correlation_id=correlation_id
        )
        timings = {**stored.timings_s, "record": time.perf_counter() - started}
    except BaseException:
        discard_upload(stored)
        raise
    return UploadResult(series=series, job=job, timings_s={k: round(v, 4) for k, v in timings.items()})


@transaction.atomic
def _record_upload(
    timepoint: Timepoint,
    stored: StoredUpload,
    *,
    enqueue: bool,
    actor: Any | None,
    reason: str,
    correlation_id: str,
) -> tuple[ImagingSeries, ProcessingJob]:
    uid = stored.series_instance_uid
    try:
        series = register_series(
            timepoint,
            series_instance_uid=uid,
            actor=actor,
            reason=reason or "series uploaded",
            correlation_id=correlation_id,
            **stored.fields,
        )
    except DuplicateError:
        existing = (
            ImagingSeries.objects.select_related("timepoint__patient").filter(series_instance_uid=uid).first()
        )
        if existing is None:  # the other upload was rolled back meanwhile: a plain conflict
            raise
        if not _may_see(actor, existing):
            # Another trial's series: its subject, visit and id stay unknown to this uploader.
            raise DuplicateSeriesError(
                f"This series (Series Instance UID {uid}) is already stored in MetTrack and cannot be "
                "stored twice; ask your trial administrator if it belongs to this visit.",
                None,
            ) from None
        raise DuplicateSeriesError(
            f"This series (Series Instance UID {uid}) is already stored as series {existing.pk} of visit "
            f"{existing.timepoint.visit_label} of {existing.timepoint.patient.subject_id}.",
            existing,
        ) from None
    job = create_pipeline_job(series, enqueue=enqueue, actor=actor, correlation_id=correlation_id)
    return series, job


def _may_see(actor: Any | None, series: ImagingSeries) -> bool:
    """Whether the actor (None: the system) may see the trial of a stored series."""
    return actor is None or VIEW in user_capabilities(actor, series.timepoint.patient.trial_id)


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
    return create_pipeline_job(series, actor=actor, correlation_id=correlation_id or new_correlation_id())


def measurement_report_file(run: SegmentationRun) -> Path | None:
    """The run's DICOM SR (TID 1500) of the visit's lesions and current assessment, written on the first
    request for that assessment and kept; None when the run has no SEG or the report cannot be made."""
    try:
        return measurement_report_path(run)
    except SendError:
        return None


def signed_assessment_report_file(assessment: Assessment) -> Path | None:
    """The DICOM SR of a signed (confirmed or overridden) assessment: its visit's last analysed run's
    lesions with the assessment's response and signer. None for a draft, or a visit without a SEG."""
    if assessment.status == AssessmentStatus.DRAFT or assessment.signed_by_id is None:
        return None
    run = (
        SegmentationRun.objects.filter(
            series__timepoint=assessment.timepoint, status=RunStatus.SUCCEEDED, is_shadow=False
        )
        .exclude(seg_file="")
        .order_by("-finished_at", "-pk")
        .first()
    )
    if run is None:
        return None
    try:
        return measurement_report_path(run, assessment)
    except SendError:
        return None


__all__ = [
    "UploadResult",
    "measurement_report_file",
    "resegment_series",
    "signed_assessment_report_file",
    "upload_series",
]
