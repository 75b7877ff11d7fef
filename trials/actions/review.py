"""The radiologist's review in the dashboard: every correction is one action with its audit event.

Each verb changes lesions, observations or visits through the row helpers of ``trials.records`` (so each
row change is audited as usual), writes one summarising ``review.*`` AuditEvent on the visit under review
(who, what, why, with before/after), and then re-assesses the patient from the first affected visit on
(``trials.pipeline.assessment.reassess_patient``) -- all in one transaction, so a failed re-assessment
leaves no half-applied correction behind.

Reader-drawn contours (an added lesion, a merge, a split) are stored as one binary mask per lesion and
visit on the series grid (``trials.storage.store_reader_mask``); the observation then has no
segmentation run (its source is ``manual`` or ``edited``) and the viewer draws that mask instead.
Keeping them out of ``SegmentationRun`` leaves the pipeline's runs (and its lesion matching) untouched.
File writes are undone when the action fails (``trials.storage.undo_file_writes_on_error``).

Permission checks are the caller's job (``trials.permissions``: ``edit_lesions`` for corrections), as for
every action. Confirm and override (the signatures) are in :mod:`trials.actions.assessments`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import SimpleITK as sitk
from django.db import transaction
from scipy import ndimage

from rano.errors import RanoError
from rano.measure import LesionMeasurement, measure_lesions
from rano.settings import ResponseSettings
from segmentation.errors import RegionError
from segmentation.regions import (
    DEFAULT_GROW_ITERATIONS,
    DEFAULT_GROW_MULTIPLIER,
    DEFAULT_MAX_GROWN_VOLUME_MM3,
    grow_region,
    split_region,
)
from trials.audit import new_correlation_id, record_audit_event
from trials.choices import ClinicalStatus, CorticosteroidStatus, LesionRole, ObservationSource
from trials.exceptions import InvalidInputError, InvalidStateError, MissingImageError, RegionGrowingError
from trials.models import ImagingSeries, Lesion, LesionObservation, Patient, Timepoint
from trials.pipeline.analysis import earlier_lesion_for
from trials.pipeline.assessment import reassess_patient
from trials.records.lesions import (
    create_lesion,
    measurement_fields,
    record_observation,
    update_lesion,
    update_observation,
)
from trials.records.visits import update_timepoint
from trials.storage import (
    delete_reader_mask,
    load_observation_mask,
    load_series_image,
    same_grid,
    store_reader_mask,
    undo_file_writes_on_error,
)

#: Reader flags a radiologist may set on a lesion (rano-bm.md section 2).
LESION_FLAGS: tuple[str, ...] = (
    "is_cystic",
    "is_dural",
    "is_bony",
    "is_leptomeningeal",
    "previously_irradiated",
    "progressing_since_treatment",
    "too_small_to_measure",
)


def _measure_one(
    mask: sitk.Image, image: sitk.Image | None, trial_settings: ResponseSettings
) -> LesionMeasurement:
    """Measure a binary mask as one lesion with rano.measure (the same code as the pipeline)."""
    labels = sitk.Cast(mask > 0, sitk.sitkUInt8)
    try:
        measured = measure_lesions(labels, image, settings=trial_settings, relabel=False)
    except RanoError as exc:
        raise InvalidInputError(f"The lesion could not be measured: {exc}") from exc
    if not measured:
        raise RegionGrowingError("The lesion mask is empty.")
    measurement = measured[0]
    if measurement.volume_mm3 < trial_settings.min_lesion_volume_mm3:
        raise RegionGrowingError(
            f"The lesion ({measurement.volume_mm3:.1f} mm3) is below the "
            f"{trial_settings.min_lesion_volume_mm3:.1f} mm3 minimum lesion volume."
        )
    return measurement


def _primary_series(timepoint: Timepoint) -> ImagingSeries:
    series = timepoint.series.exclude(volume_file="").order_by("id").first()
    if series is None:
        raise MissingImageError(f"Visit {timepoint.visit_label} has no stored imaging series.")
    return series


def _earliest_visit(lesion: Lesion, fallback: Timepoint) -> Timepoint:
    first = Timepoint.objects.filter(observations__lesion=lesion).order_by("scan_date", "visit_label").first()
    if first is None or (fallback.scan_date < first.scan_date):
        return fallback
    return first


def _check_visit(lesion: Lesion, timepoint: Timepoint) -> None:
    if lesion.patient_id != timepoint.patient_id:
        raise InvalidInputError(
            f"{lesion.label} and visit {timepoint.visit_label} belong to different patients.",
            {"timepoint": ["Must be a visit of the lesion's patient."]},
        )


def _review_event(
    action: str,
    timepoint: Timepoint,
    *,
    actor: Any,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    reason: str,
    correlation_id: str,
) -> None:
    record_audit_event(
        actor=actor,
        action=f"review.{action}",
        obj=timepoint,
        before=before,
        after=after,
        reason=reason,
        correlation_id=correlation_id,
    )


def _cid(correlation_id: str) -> str:
    return correlation_id or new_correlation_id()


@transaction.atomic
def drop_lesion(
    lesion: Lesion, *, timepoint: Timepoint, actor: Any, reason: str = "", correlation_id: str = ""
) -> Lesion:
    """Drop a false-positive lesion: it no longer counts at any visit (its rows stay, flagged).

    Args:
        lesion: the lesion the reader rejects.
        timepoint: the visit under review (where the audit entry is shown).
        reason: required: the drop changes the assessments of every visit where the lesion was seen.

    Raises:
        InvalidInputError: no reason.
        InvalidStateError: the lesion is already dropped.
    """
    _check_visit(lesion, timepoint)
    if lesion.is_false_positive:
        raise InvalidStateError(f"{lesion.label} is already dropped as a false positive.")
    if not (reason or "").strip():
        raise InvalidInputError(
            f"Dropping {lesion.label} needs a reason: it is taken out at every visit of the patient.",
            {"reason": ["This field is required."]},
        )
    return _set_false_positive(lesion, True, "drop_lesion", timepoint, actor, reason, correlation_id)


#: What an observation dropped at one visit says, before the reader's reason.
NOT_A_LESION_AT_VISIT = "not a lesion at this visit (reader)"


@transaction.atomic
def drop_lesion_at_visit(
    lesion: Lesion, *, timepoint: Timepoint, actor: Any, reason: str = "", correlation_id: str = ""
) -> LesionObservation:
    """Drop a lesion at one visit only: its observation there becomes absent, "not a lesion at this visit".

    For a finding that is a lesion elsewhere but not here (a vessel the AI took for the lesion at this
    visit, a motion artefact): the lesion keeps its label and its observations at the other visits, and
    at this visit counts as absent (0 mm) in the response. The observation's source becomes ``edited``
    (the AI's measurement stays in its history); the AI's own assessment stays stored, and the
    re-computed one is an ``edited`` result. ``drop_lesion`` is the verb for a lesion that is false at
    every visit; adding the lesion again at this visit (``add_lesion_from_seed``) undoes this.

    Args:
        lesion: the lesion the reader rejects at ``timepoint``.
        timepoint: the visit under review.
        reason: required: why the finding is not a lesion at this visit (kept in the observation).

    Returns:
        The observation at the visit, now absent.

    Raises:
        InvalidInputError: no reason, or the lesion is not present at the visit.
        InvalidStateError: the lesion is already dropped at every visit.
    """
    _check_visit(lesion, timepoint)
    if lesion.is_false_positive:
        raise InvalidStateError(f"{lesion.label} is already dropped as a false positive at every visit.")
    reason = (reason or "").strip()
    if not reason:
        raise InvalidInputError(
            f"Dropping {lesion.label} at {timepoint.visit_label} needs a reason.",
            {"reason": ["This field is required."]},
        )
    observation = _present_observation(lesion, timepoint)
    cid = _cid(correlation_id)
    before = {
        "lesion": lesion.label,
        "present": True,
        "longest_diameter_mm": observation.longest_diameter_mm,
        "source": observation.source,
    }
    observation = update_observation(
        observation,
        present=False,
        merged_into=None,
        measurable=False,
        measurable_reason=f"{NOT_A_LESION_AT_VISIT}: {reason}"[:255],
        longest_diameter_mm=None,
        perpendicular_diameter_mm=None,
        volume_mm3=None,
        caliper_points_mm=None,
        perpendicular_points_mm=None,
        unequivocal_progression=False,
        actor=actor,
        reason=reason,
        correlation_id=cid,
    )
    _review_event(
        "drop_lesion_at_visit",
        timepoint,
        actor=actor,
        before=before,
        after={"lesion": lesion.label, "present": False, "scope": "this visit"},
        reason=reason,
        correlation_id=cid,
    )
    reassess_patient(
        timepoint.patient,
        from_timepoint=timepoint,
        actor=actor,
        reason=reason,
        correlation_id=cid,
        edited=True,
    )
    return observation


@transaction.atomic
def restore_lesion(
    lesion: Lesion, *, timepoint: Timepoint, actor: Any, reason: str = "", correlation_id: str = ""
) -> Lesion:
    """Undo ``drop_lesion``: the lesion counts again.

    Raises:
        InvalidStateError: the lesion is not dropped.
    """
    _check_visit(lesion, timepoint)
    if not lesion.is_false_positive:
        raise InvalidStateError(f"{lesion.label} is not dropped.")
    return _set_false_positive(lesion, False, "restore_lesion", timepoint, actor, reason, correlation_id)


def _set_false_positive(
    lesion: Lesion,
    value: bool,
    action: str,
    timepoint: Timepoint,
    actor: Any,
    reason: str,
    correlation_id: str,
) -> Lesion:
    """Shared body of drop_lesion / restore_lesion (checks done): flag, audit on the visit, re-assess."""
    cid = _cid(correlation_id)
    update_lesion(lesion, is_false_positive=value, actor=actor, reason=reason, correlation_id=cid)
    _review_event(
        action,
        timepoint,
        actor=actor,
        before={"lesion": lesion.label, "is_false_positive": not value},
        after={"lesion": lesion.label, "is_false_positive": value},
        reason=reason,
        correlation_id=cid,
    )
    reassess_patient(
        lesion.patient,
        from_timepoint=_earliest_visit(lesion, timepoint),
        actor=actor,
        reason=reason,
        correlation_id=cid,
        edited=True,
    )
    return lesion


@undo_file_writes_on_error
@transaction.atomic
def add_lesion_from_seed(
    timepoint: Timepoint,
    *,
    seed_index: Sequence[int],
    actor: Any,
    reason: str = "",
    correlation_id: str = "",
    multiplier: float = DEFAULT_GROW_MULTIPLIER,
    iterations: int = DEFAULT_GROW_ITERATIONS,
) -> LesionObservation:
    """Add a lesion the AI missed: grow it from a seed voxel, measure it like the rest, record it.

    A region matching a lesion seen at another visit (and not shown at this one) is that lesion, e.g. a
    residual target the AI missed; otherwise it is a new lesion with the next stable label, first seen
    at this visit. The observation has source ``manual``; the contour is painted into the visit's
    reader mask.

    Args:
        timepoint: the visit the reader is reading.
        seed_index: voxel index (i, j, k) of the click in the visit's volume (SimpleITK order).
        multiplier, iterations: region-growing parameters (see ``grow_region``).

    Returns:
        The new lesion's observation.

    Raises:
        MissingImageError: the visit has no stored volume.
        RegionGrowingError: the seed gives no usable region, or lies inside an existing lesion.
    """
    cid = _cid(correlation_id)
    series = _primary_series(timepoint)
    image = load_series_image(series)
    try:
        mask = grow_region(image, seed_index, multiplier=multiplier, iterations=iterations)
    except RegionError as exc:
        raise RegionGrowingError(exc.user_message) from exc
    seed = tuple(int(v) for v in seed_index)
    for existing, existing_mask in _present_masks(timepoint, image):
        if existing_mask[seed]:
            raise RegionGrowingError(f"The seed lies inside {existing.lesion.label}: it is already a lesion.")
    return _record_added_lesion(
        timepoint, mask, image, actor=actor, reason=reason, cid=cid, how={"seed_index": list(seed)}
    )


def _present_masks(timepoint: Timepoint, image: sitk.Image) -> Iterable[tuple[LesionObservation, sitk.Image]]:
    """The visit's present (not dropped) observations with their stored masks on the image's grid."""
    for existing in timepoint.observations.select_related("lesion", "segmentation_run").filter(
        present=True, lesion__is_false_positive=False
    ):
        try:
            existing_mask = load_observation_mask(existing)
        except MissingImageError:
            continue
        if existing_mask.GetSize() == image.GetSize():
            yield existing, existing_mask


#: Painted lesions: at most this volume (as a grown region: a 50 mm sphere is about 65 cm3).
MAX_PAINTED_VOLUME_MM3 = DEFAULT_MAX_GROWN_VOLUME_MM3


@undo_file_writes_on_error
@transaction.atomic
def add_lesion_from_mask(
    timepoint: Timepoint,
    *,
    mask: sitk.Image,
    actor: Any,
    reason: str = "",
    correlation_id: str = "",
) -> LesionObservation:
    """Add a lesion the AI missed from a region the reader painted: the same measurement, matching, audit
    and re-assessment as ``add_lesion_from_seed``, without the region growing.

    Voxels that already belong to a lesion shown at this visit stay that lesion's (a voxel is one lesion's
    only); what remains must be one connected region (26-connectivity).

    Args:
        timepoint: the visit the reader is reading.
        mask: binary mask on the grid of the visit's stored volume (non-zero = painted).

    Returns:
        The new (or recognised) lesion's observation.

    Raises:
        MissingImageError: the visit has no stored volume.
        InvalidInputError: the mask is on another grid, empty, larger than ``MAX_PAINTED_VOLUME_MM3``, in
            several parts, or mostly inside a lesion already shown.
        RegionGrowingError: the painted lesion is below the trial's minimum lesion volume.
    """
    cid = _cid(correlation_id)
    series = _primary_series(timepoint)
    image = load_series_image(series)
    if not same_grid(mask, image):
        raise InvalidInputError(
            "The painted mask is not on the grid of this visit's images: reload the page and paint again.",
            {"mask": ["Must be on the visit's image grid."]},
        )
    painted = sitk.GetArrayFromImage(mask) > 0
    count = int(painted.sum())
    if count == 0:
        raise InvalidInputError("Nothing was painted.", {"mask": ["Paint the lesion first."]})
    voxel_mm3 = float(np.prod(image.GetSpacing()))
    if count * voxel_mm3 > MAX_PAINTED_VOLUME_MM3:
        raise InvalidInputError(
            f"The painted region ({count * voxel_mm3 / 1000:.1f} cm3) is larger than any lesion "
            f"({MAX_PAINTED_VOLUME_MM3 / 1000:.0f} cm3 at most).",
            {"mask": ["Too large."]},
        )
    for existing, existing_mask in _present_masks(timepoint, image):
        inside = sitk.GetArrayViewFromImage(existing_mask) > 0
        overlap = int((painted & inside).sum())
        if overlap * 2 > count:
            raise InvalidInputError(
                f"The painted region lies inside {existing.lesion.label}: it is already a lesion.",
                {"mask": ["Paint outside the lesions shown."]},
            )
        painted &= ~inside
    parts = int(ndimage.label(painted, structure=np.ones((3, 3, 3)))[1])
    if parts != 1:
        raise InvalidInputError(
            f"The painted region has {parts} separate parts: paint one lesion at a time.",
            {"mask": ["Must be one connected region."]},
        )
    region = sitk.GetImageFromArray(painted.astype(np.uint8))
    region.CopyInformation(image)
    return _record_added_lesion(
        timepoint,
        region,
        image,
        actor=actor,
        reason=reason,
        cid=cid,
        how={"painted_voxels": int(painted.sum())},
    )


def _record_added_lesion(
    timepoint: Timepoint,
    mask: sitk.Image,
    image: sitk.Image,
    *,
    actor: Any,
    reason: str,
    cid: str,
    how: dict[str, Any],
) -> LesionObservation:
    """The common half of adding a lesion (grown or painted): measure, match, record, audit, re-assess."""
    measurement = _measure_one(mask, image, timepoint.patient.trial.response_settings())
    # A lesion seen at another visit keeps its label (rano-bm.md sections 3 and 5): only a region that
    # matches no known lesion is a new one.
    lesion = earlier_lesion_for(timepoint, mask, image)
    known = lesion is not None
    if lesion is None:
        lesion = create_lesion(
            timepoint.patient,
            first_seen_timepoint=timepoint,
            role=LesionRole.NON_TARGET,
            actor=actor,
            reason=reason,
            correlation_id=cid,
        )
    store_reader_mask(lesion, timepoint, mask, image)
    recorded = LesionObservation.objects.filter(lesion=lesion, timepoint=timepoint).first()
    if recorded is not None:  # the AI's "absent" at this visit, corrected
        observation = update_observation(
            recorded,
            source=ObservationSource.MANUAL,
            actor=actor,
            reason=reason,
            correlation_id=cid,
            **measurement_fields([measurement]),
        )
    else:
        observation = record_observation(
            lesion,
            timepoint,
            source=ObservationSource.MANUAL,
            actor=actor,
            reason=reason,
            correlation_id=cid,
            **measurement_fields([measurement]),
        )
    _review_event(
        "add_lesion",
        timepoint,
        actor=actor,
        before=None,
        after={
            "lesion": lesion.label,
            "known_lesion": known,
            **how,
            "longest_diameter_mm": round(measurement.longest_diameter_mm, 2),
            "volume_mm3": round(measurement.volume_mm3, 1),
        },
        reason=reason,
        correlation_id=cid,
    )
    reassess_patient(
        timepoint.patient,
        from_timepoint=timepoint,
        actor=actor,
        reason=reason,
        correlation_id=cid,
        edited=True,
    )
    return observation


def _present_observation(lesion: Lesion, timepoint: Timepoint) -> LesionObservation:
    observation = (
        LesionObservation.objects.select_related("lesion", "segmentation_run", "timepoint")
        .filter(lesion=lesion, timepoint=timepoint)
        .first()
    )
    if observation is None or not observation.present:
        raise InvalidInputError(
            f"{lesion.label} is not present at {timepoint.visit_label}.",
            {"lesion": ["Must be present at this visit."]},
        )
    return observation


@undo_file_writes_on_error
@transaction.atomic
def merge_lesions(
    keep: Lesion,
    absorb: Lesion,
    *,
    timepoint: Timepoint,
    actor: Any,
    reason: str = "",
    correlation_id: str = "",
) -> LesionObservation:
    """Merge two lesions at a visit into one mass, measured once and kept under ``keep``'s label.

    ``absorb`` counts 0 mm at this visit (rano-bm.md 3: "the merged mass is measured once ... the others
    count 0 mm"); its observation stays, marked absent with the reason.

    Raises:
        InvalidInputError: the same lesion twice, lesions of another patient, or one not present.
        MissingImageError: a lesion has no stored contour at this visit.
    """
    cid = _cid(correlation_id)
    if keep.pk == absorb.pk:
        raise InvalidInputError(
            "A lesion cannot be merged with itself.", {"absorb": ["Choose another lesion."]}
        )
    _check_visit(keep, timepoint)
    _check_visit(absorb, timepoint)
    keep_obs = _present_observation(keep, timepoint)
    absorb_obs = _present_observation(absorb, timepoint)
    series = _primary_series(timepoint)
    image = load_series_image(series)
    union = sitk.Or(load_observation_mask(keep_obs), load_observation_mask(absorb_obs))
    measurement = _measure_one(union, image, timepoint.patient.trial.response_settings())
    store_reader_mask(keep, timepoint, union, image)
    delete_reader_mask(absorb.pk, timepoint.pk)
    before = {
        keep.label: keep_obs.longest_diameter_mm,
        absorb.label: absorb_obs.longest_diameter_mm,
    }
    update_observation(
        keep_obs,
        segmentation_run=None,
        component_label=None,
        fragment_count=1,
        actor=actor,
        reason=reason,
        correlation_id=cid,
        **measurement_fields([measurement]),
    )
    update_observation(
        absorb_obs,
        present=False,
        longest_diameter_mm=0.0,
        perpendicular_diameter_mm=0.0,
        volume_mm3=0.0,
        caliper_points_mm=None,
        perpendicular_points_mm=None,
        segmentation_run=None,
        component_label=None,
        merged_into=keep,
        measurable_reason=f"merged into {keep.label}",
        actor=actor,
        reason=reason,
        correlation_id=cid,
    )
    _review_event(
        "merge_lesions",
        timepoint,
        actor=actor,
        before={"longest_diameter_mm": before},
        after={
            "kept": keep.label,
            "absorbed": absorb.label,
            "longest_diameter_mm": round(measurement.longest_diameter_mm, 2),
        },
        reason=reason,
        correlation_id=cid,
    )
    reassess_patient(
        timepoint.patient,
        from_timepoint=timepoint,
        actor=actor,
        reason=reason,
        correlation_id=cid,
        edited=True,
    )
    keep_obs.refresh_from_db()
    return keep_obs


@undo_file_writes_on_error
@transaction.atomic
def split_lesion(
    lesion: Lesion,
    *,
    timepoint: Timepoint,
    seed_keep: Sequence[int],
    seed_new: Sequence[int],
    actor: Any,
    reason: str = "",
    correlation_id: str = "",
) -> tuple[LesionObservation, LesionObservation]:
    """Split a lesion the AI joined: each voxel goes to the nearer of two reader seed points (in mm).

    The part around ``seed_keep`` stays ``lesion``; the part around ``seed_new`` becomes a new lesion
    (next label, first seen at this visit). Both are measured with rano.measure.

    Args:
        seed_keep, seed_new: voxel indices (i, j, k) inside the lesion.

    Returns:
        ``(kept observation, new observation)``.

    Raises:
        InvalidInputError: a seed outside the lesion, both seeds equal, or a part below the minimum volume.
    """
    cid = _cid(correlation_id)
    _check_visit(lesion, timepoint)
    observation = _present_observation(lesion, timepoint)
    series = _primary_series(timepoint)
    image = load_series_image(series)
    mask = load_observation_mask(observation)
    if not same_grid(mask, image):
        raise InvalidInputError("The lesion mask lies on another grid than the series volume.")
    try:
        parts = split_region(mask, seed_keep, seed_new, name=lesion.label)
    except RegionError as exc:
        raise InvalidInputError(exc.user_message, {"seed": [exc.user_message]}) from exc
    settings = timepoint.patient.trial.response_settings()
    keep_measure = _measure_one(parts[0], image, settings)
    new_measure = _measure_one(parts[1], image, settings)
    new_lesion = create_lesion(
        timepoint.patient,
        first_seen_timepoint=timepoint,
        role=LesionRole.NON_TARGET,
        actor=actor,
        reason=reason,
        correlation_id=cid,
    )
    store_reader_mask(lesion, timepoint, parts[0], image)
    store_reader_mask(new_lesion, timepoint, parts[1], image)
    before_ld = observation.longest_diameter_mm
    update_observation(
        observation,
        segmentation_run=None,
        component_label=None,
        fragment_count=1,
        actor=actor,
        reason=reason,
        correlation_id=cid,
        **measurement_fields([keep_measure]),
    )
    new_observation = record_observation(
        new_lesion,
        timepoint,
        source=ObservationSource.MANUAL,
        actor=actor,
        reason=reason,
        correlation_id=cid,
        **measurement_fields([new_measure]),
    )
    _review_event(
        "split_lesion",
        timepoint,
        actor=actor,
        before={"lesion": lesion.label, "longest_diameter_mm": before_ld},
        after={
            lesion.label: round(keep_measure.longest_diameter_mm, 2),
            new_lesion.label: round(new_measure.longest_diameter_mm, 2),
        },
        reason=reason,
        correlation_id=cid,
    )
    reassess_patient(
        timepoint.patient,
        from_timepoint=timepoint,
        actor=actor,
        reason=reason,
        correlation_id=cid,
        edited=True,
    )
    observation.refresh_from_db()
    return observation, new_observation


@transaction.atomic
def set_target_selection(
    patient: Patient,
    targets: Iterable[Lesion],
    *,
    actor: Any,
    reason: str = "",
    correlation_id: str = "",
) -> list[Lesion]:
    """Replace the engine's target selection with the reader's (rano-bm.md section 2).

    Every listed lesion becomes a target and every other lesion of the patient a non-target; the
    choice is marked as the reader's, so the engine keeps it.

    Raises:
        InvalidInputError: more targets than the trial allows, a lesion of another patient, a dropped
            lesion, or one not measurable at baseline (an irradiated lesion also needs "progressing").
        MissingImageError: the patient has no baseline visit.
    """
    cid = _cid(correlation_id)
    baseline = patient.timepoints.filter(is_baseline=True).first()
    if baseline is None:
        raise MissingImageError(
            f"{patient.subject_id} has no baseline visit: targets are chosen at baseline."
        )
    chosen = list({lesion.pk: lesion for lesion in targets}.values())
    max_targets = patient.trial.max_targets
    if len(chosen) > max_targets:
        raise InvalidInputError(
            f"{len(chosen)} targets chosen; this trial allows at most {max_targets}.",
            {"targets": [f"At most {max_targets}."]},
        )
    baseline_obs = {
        o.lesion_id: o
        for o in LesionObservation.objects.filter(timepoint=baseline, lesion__in=[c.pk for c in chosen])
    }
    for lesion in chosen:
        if lesion.patient_id != patient.pk:
            raise InvalidInputError(
                f"{lesion.label} belongs to another patient.", {"targets": ["Same patient only."]}
            )
        if lesion.is_false_positive:
            raise InvalidInputError(
                f"{lesion.label} was dropped as a false positive.", {"targets": ["Not a lesion."]}
            )
        obs = baseline_obs.get(lesion.pk)
        if obs is None or not obs.present or not obs.measurable:
            why = (
                obs.measurable_reason
                if obs is not None and obs.measurable_reason
                else "not measurable at baseline"
            )
            raise InvalidInputError(
                f"{lesion.label} cannot be a target: {why}.", {"targets": ["Measurable only."]}
            )
        blocking = [
            f for f in ("is_cystic", "is_dural", "is_bony", "is_leptomeningeal") if getattr(lesion, f)
        ]
        if blocking:
            raise InvalidInputError(
                f"{lesion.label} is flagged {', '.join(b.removeprefix('is_') for b in blocking)}: not measurable.",
                {"targets": ["Measurable only."]},
            )
        if lesion.previously_irradiated and not lesion.progressing_since_treatment:
            raise InvalidInputError(
                f"{lesion.label} was irradiated and is not marked as progressing since treatment.",
                {"targets": ["Mark it as progressing first."]},
            )
    chosen_ids = {lesion.pk for lesion in chosen}
    before: dict[str, str] = {}
    after: dict[str, str] = {}
    for lesion in Lesion.objects.filter(patient=patient).order_by("id"):
        role = LesionRole.TARGET if lesion.pk in chosen_ids else LesionRole.NON_TARGET
        before[lesion.label] = lesion.role
        after[lesion.label] = role
        # update_lesion marks a changed role as the reader's; the pipeline then keeps every current role
        # as the selection (an unchanged selection needs no mark: the engine already chose it).
        if lesion.role != role:
            update_lesion(lesion, role=role, actor=actor, reason=reason, correlation_id=cid)
    _review_event(
        "set_targets", baseline, actor=actor, before=before, after=after, reason=reason, correlation_id=cid
    )
    reassess_patient(
        patient, from_timepoint=baseline, actor=actor, reason=reason, correlation_id=cid, edited=True
    )
    return list(Lesion.objects.filter(patient=patient, role=LesionRole.TARGET))


@transaction.atomic
def set_lesion_flags(
    lesion: Lesion,
    *,
    timepoint: Timepoint,
    flags: dict[str, bool],
    actor: Any,
    reason: str = "",
    correlation_id: str = "",
) -> Lesion:
    """Set reader flags of a lesion: cystic, dural, bony, leptomeningeal, previously irradiated,
    progressing since treatment, too small to measure (rano-bm.md sections 2-3).

    Raises:
        InvalidInputError: an unknown flag or a non-boolean value.
    """
    cid = _cid(correlation_id)
    _check_visit(lesion, timepoint)
    unknown = sorted(set(flags) - set(LESION_FLAGS))
    if unknown:
        raise InvalidInputError(
            f"Unknown lesion flag(s): {', '.join(unknown)}; known: {', '.join(LESION_FLAGS)}.",
            {name: ["Unknown flag."] for name in unknown},
        )
    if any(not isinstance(value, bool) for value in flags.values()):
        raise InvalidInputError("Lesion flags must be true or false.")
    before = {name: getattr(lesion, name) for name in flags}
    update_lesion(lesion, actor=actor, reason=reason, correlation_id=cid, **flags)
    changed = {name: value for name, value in flags.items() if before[name] != value}
    if changed:
        _review_event(
            "set_flags",
            timepoint,
            actor=actor,
            before={"lesion": lesion.label, **{k: before[k] for k in changed}},
            after={"lesion": lesion.label, **changed},
            reason=reason,
            correlation_id=cid,
        )
        reassess_patient(
            lesion.patient,
            from_timepoint=_earliest_visit(lesion, timepoint),
            actor=actor,
            reason=reason,
            correlation_id=cid,
            edited=True,
        )
    return lesion


@transaction.atomic
def set_unequivocal_progression(
    observation: LesionObservation,
    *,
    value: bool,
    actor: Any,
    reason: str = "",
    correlation_id: str = "",
) -> LesionObservation:
    """The reader's judgement of unequivocal progression of a non-target lesion (rano-bm.md 4).

    Raises:
        InvalidInputError: the lesion is a target (targets progress by their measurements).
    """
    cid = _cid(correlation_id)
    lesion = observation.lesion
    if lesion.role != LesionRole.NON_TARGET:
        raise InvalidInputError(
            f"{lesion.label} is a target lesion; unequivocal progression is judged on non-targets only.",
            {"unequivocal_progression": ["Non-target lesions only."]},
        )
    before = observation.unequivocal_progression
    update_observation(
        observation, unequivocal_progression=bool(value), actor=actor, reason=reason, correlation_id=cid
    )
    if before != bool(value):
        _review_event(
            "set_unequivocal_progression",
            observation.timepoint,
            actor=actor,
            before={"lesion": lesion.label, "unequivocal_progression": before},
            after={"lesion": lesion.label, "unequivocal_progression": bool(value)},
            reason=reason,
            correlation_id=cid,
        )
        reassess_patient(
            lesion.patient,
            from_timepoint=observation.timepoint,
            actor=actor,
            reason=reason,
            correlation_id=cid,
            edited=True,
        )
    return observation


@transaction.atomic
def set_clinical_context(
    timepoint: Timepoint,
    *,
    corticosteroid_status: str | None = None,
    clinical_status: str | None = None,
    actor: Any,
    reason: str = "",
    correlation_id: str = "",
) -> Timepoint:
    """Set the visit's corticosteroid use and clinical status (rano-bm.md section 6).

    Raises:
        InvalidInputError: an unknown status value.
    """
    cid = _cid(correlation_id)
    changes: dict[str, str] = {}
    if corticosteroid_status is not None:
        if corticosteroid_status not in CorticosteroidStatus.values:
            raise InvalidInputError(
                f"Unknown corticosteroid status {corticosteroid_status!r}.",
                {"corticosteroid_status": [f"One of {', '.join(CorticosteroidStatus.values)}."]},
            )
        changes["corticosteroid_status"] = corticosteroid_status
    if clinical_status is not None:
        if clinical_status not in ClinicalStatus.values:
            raise InvalidInputError(
                f"Unknown clinical status {clinical_status!r}.",
                {"clinical_status": [f"One of {', '.join(ClinicalStatus.values)}."]},
            )
        changes["clinical_status"] = clinical_status
    before = {name: getattr(timepoint, name) for name in changes}
    changed = {name: value for name, value in changes.items() if before[name] != value}
    if not changed:
        return timepoint
    update_timepoint(timepoint, actor=actor, reason=reason, correlation_id=cid, **changed)
    _review_event(
        "set_clinical_context",
        timepoint,
        actor=actor,
        before={k: before[k] for k in changed},
        after=changed,
        reason=reason,
        correlation_id=cid,
    )
    reassess_patient(
        timepoint.patient,
        from_timepoint=timepoint,
        actor=actor,
        reason=reason,
        correlation_id=cid,
        edited=True,
    )
    return timepoint


__all__ = [
    "LESION_FLAGS",
    "MAX_PAINTED_VOLUME_MM3",
    "NOT_A_LESION_AT_VISIT",
    "add_lesion_from_mask",
    "add_lesion_from_seed",
    "drop_lesion",
    "drop_lesion_at_visit",
    "merge_lesions",
    "restore_lesion",
    "set_clinical_context",
    "set_lesion_flags",
    "set_target_selection",
    "set_unequivocal_progression",
    "split_lesion",
]
