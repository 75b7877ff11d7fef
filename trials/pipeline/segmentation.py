"""Stage 2 of a series (queue ``gpu``): the UNETR segmentation of its stored volume, stored as a run.

A ``SegmentationRun`` is one model (by weights sha256) over one series, unique in the database; its
components (26-connected, under the trial's minimum lesion volume dropped) are stored as
``masks/run_<id>/labels.nii.gz`` on the series' own grid. The run stays ``running`` until the analysis
(:mod:`.analysis`) has stored its lesions.

Idempotent: a message redelivered after a worker was killed finds the run's stored mask and does not
run the network again (same weights, same series, same mask).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import SimpleITK as sitk
from django.conf import settings
from django.utils import timezone

from rano.measure import label_components
from segmentation.inference import InferenceOptions, SegmentationResult, segment_image
from segmentation.model import LoadedModel
from trials.choices import RunStatus
from trials.exceptions import DuplicateError, InvalidInputError
from trials.models import ImagingSeries, ModelVersion, ProcessingJob, SegmentationRun
from trials.pipeline.jobs import claim, heartbeat, job_context, progress
from trials.pipeline.registry import load_trial_model
from trials.records.imaging import create_segmentation_run, update_segmentation_run
from trials.records.jobs import start_job
from trials.storage import (
    RUN_LABELS,
    image_verifies,
    read_image_field,
    run_file_name,
    stored_name,
    write_label_image,
)


def get_or_create_run(
    series: ImagingSeries, model_version: ModelVersion, *, actor: Any | None, correlation_id: str = ""
) -> SegmentationRun:
    """The run of ``model_version`` on ``series``: the existing row, or a new one (the constraint decides).

    A shadow run of the same model on the series (the candidate has since become the trial's active
    model) becomes the visit's run: same weights, same series, same mask; it is analysed from here on.
    """
    existing = SegmentationRun.objects.filter(series=series, model_version=model_version).first()
    if existing is not None and existing.is_shadow:
        existing = update_segmentation_run(
            existing,
            is_shadow=False,
            status=RunStatus.RUNNING,
            actor=actor,
            reason="the shadow run of the trial's now active model becomes the visit's run",
            correlation_id=correlation_id,
        )
    if existing is not None:
        existing.series = series  # the caller's object, with the visit, patient and trial it has loaded
        return existing
    try:
        return create_segmentation_run(
            series, model_version, actor=actor, correlation_id=correlation_id, status=RunStatus.RUNNING
        )
    except DuplicateError:
        return SegmentationRun.objects.get(series=series, model_version=model_version)


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
    findings: dict[str, Any] | None = None,
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
        device: Where and how the network ran (``cpu/openvino``, ``cpu/onnx``, ``cpu/torch``,
            ``cuda/torch``).
        timings_s: Seconds per stage.
        started_at: When the segmentation started (the run keeps the earliest start it was given).
        labelled: ``mask`` is already the run's components (labels 1..n in raster order, none under
            the trial's ``min_lesion_volume_mm3``), as ``segment_image`` returns them with the trial's
            settings: stored as it is instead of being labelled again.
        findings: The labels of ``mask`` (as text) a stage after the network added, with what it measured
            (:func:`stage_findings`); only with ``labelled``, whose labels they name.

    Raises:
        InvalidInputError: The mask is not on the series' grid.
    """
    size = list(mask.GetSize())
    if series.size_voxels and size != list(series.size_voxels):
        raise InvalidInputError(f"The mask size {size} differs from the series size {series.size_voxels}.")
    run = get_or_create_run(series, model_version, actor=actor, correlation_id=correlation_id)
    if _mask_reusable(run):
        # The same weights on the same series give the same mask: keep what is stored (a redelivery).
        return run
    patient = series.timepoint.patient
    if labelled:
        labels = mask
    else:
        binary = sitk.Cast(mask > 0, sitk.sitkUInt8)
        labels = label_components(binary, patient.trial.response_settings().min_lesion_volume_mm3)
    name = run_file_name(run, RUN_LABELS)
    write_label_image(labels, name)
    return update_segmentation_run(
        run,
        mask_file=name,
        device=device or run.device,
        timings_s={**(run.timings_s or {}), **(timings_s or {})},
        findings=findings if labelled and findings else {},
        started_at=min((t for t in (run.started_at, started_at) if t is not None), default=timezone.now()),
        status=RunStatus.RUNNING,
        error="",
        actor=actor,
        reason="segmentation stored",
        correlation_id=correlation_id,
    )


def _mask_reusable(run: SegmentationRun) -> bool:
    """Whether a run's stored mask can stand for a new segmentation: stored, of a live run, and whole
    (a mask cut short by a full disk is computed again, never reused)."""
    if not run.mask_file or run.status not in (RunStatus.RUNNING, RunStatus.SUCCEEDED):
        return False
    return image_verifies(stored_name(run.mask_file))


def stage_findings(result: SegmentationResult) -> dict[str, Any]:
    """The run's ``findings``: each label the small-lesion stage added, with the features it measured
    (:meth:`segmentation.small_lesions.Candidate.to_dict`: JSON-ready, no patient data)."""
    return {
        str(label): {"stage": "small_lesions", "features": candidate.to_dict()}
        for label, candidate in sorted(result.small_lesions.items())
    }


def segment_series(series: ImagingSeries, model: LoadedModel) -> SegmentationResult:
    """``model`` on the series' stored volume, with the service's device and backend and the trial's
    settings: the one way the pipeline segments a series (the active model here, a shadow candidate in
    :mod:`trials.pipeline.shadow`).

    The model drops components under its own minimum volume, the trial under its own: ``segment_image``
    applies the larger, so its labels are already the components a run stores.
    """
    image = read_image_field(series.volume_file)
    trial_settings = series.timepoint.patient.trial.response_settings()
    min_volume = max(trial_settings.min_lesion_volume_mm3, model.config.postprocessing.min_lesion_volume_mm3)
    return segment_image(
        image,
        model,
        InferenceOptions(
            device=str(getattr(settings, "PIPELINE_DEVICE", "auto")),
            backend=str(getattr(settings, "PIPELINE_BACKEND", "")) or None,
        ),
        dataclasses.replace(trial_settings, min_lesion_volume_mm3=min_volume),
    )


def run_segmentation_stage(
    job_id: int, *, dispatch_id: str = "", actor_id: int | None = None, correlation_id: str = ""
) -> int | None:
    """Stage 1 of a pipeline job: segment its series with the configured model (queue ``gpu``).

    Idempotent: when the run of this model on this series already has a stored mask, the network is not
    run again (a message redelivered after a worker was killed before it acknowledged).

    Returns:
        The SegmentationRun id, or None when there is nothing to do (the job is finished, or the delivery
        belongs to an earlier dispatch: see :func:`.jobs.claim`).

    Raises:
        Any of :data:`PERMANENT_ERRORS` (invalid image, unusable model), database errors.
    """
    job = claim(job_id, dispatch_id)
    if job is None:
        return None
    job = start_job(job, stage="segmentation")
    # The heartbeat covers the whole stage: loading the model (torch's first import can take long on a
    # busy node), reading the image, the network and storing the mask.
    with heartbeat(job):
        return _segment(job, actor_id=actor_id, correlation_id=correlation_id)


def _segment(job: ProcessingJob, *, actor_id: int | None, correlation_id: str) -> int:
    actor, cid = job_context(job, actor_id, correlation_id)
    series = ImagingSeries.objects.select_related("timepoint__patient__trial").get(pk=job.params["series_id"])
    progress(job, 5, "loading model")
    # The trial's active model (or the demo model in a demo trial); anything else fails the job clearly.
    # A model registered on first use is registered by the system, whoever uploaded the series.
    model, version = load_trial_model(series.timepoint.patient.trial, actor=None, correlation_id=cid)
    run = get_or_create_run(series, version, actor=actor, correlation_id=cid)
    if _mask_reusable(run):
        progress(job, 60, "segmentation", "segmentation already stored; reused")
        return run.pk
    progress(job, 10, "segmentation", f"{model.config.name} {model.config.version}")
    started = timezone.now()
    result = segment_series(series, model)
    progress(job, 55, "storing segmentation", f"{len(result.lesions)} lesion(s) found")
    run = record_segmentation(
        series,
        version,
        result.labels,
        # "cpu/openvino", "cpu/onnx", "cpu/torch", "cuda/torch": the run records which backend produced its mask.
        device=result.runtime,
        timings_s={k: round(v, 3) for k, v in result.timings_s.items()},
        started_at=started,
        actor=actor,
        correlation_id=cid,
        labelled=True,
        findings=stage_findings(result),
    )
    progress(job, 60, "segmentation", f"{len(result.lesions)} lesion(s) found")
    return run.pk


__all__ = ["get_or_create_run", "record_segmentation", "run_segmentation_stage", "stage_findings"]
