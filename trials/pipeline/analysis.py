"""Stage 3 of a series (queue ``default``): measure its lesions, match them across the patient's visits,
store lesions and observations, export the DICOM contours and re-assess the patient.

:func:`analyse_run` measures the run's components (``rano.measure``), registers the visit rigidly to the
patient's common space (the grid of the first analysed series; ``rano.match.register_rigid``), matches
the components against every other visit's lesions there (``rano.match``), keeps the registration on the
series (``ImagingSeries.registration``, for the viewer's registered comparison) and stores ``Lesion`` /
``LesionObservation`` rows (source ``ai``; a reader's observation is never overwritten), all in one
transaction under a lock on the patient row: two visits of one patient are never matched at the same
time, and a crash stores nothing. The stage (:func:`run_analysis_stage`) then writes the RTSTRUCT and SEG
(:mod:`.contours`) and re-assesses the patient from this visit on (:mod:`.assessment`).

A visit analysed after later ones (late arrival) is matched against all of them; each later visit gets
an "absent" observation of every lesion first found at the late visit (:func:`_complete_later_visits`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import SimpleITK as sitk
from django.db import transaction
from django.utils import timezone

from rano.match import (
    Footprint,
    MatchKind,
    footprints,
    lesion_number,
    match_components,
    register_rigid,
    to_reference,
    transform_parameters,
)
from rano.measure import Geometry, LesionMeasurement
from rano.tracking import TrackedVisit, track_visit
from segmentation.errors import ImagingError
from trials.choices import DeliveryTrigger, JobState, LesionRole, ObservationSource, RunStatus
from trials.exceptions import InvalidStateError
from trials.models import (
    ImagingSeries,
    Lesion,
    LesionObservation,
    Patient,
    ProcessingJob,
    SegmentationRun,
    Timepoint,
)
from trials.pipeline.assessment import reassess_patient
from trials.pipeline.contours import export_run_contours
from trials.pipeline.delivery import queue_deliveries
from trials.pipeline.jobs import claim, heartbeat, job_context, progress
from trials.pipeline.shadow import queue_shadow_run
from trials.records.imaging import update_segmentation_run, update_series
from trials.records.jobs import finish_job, start_job
from trials.records.lesions import (
    create_lesion,
    measurement_fields,
    next_lesion_label,
    record_observation,
    update_lesion,
    update_observation,
)
from trials.storage import (
    LESION_MAP,
    LESION_MAP_REFERENCE,
    read_image_field,
    run_file_name,
    run_output_path,
    write_label_image,
)

logger = logging.getLogger(__name__)


def analysed_runs(patient: Patient) -> list[SegmentationRun]:
    """The patient's analysed runs (status succeeded, with a mask), in the order they finished."""
    return list(
        SegmentationRun.objects.filter(
            series__timepoint__patient=patient, status=RunStatus.SUCCEEDED, is_shadow=False
        )
        .exclude(mask_file="")
        .select_related("series__timepoint")
        .order_by("finished_at", "pk")
    )


def _observation_values(parts: list[LesionMeasurement], run: SegmentationRun) -> dict[str, Any]:
    """The AI observation of one lesion from its component(s); fragments of a split lesion are summed."""
    main = max(parts, key=lambda p: p.longest_diameter_mm)
    return {
        "segmentation_run": run,
        "source": ObservationSource.AI,
        "component_label": int(main.label),
        "fragment_count": len(parts),
        **measurement_fields(parts),
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
        return record_observation(
            lesion, timepoint, actor=actor, reason="AI measurement", correlation_id=correlation_id, **values
        )
    if existing.source != ObservationSource.AI:
        return existing  # a reader's edit or manual measurement is never overwritten by the AI
    # actor None: the pipeline's update keeps the source "ai" (a user's edit would make it "edited").
    return update_observation(
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
        path = run_output_path(run, LESION_MAP_REFERENCE)
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


def registration_record(series: ImagingSeries, fixed: ImagingSeries, tracked: TrackedVisit) -> dict[str, Any]:
    """What ``ImagingSeries.registration`` stores: the common-space (``fixed``) to ``series`` transform.

    The viewer composes two of them to show one visit on another's grid (``trials.views.registered``);
    the first analysed series is the common space itself (the identity, no metric).
    """
    if tracked.registration is not None:
        values = tracked.registration.as_dict()
    else:
        values = {**transform_parameters(tracked.transform), "metric_value": None}
    return {"fixed_series_id": fixed.pk, "moving_series_id": series.pk, **values}


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
    runs = analysed_runs(patient)
    if not runs:
        return None
    reference_run = runs[0]
    if reference_run.series.timepoint_id == timepoint.pk:
        reference, transform = image, None
    else:
        reference = read_image_field(reference_run.series.volume_file)
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

    The image half (measure, register to the common space, match, lesion maps) is
    :func:`rano.tracking.track_visit`; this function gives it what the database knows (the common
    space: the grid of the patient's first analysed series; each known lesion's footprint there; the
    next free label; the target roles) and stores what it returns: lesions, observations, and the lesion
    maps (``masks/run_<id>/lesions_ref.nii.gz`` in the common space, for the matching of later visits;
    ``lesions.nii.gz`` on the series' grid, for its RTSTRUCT and SEG).

    Returns:
        A summary: ``{"lesions": {label: kind}, "new": [...], "absent": [...], "timings_s": {...}}``.

    Raises:
        InvalidStateError: The run has no stored mask.
        RanoError: Matching failed (e.g. registration).
    """
    run = (
        SegmentationRun.objects.select_for_update(of=("self",))
        .select_related("series__timepoint__patient__trial")
        .get(pk=run.pk)
    )
    series = run.series
    timepoint = series.timepoint
    patient = (
        Patient.objects.select_for_update(of=("self",)).select_related("trial").get(pk=timepoint.patient_id)
    )
    if run.status == RunStatus.SUCCEEDED:
        return {"already_analysed": True}
    if not run.mask_file:
        raise InvalidStateError(f"Segmentation run {run.pk} has no stored mask to analyse.")
    settings_ = patient.trial.response_settings()
    labels = sitk.Cast(read_image_field(run.mask_file), sitk.sitkUInt32)
    image = read_image_field(series.volume_file)
    runs = analysed_runs(patient)
    reference_run = runs[0] if runs else run
    # The common space is the grid of the patient's first analysed series; the lesions known so far
    # (their footprints there), the next free label and the stored target roles come from the database.
    reference = None if reference_run.pk == run.pk else read_image_field(reference_run.series.volume_file)
    geometry = Geometry.of(reference if reference is not None else image)
    prior, absent_last = _prior_footprints(patient, timepoint, runs, geometry, run)
    # A merged mass goes to the target it overlaps most (rano-bm.md section 3): roles as stored.
    targets = frozenset(
        Lesion.objects.filter(patient=patient, role=LesionRole.TARGET).values_list("label", flat=True)
    )
    tracked = track_visit(
        labels,
        image,
        settings=settings_,
        reference=reference,
        register=True,
        prior=prior,
        next_number=lesion_number(next_lesion_label(patient)),
        absent_last=absent_last,
        targets=targets,
    )
    match, components = tracked.match, tracked.components
    timings = dict(tracked.timings_s)

    t0 = time.perf_counter()
    lesions = {
        lesion.label: lesion
        for lesion in Lesion.objects.filter(patient=patient).select_related("first_seen_timepoint")
    }
    for lesion_id in tracked.new_ids:
        lesions[lesion_id] = create_lesion(
            patient,
            label=lesion_id,
            first_seen_timepoint=timepoint,
            actor=actor,
            reason="new lesion found by the AI",
            correlation_id=correlation_id,
        )
    for lesion_id in components:
        lesion = lesions[lesion_id]
        _upsert_observation(
            lesion, timepoint, _observation_values(tracked.measurements_of(lesion_id), run),
            actor=actor, correlation_id=correlation_id,
        )  # fmt: skip
        first = lesion.first_seen_timepoint
        if first is None or first.scan_date > timepoint.scan_date:
            update_lesion(
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

    update_series(
        series,
        registration=registration_record(series, reference_run.series, tracked),
        actor=actor,
        reason="rigid registration to the patient's common space",
        correlation_id=correlation_id,
    )
    write_label_image(tracked.reference_map, run_file_name(run, LESION_MAP_REFERENCE))
    # The same lesion numbers on the series' own grid: what the RTSTRUCT and SEG of this run show.
    write_label_image(tracked.lesion_map, run_file_name(run, LESION_MAP))
    _complete_later_visits(patient, timepoint, runs, actor=actor, correlation_id=correlation_id)
    timings["store_s"] = time.perf_counter() - t0

    update_segmentation_run(
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
        "new": list(tracked.new_ids),
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


def run_analysis_stage(
    job_id: int,
    run_id: int | None,
    *,
    dispatch_id: str = "",
    actor_id: int | None = None,
    correlation_id: str = "",
) -> dict[str, Any] | None:
    """Stage 2 of a pipeline job (queue ``default``): match and store lesions, then re-assess the patient.

    Returns:
        The job's result, or None when there was nothing to do (no run, the job finished, or the delivery
        belongs to an earlier dispatch: see :func:`.jobs.claim`).
    """
    job = claim(job_id, dispatch_id) if run_id is not None else None
    if job is None or run_id is None:
        return None
    if job.state != JobState.RUNNING:
        job = start_job(job, stage="lesion matching")
    with heartbeat(job):
        return _analyse_and_assess(job, run_id, actor_id=actor_id, correlation_id=correlation_id)


def _analyse_and_assess(
    job: ProcessingJob, run_id: int, *, actor_id: int | None, correlation_id: str
) -> dict[str, Any]:
    """The analysis stage's work: lesions, DICOM contours, re-assessment, the job finished."""
    actor, cid = job_context(job, actor_id, correlation_id)
    run = SegmentationRun.objects.select_related("series__timepoint__patient__trial").get(pk=run_id)
    progress(job, 65, "lesion matching")
    summary = analyse_run(run, actor=actor, correlation_id=cid)
    timepoint = run.series.timepoint
    progress(job, 75, "DICOM export")
    contours_note = ""
    t0 = time.perf_counter()
    try:
        export_run_contours(run, actor=actor, correlation_id=cid)
    except ImagingError as exc:  # the lesions and assessments stand without their DICOM copies
        contours_note = f"DICOM export incomplete: {exc.user_message}"
        logger.warning("run %s: %s", run.pk, contours_note)
    if "timings_s" in summary:
        summary["timings_s"]["dicom_export_s"] = round(time.perf_counter() - t0, 3)
    try:  # results to the trial's PACS destinations: queued here, sent by their own task
        queue_deliveries(SegmentationRun.objects.get(pk=run.pk), trigger=DeliveryTrigger.AI_DRAFT)
    except Exception:  # a delivery problem never fails the analysis
        logger.exception("run %s: PACS deliveries could not be queued", run.pk)
    progress(job, 85, "assessment")
    created = reassess_patient(
        timepoint.patient,
        from_timepoint=timepoint,
        actor=actor,
        reason=f"new imaging of {timepoint.visit_label} analysed",
        correlation_id=cid,
        edited=False,
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
    finish_job(job, result=result, message=message[:500])
    try:  # the trial's shadow candidate, if any, on the same series: a job of its own (queue gpu)
        queue_shadow_run(run.series, actor=actor, correlation_id=cid)
    except Exception:  # a shadow problem never touches the visit's result
        logger.exception("run %s: the shadow run could not be queued", run.pk)
    return result


__all__ = ["analyse_run", "analysed_runs", "earlier_lesion_for", "registration_record", "run_analysis_stage"]
