"""The validation job (queue ``gpu``): a model version run on the signed visits of a trial, compared with
the radiologists' final lesions, its report stored with the version (README "Validating a model").

The reference of a visit is what a radiologist signed: every present observation of a lesion not dropped
as a false positive, AI contours as kept or edited and lesions the reader added, at a visit whose current
RANO-BM assessment is confirmed or overridden. The model runs through :func:`segment_image`, the path of
the segmentation stage; the metrics and the report are :func:`rano.validation.validate` and
:mod:`segmentation.validation_report`, as ``bm-validate`` writes them.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from django.conf import settings

from rano.validation import ValidationCase, validate
from segmentation.inference import InferenceOptions, segment_image
from segmentation.model import load_model
from segmentation.modeldir import config_sha256
from segmentation.validation_report import write_report
from trials.choices import AssessmentStatus, Criteria
from trials.exceptions import InvalidStateError, MissingImageError
from trials.models import ModelVersion, Timepoint, Trial
from trials.pipeline.jobs import claim, heartbeat, job_context, progress
from trials.records.imaging import store_validation_report
from trials.records.jobs import finish_job, start_job
from trials.storage import load_observation_mask, load_series_image, same_grid

SIGNED = (AssessmentStatus.CONFIRMED, AssessmentStatus.OVERRIDDEN)


def signed_visits(trial: Trial) -> list[Timepoint]:
    """Visits of the trial whose current RANO-BM assessment a radiologist signed, with a stored series."""
    return list(
        Timepoint.objects.filter(
            patient__trial=trial,
            assessments__is_current=True,
            assessments__criteria=Criteria.RANO_BM,
            assessments__status__in=SIGNED,
            series__volume_file__gt="",
        )
        .distinct()
        .select_related("patient")
        .order_by("patient__subject_id", "scan_date", "pk")
    )


def reference_case(visit: Timepoint) -> tuple[sitk.Image, sitk.Image]:
    """The visit's image and the signed lesion mask on its grid.

    Raises:
        MissingImageError: no stored volume, or a kept lesion without a stored contour.
    """
    series = visit.series.exclude(volume_file="").order_by("-pk").first()
    if series is None:
        raise MissingImageError(f"Visit {visit.visit_label} has no stored series.")
    image = load_series_image(series)
    mask = np.zeros(sitk.GetArrayViewFromImage(image).shape, dtype=bool)
    observations = visit.observations.filter(present=True, lesion__is_false_positive=False).select_related(
        "lesion", "segmentation_run", "timepoint"
    )
    for observation in observations:
        contour = load_observation_mask(observation)
        if not same_grid(contour, image):
            raise MissingImageError(
                f"{observation.lesion.label} at {visit.visit_label} is not on the series grid."
            )
        mask |= sitk.GetArrayViewFromImage(contour) != 0
    reference = sitk.GetImageFromArray(mask.astype(np.uint8))
    reference.CopyInformation(image)
    return image, reference


def run_validation(
    job_id: int, *, dispatch_id: str = "", actor_id: int | None = None, correlation_id: str = ""
) -> dict[str, Any] | None:
    """Run a validation job: segment every signed visit, validate, store the report with the version.

    Returns:
        The aggregate metrics, or None when there is nothing to do (see :func:`.jobs.claim`).

    Raises:
        InvalidStateError: the trial has no signed visit, or the version's directory no longer holds its
            weights and configuration. ModelError, ImagingError: unusable model or image.
    """
    job = claim(job_id, dispatch_id)
    if job is None:
        return None
    job = start_job(job, stage="validation")
    with heartbeat(job):
        return _validate(job, actor_id=actor_id, correlation_id=correlation_id)


def _validate(job: Any, *, actor_id: int | None, correlation_id: str) -> dict[str, Any]:
    actor, cid = job_context(job, actor_id, correlation_id)
    trial = Trial.objects.get(pk=job.params["trial_id"])
    version = ModelVersion.objects.get(pk=job.params["model_version_id"])
    visits = signed_visits(trial)
    if not visits:
        raise InvalidStateError(f"Trial {trial.code} has no visit signed by a radiologist to validate on.")
    progress(job, 5, "loading model")
    backend = str(getattr(settings, "PIPELINE_BACKEND", "")) or None
    model = load_model(Path(version.weights_path), backend=backend)
    if (model.config.weights_sha256, config_sha256(model.config.to_dict())) != (
        version.weights_sha256,
        version.config_sha256,
    ):
        raise InvalidStateError(
            f"The model directory of {version} no longer holds its weights and configuration."
        )
    options = InferenceOptions(device=str(getattr(settings, "PIPELINE_DEVICE", "auto")), backend=backend)
    cases = []
    for index, visit in enumerate(visits, start=1):
        image, reference = reference_case(visit)
        segmented = segment_image(image, model, options)
        cases.append(
            ValidationCase(
                f"{visit.patient.subject_id}/{visit.visit_label}",
                reference,
                segmented.mask,
                visit.patient.subject_id,
                visit.scan_date,
            )
        )
        progress(job, 5 + 85 * index // len(visits), "validation", f"{index}/{len(visits)} visits")
    min_volume = model.config.postprocessing.min_lesion_volume_mm3
    outcome = validate(cases, min_lesion_volume_mm3=min_volume)
    identity = {
        "name": version.name,
        "version": version.version,
        "label": model.config.label,
        "weights_sha256": version.weights_sha256,
        "config_sha256": version.config_sha256,
        "not_for_clinical_use": version.is_demo,
        "intended_use": version.intended_use,
    }
    data = {
        "source": "signed visits of a trial",
        "trial": trial.code,
        "cases": len(cases),
        "min_lesion_volume_mm3": min_volume,
    }
    with tempfile.TemporaryDirectory() as folder:
        paths = write_report(outcome, folder, model=identity, data=data, created=dt.datetime.now(dt.UTC))
        html = paths["report.html"].read_bytes()
    summary = {"aggregate": outcome.aggregate, "ci95": outcome.ci95, "data": data}
    store_validation_report(version, report_html=html, summary=summary, actor=actor, correlation_id=cid)
    result = {"cases": len(cases), "dice": outcome.aggregate.get("dice")}
    finish_job(
        job,
        result=result,
        message=f"{version} validated on {len(cases)} signed visit(s) of {trial.code}",
        actor=actor,
        correlation_id=cid,
    )
    return result


__all__ = ["reference_case", "run_validation", "signed_visits"]
