"""The validation job (queue ``gpu``): a model version run on the signed visits of a trial, compared with
the radiologists' final lesions, its report stored with the version (README "Validating a model").

The reference of a visit is what a radiologist signed: every present observation of a lesion not dropped
as a false positive, AI contours as kept or edited and lesions the reader added, at a visit whose current
RANO-BM assessment is confirmed or overridden; the reference response of a follow-up is the response the
radiologist signed there (:func:`signed_response`). The model runs through :func:`segment_image`, the path of
the segmentation stage; the metrics and the report are :func:`rano.validation.validate` and
:mod:`segmentation.validation_report`, as ``bm-validate`` writes them.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from typing import Any

from django.conf import settings

from rano.validation import ValidationCase, validate
from segmentation.inference import InferenceOptions, segment_image
from segmentation.validation_report import case_slice, write_report
from trials.exceptions import InvalidStateError
from trials.models import ModelVersion, Timepoint, Trial
from trials.pipeline.jobs import claim, heartbeat, job_context, progress
from trials.pipeline.references import reference_case, signed_assessment, signed_visits
from trials.pipeline.registry import load_version_model
from trials.pipeline.training_sets import training_patients
from trials.records.imaging import store_validation_report
from trials.records.jobs import finish_job, start_job


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


def signed_response(visit: Timepoint) -> str | None:
    """The RANO-BM response a radiologist signed at the visit (confirmed or overridden), or None."""
    signed = signed_assessment(visit)
    return (signed.overall_response or None) if signed is not None else None


def _validate(job: Any, *, actor_id: int | None, correlation_id: str) -> dict[str, Any]:
    actor, cid = job_context(job, actor_id, correlation_id)
    trial = Trial.objects.get(pk=job.params["trial_id"])
    version = ModelVersion.objects.get(pk=job.params["model_version_id"])
    visits = signed_visits(trial)
    if not visits:
        raise InvalidStateError(f"Trial {trial.code} has no visit signed by a radiologist to validate on.")
    trained_on = training_patients(version, trial)
    left_out = {visit.patient.subject_id for visit in visits} & trained_on
    visits = [visit for visit in visits if visit.patient.subject_id not in trained_on]
    if not visits:
        raise InvalidStateError(
            f"Every signed visit of {trial.code} belongs to a patient {version} was trained on: a model is "
            "never validated on its own training patients. Sign visits of other patients, or export the "
            "training set with patients held out."
        )
    progress(job, 5, "loading model")
    model = load_version_model(version)  # the service's backend, checked against the version's identity
    options = InferenceOptions(
        device=str(getattr(settings, "PIPELINE_DEVICE", "auto")),
        backend=str(getattr(settings, "PIPELINE_BACKEND", "")) or None,
    )
    cases = []
    slices = {}
    for index, visit in enumerate(visits, start=1):
        image, reference = reference_case(visit)
        segmented = segment_image(image, model, options)
        slices[f"{visit.patient.subject_id}/{visit.visit_label}"] = case_slice(
            image, reference, segmented.mask
        )
        cases.append(
            ValidationCase(
                f"{visit.patient.subject_id}/{visit.visit_label}",
                reference,
                segmented.mask,
                visit.patient.subject_id,
                visit.scan_date,
                image=image,
                reference_response=signed_response(visit),
            )
        )
        progress(job, 5 + 85 * index // len(visits), "validation", f"{index}/{len(visits)} visits")
    min_volume = model.config.postprocessing.min_lesion_volume_mm3
    outcome = validate(cases, min_lesion_volume_mm3=min_volume, settings=trial.response_settings())
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
    if left_out:
        data["training_patients_left_out"] = len(left_out)
    with tempfile.TemporaryDirectory() as folder:
        paths = write_report(
            outcome, folder, model=identity, data=data, created=dt.datetime.now(dt.UTC), slices=slices
        )
        html = paths["report.html"].read_bytes()
    summary: dict[str, Any] = {"aggregate": outcome.aggregate, "ci95": outcome.ci95, "data": data}
    if outcome.responses is not None and outcome.responses.pairs:  # counts only: no dates, no patients
        summary["responses"] = {
            "reference": "the responses the radiologists signed",
            "kappa": outcome.responses.kappa,
            "categories": list(outcome.responses.categories),
            "confusion": [list(row) for row in outcome.responses.confusion],
        }
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


__all__ = ["reference_case", "run_validation", "signed_visits"]  # the first and last: see .references
