"""Shadow runs (queue ``gpu``): a trial's candidate model segments each new visit next to the active one.

When a trial has a model in shadow (:func:`trials.actions.governance.start_shadow`), the analysis stage
of each visit's pipeline job, once it has finished, queues a *shadow job* (kind ``shadow``) for the
visit's series: a job of its own, so the visit's pipeline never waits for the candidate nor fails with it.
The shadow job runs the candidate through :func:`~trials.pipeline.segmentation.segment_series`, the
segmentation stage's own path with the trial's settings, and stores a ``SegmentationRun`` marked
``is_shadow``: its component mask (``masks/run_<id>/labels.nii.gz``) and its lesion table (one :class:`rano.measure.LesionMeasurement`
per lesion, as ``segment_image`` measures them). It creates no lesion, observation or assessment: the
production queries leave shadow runs out, so a shadow run is never a visit's result. A failure fails the
shadow job and run only.

After each shadow run the job recomputes the candidate's agreement with the active model on the trial's
visits that have both runs (:func:`shadow_agreement`), stored on the candidate's ``TrialModel`` row and
shown on the trial's quality page: lesion-wise detection of the candidate against the active model's
lesions (:func:`rano.metrics.lesion_detection`), total volume agreement (CCC and Bland-Altman,
:func:`rano.validation.paired_agreement`), and the RANO-BM responses the pure engine gives on the
candidate's lesions (:func:`rano.pipeline.observe_visits` then :func:`rano.response.assess`, the path
of ``rano.validation.response_agreement``) against the AI's delivered responses (confusion table, percent
identical, :func:`rano.metrics.cohens_kappa`).
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from typing import Any

import numpy as np
import SimpleITK as sitk
from django.utils import timezone

from rano import response as engine
from rano.errors import RanoError
from rano.metrics import cohens_kappa, lesion_detection
from rano.pipeline import observe_visits
from rano.validation import paired_agreement
from trials.choices import ResponseChoices, RunStatus, TrialModelStatus
from trials.exceptions import DuplicateError
from trials.models import ImagingSeries, ProcessingJob, SegmentationRun, Timepoint, TrialModel
from trials.pipeline.errors import PERMANENT_ERRORS, user_message
from trials.pipeline.jobs import claim, heartbeat, job_context, progress
from trials.pipeline.queue import create_shadow_job
from trials.pipeline.registry import load_version_model
from trials.pipeline.segmentation import segment_series, stage_findings
from trials.quality import ai_answer
from trials.records.base import update_row
from trials.records.imaging import create_segmentation_run, update_segmentation_run
from trials.records.jobs import finish_job, start_job
from trials.storage import RUN_LABELS, read_image_field, run_file_name, write_label_image

logger = logging.getLogger(__name__)


def shadow_candidate(trial_id: int) -> TrialModel | None:
    """The trial's model in shadow, or None."""
    return (
        TrialModel.objects.filter(trial_id=trial_id, status=TrialModelStatus.SHADOW)
        .select_related("model_version", "trial")
        .first()
    )


def queue_shadow_run(
    series: ImagingSeries, *, actor: Any | None, correlation_id: str = ""
) -> ProcessingJob | None:
    """Queue the shadow job of a series whose visit the active model has just analysed; None when its
    trial has no model in shadow."""
    candidate = shadow_candidate(series.timepoint.patient.trial_id)
    if candidate is None:
        return None
    return create_shadow_job(series, candidate, actor=actor, correlation_id=correlation_id)


def run_shadow_stage(
    job_id: int, *, dispatch_id: str = "", actor_id: int | None = None, correlation_id: str = ""
) -> dict[str, Any] | None:
    """Run a shadow job: segment its series with the candidate, store the shadow run, recompute the
    candidate's agreement with the active model.

    Returns:
        The job's result, or None when there is nothing to do (see :func:`.jobs.claim`).

    Raises:
        Any of :data:`PERMANENT_ERRORS` (an unusable model or image; the shadow run is failed with it).
    """
    job = claim(job_id, dispatch_id)
    if job is None:
        return None
    job = start_job(job, stage="shadow segmentation")
    with heartbeat(job):
        return _shadow(job, actor_id=actor_id, correlation_id=correlation_id)


def _shadow(job: ProcessingJob, *, actor_id: int | None, correlation_id: str) -> dict[str, Any]:
    actor, cid = job_context(job, actor_id, correlation_id)
    series = ImagingSeries.objects.select_related("timepoint__patient__trial").get(pk=job.params["series_id"])
    candidate = TrialModel.objects.select_related("model_version", "trial").get(
        pk=job.params["trial_model_id"]
    )
    version = candidate.model_version
    existing = SegmentationRun.objects.filter(series=series, model_version=version).first()
    skipped = ""
    if existing is not None and not existing.is_shadow:
        # The candidate already made the visit's own run (it was active then): nothing to compare.
        skipped = "the candidate made the visit's own run"
    elif candidate.status != TrialModelStatus.SHADOW and existing is None:
        skipped = "the shadow was stopped before the job ran"
    if skipped:
        finish_job(job, result={"skipped": skipped}, message=skipped, actor=actor, correlation_id=cid)
        return {"skipped": skipped}
    run = existing or _create_shadow_run(series, candidate, actor=actor, correlation_id=cid)
    if run.status != RunStatus.SUCCEEDED:
        try:
            run = _segment(job, run, series, candidate, actor=actor, correlation_id=cid)
        except PERMANENT_ERRORS as exc:
            update_segmentation_run(
                run,
                status=RunStatus.FAILED,
                error=user_message(exc),
                finished_at=timezone.now(),
                actor=None,
                reason="shadow segmentation failed",
                correlation_id=cid,
            )
            raise
    progress(job, 80, "shadow agreement")
    agreement = shadow_agreement(candidate)
    update_row(
        candidate,
        {"shadow_agreement": agreement},
        allowed=["shadow_agreement"],
        actor=None,
        reason=f"shadow agreement recomputed after run {run.pk}",
        correlation_id=cid,
    )
    result = {"run_id": run.pk, "lesions": len(run.lesion_table), "visits_compared": len(agreement["visits"])}
    finish_job(
        job,
        result=result,
        message=f"shadow run of {version}: {len(run.lesion_table)} lesion(s)",
        actor=actor,
        correlation_id=cid,
    )
    return result


def _create_shadow_run(
    series: ImagingSeries, candidate: TrialModel, *, actor: Any | None, correlation_id: str
) -> SegmentationRun:
    try:
        return create_segmentation_run(
            series,
            candidate.model_version,
            actor=actor,
            reason=f"shadow run of the candidate {candidate.model_version}",
            correlation_id=correlation_id,
            status=RunStatus.RUNNING,
            is_shadow=True,
        )
    except DuplicateError:  # a concurrent delivery created it: the constraint decides
        return SegmentationRun.objects.get(series=series, model_version=candidate.model_version)


def _segment(
    job: ProcessingJob,
    run: SegmentationRun,
    series: ImagingSeries,
    candidate: TrialModel,
    *,
    actor: Any | None,
    correlation_id: str,
) -> SegmentationRun:
    """The candidate on the series, as the segmentation stage runs the active model; the run stored."""
    progress(job, 5, "loading model")
    model = load_version_model(candidate.model_version)
    progress(job, 10, "shadow segmentation", f"{model.config.name} {model.config.version}")
    started = timezone.now()
    result = segment_series(series, model)
    progress(job, 60, "storing shadow segmentation", f"{len(result.lesions)} lesion(s) found")
    name = run_file_name(run, RUN_LABELS)
    write_label_image(result.labels, name)
    return update_segmentation_run(
        run,
        mask_file=name,
        lesion_table=[lesion.to_dict() for lesion in result.lesions],
        findings=stage_findings(result),
        device=result.runtime,
        timings_s={k: round(v, 3) for k, v in result.timings_s.items()},
        started_at=started,
        finished_at=timezone.now(),
        status=RunStatus.SUCCEEDED,
        error="",
        actor=actor,
        reason="shadow segmentation stored",
        correlation_id=correlation_id,
    )


# ------------------------------------------------------------------------------------------- agreement


def _pairs(candidate: TrialModel) -> list[tuple[SegmentationRun, SegmentationRun]]:
    """(active run, shadow run) of each visit of the trial segmented by both, in patient and date order.

    The active run is the visit's own latest analysed run of the same series (the visit's result)."""
    shadow_runs = (
        SegmentationRun.objects.filter(
            is_shadow=True,
            status=RunStatus.SUCCEEDED,
            model_version=candidate.model_version,
            series__timepoint__patient__trial=candidate.trial_id,
        )
        .exclude(mask_file="")
        .select_related("series__timepoint__patient")
    )
    by_series = {run.series_id: run for run in shadow_runs}
    active: dict[int, SegmentationRun] = {}
    for run in (
        SegmentationRun.objects.filter(series_id__in=by_series, is_shadow=False, status=RunStatus.SUCCEEDED)
        .exclude(mask_file="")
        .order_by("finished_at", "pk")
    ):
        active[run.series_id] = run  # the latest wins
    pairs = [(active[sid], shadow) for sid, shadow in by_series.items() if sid in active]
    return sorted(
        pairs,
        key=lambda p: (p[1].series.timepoint.patient.subject_id, p[1].series.timepoint.scan_date, p[1].pk),
    )


def shadow_agreement(candidate: TrialModel) -> dict[str, Any]:
    """The candidate's agreement with the active model on the trial's visits that have both runs.

    Returns:
        JSON-ready: ``visits`` (per visit: lesion counts, detections, total volumes in mm3),
        ``detection`` (sums over visits: active and candidate lesions, active lesions the candidate
        overlaps, candidate lesions overlapping an active one; sensitivity, PPV, F1 of the candidate
        against the active model), ``volume`` (Lin's CCC and Bland-Altman bias and 95 % limits of the
        candidate's total volume minus the active one's, mm3) and ``responses`` (per follow-up visit the
        AI's delivered RANO-BM response and the candidate's; categories, confusion table with rows AI
        and columns candidate, percent identical, Cohen's kappa).
    """
    pairs = _pairs(candidate)
    visits: list[dict[str, Any]] = []
    for active, shadow in pairs:
        timepoint = shadow.series.timepoint
        active_mask = sitk.GetArrayFromImage(read_image_field(active.mask_file)) != 0
        labels = read_image_field(shadow.mask_file)
        detection = lesion_detection(
            sitk.GetArrayViewFromImage(labels) != 0, active_mask, labels.GetSpacing()
        )
        voxel_mm3 = float(np.prod(labels.GetSpacing()))
        visits.append(
            {
                "timepoint_id": timepoint.pk,
                "subject_id": timepoint.patient.subject_id,
                "visit_label": timepoint.visit_label,
                "scan_date": timepoint.scan_date.isoformat(),
                "active_run_id": active.pk,
                "shadow_run_id": shadow.pk,
                "active_lesions": detection.reference_lesions,
                "candidate_lesions": detection.predicted_lesions,
                "detected_active_lesions": detection.detected_reference_lesions,
                "true_positive_candidate_lesions": detection.true_positive_predictions,
                "active_volume_mm3": float(active_mask.sum()) * voxel_mm3,
                "candidate_volume_mm3": float(sum(row["volume_mm3"] for row in shadow.lesion_table)),
            }
        )
    return {
        "computed_at": timezone.now().isoformat(),
        "model": str(candidate.model_version),
        "visits": visits,
        "detection": _detection(visits),
        "volume": _volume(visits),
        "responses": _responses(candidate, pairs),
    }


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def _detection(visits: list[dict[str, Any]]) -> dict[str, Any]:
    totals = {
        key: sum(v[key] for v in visits)
        for key in (
            "active_lesions",
            "candidate_lesions",
            "detected_active_lesions",
            "true_positive_candidate_lesions",
        )
    }
    sensitivity = _ratio(totals["detected_active_lesions"], totals["active_lesions"])
    ppv = _ratio(totals["true_positive_candidate_lesions"], totals["candidate_lesions"])
    f1 = None
    if sensitivity is not None and ppv is not None:
        f1 = 2 * sensitivity * ppv / (sensitivity + ppv) if sensitivity + ppv else 0.0
    return {**totals, "sensitivity": sensitivity, "ppv": ppv, "f1": f1}


def _volume(visits: list[dict[str, Any]]) -> dict[str, Any]:
    agreement = paired_agreement(
        [v["active_volume_mm3"] for v in visits], [v["candidate_volume_mm3"] for v in visits]
    )
    return {
        "n": agreement.n,
        "ccc": agreement.ccc,
        "bias_mm3": agreement.bias,
        "lower_limit_mm3": agreement.lower_limit,
        "upper_limit_mm3": agreement.upper_limit,
    }


def _responses(candidate: TrialModel, pairs: list[tuple[SegmentationRun, SegmentationRun]]) -> dict[str, Any]:
    """The engine on the candidate's lesions of each patient whose baseline it segmented, visits in date
    order, against the AI's delivered response of each follow-up visit."""
    settings_ = candidate.trial.response_settings()
    by_patient: dict[int, list[SegmentationRun]] = defaultdict(list)
    for _, shadow in pairs:
        by_patient[shadow.series.timepoint.patient_id].append(shadow)
    ai = dict(
        Timepoint.objects.filter(pk__in=[s.series.timepoint_id for _, s in pairs])
        .annotate(ai=ai_answer("pk"))
        .values_list("pk", "ai")
    )
    rows: list[dict[str, str]] = []
    skipped = 0
    errors: list[str] = []
    for runs in by_patient.values():
        runs.sort(key=lambda r: (r.series.timepoint.scan_date, r.pk))
        if not runs[0].series.timepoint.is_baseline:
            skipped += 1  # the candidate did not see this patient's baseline: no response of its own
            continue
        try:
            observed = observe_visits(
                [read_image_field(r.mask_file) for r in runs],
                [read_image_field(r.series.volume_file) for r in runs],
                settings_,
            )
        except RanoError as exc:  # one patient's visits that cannot be matched leave the others' stand
            errors.append(f"{runs[0].series.timepoint.patient.subject_id}: {exc}")
            continue
        inputs = [
            engine.VisitInput(
                r.series.timepoint.visit_label,
                r.series.timepoint.scan_date,
                o.observations,
                steroids=engine.Steroids(r.series.timepoint.corticosteroid_status),
                clinical_status=engine.ClinicalStatus(r.series.timepoint.clinical_status),
            )
            for r, o in zip(runs, observed, strict=True)
        ]
        result = engine.assess(inputs, settings=settings_, criteria=engine.Criteria.RANO_BM)
        for run, visit in zip(runs[1:], result.visits[1:], strict=True):
            delivered = ai.get(run.series.timepoint_id) or ""
            if not delivered:
                continue
            rows.append(
                {
                    "subject_id": run.series.timepoint.patient.subject_id,
                    "visit_label": run.series.timepoint.visit_label,
                    "ai": delivered,
                    "candidate": str(visit.overall_response.value) if visit.overall_response else "",
                }
            )
    present = {r["ai"] for r in rows} | {r["candidate"] for r in rows}
    categories = [c for c in ResponseChoices.values if c in present] + sorted(
        present - set(ResponseChoices.values)
    )
    counts = Counter((r["ai"], r["candidate"]) for r in rows)
    same = sum(r["ai"] == r["candidate"] for r in rows)
    return {
        "pairs": rows,
        "patients_without_shadow_baseline": skipped,
        "patients_not_matched": errors,
        "categories": categories,
        "confusion": [[counts.get((a, c), 0) for c in categories] for a in categories],
        "percent_identical": 100.0 * same / len(rows) if rows else None,
        "kappa": cohens_kappa([r["ai"] for r in rows], [r["candidate"] for r in rows]) if rows else None,
    }


__all__ = ["queue_shadow_run", "run_shadow_stage", "shadow_agreement", "shadow_candidate"]
