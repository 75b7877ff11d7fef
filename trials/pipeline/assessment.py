"""The RANO-BM assessment of a patient from its stored rows: every visit, both criteria, re-run after any
change that can alter a response.

:func:`reassess_patient` builds the engine's input from the stored observations and the reader's inputs
(:func:`_visit_inputs`), runs ``rano.response.assess`` under RANO-BM (diameters) and volumetric criteria,
and stores a new draft ``Assessment`` (source ``ai``) wherever a visit's result changed; unchanged
results keep their row and its signature. Radiologists' overrides count as the visit's response for the
rest of the patient (confirmation, best overall response, progression date: rano-bm.md section 7).
A change of a trial's criteria settings re-assesses every patient in a background job
(:func:`run_trial_reassessment`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.contrib.contenttypes.models import ContentType
from django.db import transaction

from rano import ENGINE_VERSION
from rano import response as engine
from rano.errors import RanoError
from rano.match import lesion_number
from rano.measure import Geometry
from rano.settings import ResponseSettings
from trials.audit import new_correlation_id, snapshot
from trials.choices import (
    AssessmentSource,
    AssessmentStatus,
    ClinicalStatus,
    Criteria,
    JobKind,
    JobState,
    LesionRole,
    ResponseChoices,
    RunStatus,
)
from trials.exceptions import InvalidInputError
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
from trials.pipeline.jobs import claim, job_context, progress
from trials.records.assessments import create_assessment
from trials.records.jobs import finish_job, start_job
from trials.records.lesions import update_lesion
from trials.rules import too_small_flag_applies


def _slice_spacing_mm(series: ImagingSeries) -> float | None:
    """Spacing along the index axis closest to the physical superior-inferior axis (rano-bm.md 2)."""
    if not series.spacing_mm or not series.direction:
        return None
    geometry = Geometry(
        tuple(series.spacing_mm), tuple(series.origin_mm or (0, 0, 0)), tuple(series.direction)
    )
    axis, _angle = geometry.axial_axis()
    return float(series.spacing_mm[axis])


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
            series__timepoint__patient=patient, status=RunStatus.SUCCEEDED, is_shadow=False
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
    if obs.present or obs.merged_into is None or obs.merged_into_id not in present:
        return None
    return obs.merged_into.label


#: Fields that make a visit's result: a new row is written only when one of them changes (the nadir
#: visit is compared by id, a reader's comment is not the rules' result).
_COMPARED_FIELDS = tuple(f for f in Assessment.RESULT_FIELDS if f not in ("nadir_timepoint", "comment"))


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
    """Whether a stored row holds the same result as ``values`` (then no new row is written)."""
    if row is None:
        return False
    after = snapshot(Assessment(**{k: v for k, v in values.items()}), _COMPARED_FIELDS)
    before = snapshot(row, _COMPARED_FIELDS)
    nadir = values["nadir_timepoint"]
    return before == after and row.nadir_timepoint_id == (nadir.pk if nadir is not None else None)


def _engine_row(current: Assessment | None) -> Assessment | None:
    """The rules engine's latest result behind the current row (the row a radiologist's override
    superseded): source ``ai`` or ``edited``."""
    while current is not None and current.source == AssessmentSource.RADIOLOGIST:
        current = current.supersedes
    return current


def _visit_models(patient: Patient) -> dict[int, ModelVersion]:
    """Visit id -> the model whose latest succeeded segmentation of the visit the engine assesses."""
    runs = (
        SegmentationRun.objects.filter(
            series__timepoint__patient=patient, status=RunStatus.SUCCEEDED, is_shadow=False
        )
        .select_related("model_version", "series")
        .order_by("finished_at", "pk")
    )
    return {run.series.timepoint_id: run.model_version for run in runs}


#: Stored criteria -> the engine's (the stored values are Django-style identifiers).
ENGINE_CRITERIA: dict[str, engine.Criteria] = {
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


def derive_override(assessment: Assessment, overall_response: str) -> dict[str, Any]:
    """Confirmation, best overall response and progression date of a visit whose response a reader
    overrides, derived with the reader's response (rano-bm.md section 7) instead of copied from the
    superseded row.

    Locks the patient row (call it inside the override's transaction). Returns ``{}`` when the visit
    is not (yet) assessable or the criteria or response is not one the engine knows (the override's own
    validation refuses the latter).

    Raises:
        InvalidInputError: the stored data cannot be assessed (the engine's message).
    """
    timepoint = assessment.timepoint
    patient = (
        Patient.objects.select_for_update(of=("self",)).select_related("trial").get(pk=timepoint.patient_id)
    )
    settings_ = patient.trial.response_settings()
    inputs = _visit_inputs(patient, settings_)
    label = timepoint.visit_label
    if (
        inputs is None
        or label not in inputs.timepoints
        or assessment.criteria not in ENGINE_CRITERIA
        or overall_response not in ResponseChoices.values
    ):
        return {}
    overrides = {**_overridden_responses(patient)[assessment.criteria], label: overall_response}
    index = [v.visit for v in inputs.visits].index(label)
    criteria = ENGINE_CRITERIA[assessment.criteria]
    try:
        full = engine.assess(inputs.visits, inputs.reader, settings_, criteria, overall_overrides=overrides)
        prefix = engine.assess(
            inputs.visits[: index + 1], inputs.reader, settings_, criteria, overall_overrides=overrides
        )
    except RanoError as exc:
        raise InvalidInputError(f"{patient.subject_id} cannot be assessed: {exc}") from exc
    return {
        "confirmed": bool(full.visits[index].confirmed),
        "best_overall_response": str(prefix.best_overall_response or ""),
        "progression_date": prefix.progression_date,
    }


@transaction.atomic
def reassess_patient(
    patient: Patient,
    *,
    from_timepoint: Timepoint | None,
    actor: Any | None,
    reason: str = "",
    correlation_id: str = "",
    edited: bool,
) -> list[Assessment]:
    """Recompute the engine's assessments of a patient after a change at ``from_timepoint``.

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
        edited: The change is a person's edit of what the engine rests on (lesions, observations,
            flags, a visit's clinical data, an override at another visit): the new rows are of source
            ``edited``, a separate result, and the AI's own answer (source ``ai``) stays as delivered.
            False for the pipeline's analysis of new imaging and a change of the trial's criteria
            settings: new rows are the AI's answer (``ai``), except at a visit whose latest engine result
            already rests on edits (the edits still hold), which stays ``edited``.

    Returns:
        The Assessment rows created (empty when nothing changed or the baseline is not analysed yet).

    Raises:
        InvalidInputError: The stored data cannot be assessed (e.g. two visits on one date, a reader
            selection of more targets than the protocol allows); the engine's message.
    """
    correlation_id = correlation_id or new_correlation_id()
    patient = Patient.objects.select_for_update(of=("self",)).select_related("trial").get(pk=patient.pk)
    if from_timepoint is not None and from_timepoint.patient_id != patient.pk:
        raise InvalidInputError("The visit to re-assess from belongs to another patient.")
    settings_ = patient.trial.response_settings()
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
    models_by_visit = _visit_models(patient)
    current_rows = {
        (row.timepoint_id, row.criteria): row
        for row in Assessment.objects.filter(timepoint__patient=patient, is_current=True)
    }

    def run(visits: list[engine.VisitInput], criteria: str, own: str) -> engine.Assessment:
        # The radiologists' responses at the other visits (a visit's own AI row is the rules' answer).
        others = {label: r for label, r in overrides[criteria].items() if label != own}
        return engine.assess(
            visits, inputs.reader, settings_, ENGINE_CRITERIA[criteria], overall_overrides=others or None
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
            latest = _engine_row(current_rows.get((timepoint.pk, criteria)))
            if _same_result(latest, values):
                continue
            on_edits = edited or (latest is not None and latest.source == AssessmentSource.EDITED)
            created.append(
                create_assessment(
                    timepoint,
                    criteria=criteria,
                    source=AssessmentSource.EDITED if on_edits else AssessmentSource.AI,
                    model_version=models_by_visit.get(timepoint.pk),
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
            update_lesion(
                lesion, role=wanted, actor=None, reason="target selection by the rules engine",
                correlation_id=correlation_id,
            )  # fmt: skip
    return created


def run_trial_reassessment(
    job_id: int, *, dispatch_id: str = "", actor_id: int | None = None, correlation_id: str = ""
) -> dict[str, Any] | None:
    """Run a re-assessment job (queue ``default``): every patient of the trial, with its settings now.

    Idempotent: re-assessment creates rows only where a result changed, so a redelivered job repeats
    nothing.

    Returns:
        ``{"patients": n, "assessments_created": k}``, or None when there is nothing to do (see
        :func:`.jobs.claim`).
    """
    job = claim(job_id, dispatch_id)
    if job is None:
        return None
    job = start_job(job, stage="re-assessment")
    actor, cid = job_context(job, actor_id, correlation_id)
    trial = Trial.objects.get(pk=job.params["trial_id"])
    patients = list(trial.patients.order_by("pk"))
    created = 0
    for index, patient in enumerate(patients, start=1):
        created += len(
            reassess_patient(
                patient, from_timepoint=None, actor=actor, reason="trial criteria settings changed",
                correlation_id=cid, edited=False,
            )
        )  # fmt: skip
        progress(
            job, min(99, 100 * index // len(patients)), "re-assessment", f"{index}/{len(patients)} patients"
        )
    result = {"patients": len(patients), "assessments_created": created}
    finish_job(job, result=result, message=f"{len(patients)} patient(s) re-assessed", actor=actor,
                        correlation_id=cid)  # fmt: skip
    return result


__all__ = ["ENGINE_CRITERIA", "derive_override", "reassess_patient", "run_trial_reassessment"]
