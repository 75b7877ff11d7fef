"""Row helpers of lesions and their observations (validated, saved, audited; no re-assessment).

The pipeline records the AI's lesions with them; the actions (``trials.actions.lesions``,
``trials.actions.review``) record a reader's and then re-assess the patient. A person's edit of an AI
observation turns its source into ``edited`` here, whoever the caller.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from django.db import transaction

from rano.measure import LesionMeasurement
from trials.choices import ObservationSource
from trials.exceptions import InvalidInputError
from trials.models import Lesion, LesionObservation, Patient, Timepoint
from trials.records.base import check_fields, create_row, update_row

LESION_FIELDS = (
    "role",
    "first_seen_timepoint",
    "is_cystic",
    "is_dural",
    "is_bony",
    "is_leptomeningeal",
    "previously_irradiated",
    "progressing_since_treatment",
    "too_small_to_measure",
    "is_false_positive",
    "notes",
)


def next_lesion_label(patient: Patient) -> str:
    """Return the next free stable label of a patient: L1, L2, ... (never reuses a label)."""
    numbers = [
        int(label[1:])
        for label in Lesion.objects.filter(patient=patient).values_list("label", flat=True)
        if label.startswith("L") and label[1:].isdigit()
    ]
    return f"L{max(numbers, default=0) + 1}"


def measurement_fields(parts: Sequence[LesionMeasurement]) -> dict[str, Any]:
    """Observation fields of one lesion measured by ``rano.measure`` (physical mm), present.

    The one conversion of a measurement into an observation, for the AI's and the reader's alike. A lesion
    split into fragments (several components matched to it) sums their longest diameters and volumes
    (rano-bm.md section 3); the perpendicular diameter, the LD slice, the calipers and the intensity
    statistics are those of its largest fragment, its centroid the volume-weighted mean of theirs.
    """
    main = max(parts, key=lambda p: p.longest_diameter_mm)
    total_volume = sum(p.volume_mm3 for p in parts)
    weights = [p.volume_mm3 / total_volume if total_volume > 0 else 1.0 / len(parts) for p in parts]
    centroid = [sum(w * p.centroid_mm[i] for w, p in zip(weights, parts, strict=True)) for i in range(3)]
    return {
        "present": True,
        "longest_diameter_mm": float(sum(p.longest_diameter_mm for p in parts)),
        "perpendicular_diameter_mm": float(main.perpendicular_diameter_mm),
        "volume_mm3": float(total_volume),
        "max_3d_diameter_mm": float(max(p.max_3d_diameter_mm for p in parts)),
        "centroid_x_mm": float(centroid[0]),
        "centroid_y_mm": float(centroid[1]),
        "centroid_z_mm": float(centroid[2]),
        "slice_count": int(max(p.slice_count for p in parts)),
        "ld_slice_index": main.ld_slice_index,
        "caliper_points_mm": (
            [list(map(float, p)) for p in main.ld_endpoints_mm] if main.ld_endpoints_mm else None
        ),
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


@transaction.atomic
def create_lesion(
    patient: Patient,
    *,
    label: str | None = None,
    actor: Any | None,
    reason: str = "",
    correlation_id: str = "",
    **fields: Any,
) -> Lesion:
    """Create a lesion of a patient.

    Args:
        patient: whose lesion.
        label: stable label; default the next free ``L<n>``.
        **fields: any of ``LESION_FIELDS``.

    Raises:
        DuplicateError: the label exists for the patient.
        InvalidInputError: ``first_seen_timepoint`` is another patient's visit.
    """
    check_fields(Lesion, fields, LESION_FIELDS)
    first_seen = fields.get("first_seen_timepoint")
    if first_seen is not None and first_seen.patient_id != patient.pk:
        raise InvalidInputError(
            "The first-seen visit belongs to another patient.",
            {"first_seen_timepoint": ["Must be a visit of the same patient."]},
        )
    if label is None:
        # Serialise label allocation per patient: lock the patient row.
        Patient.objects.select_for_update().filter(pk=patient.pk).first()
        label = next_lesion_label(patient)
    if actor is not None and "role" in fields:
        fields["role_set_by_reader"] = True
    return create_row(
        Lesion,
        actor=actor,
        reason=reason,
        correlation_id=correlation_id,
        patient=patient,
        label=label,
        **fields,
    )


@transaction.atomic
def update_lesion(
    lesion: Lesion, *, actor: Any | None, reason: str = "", correlation_id: str = "", **changes: Any
) -> Lesion:
    """Change a lesion's role or reader flags. The label never changes.

    A role change by a user (``actor`` not None) marks ``role_set_by_reader`` so that the engine's
    target selection does not overwrite the reader's choice.
    """
    check_fields(Lesion, changes, LESION_FIELDS)
    if actor is not None and "role" in changes and changes["role"] != lesion.role:
        changes["role_set_by_reader"] = True
    return update_row(
        lesion,
        changes,
        allowed=(*LESION_FIELDS, "role_set_by_reader"),
        actor=actor,
        reason=reason,
        correlation_id=correlation_id,
    )


@transaction.atomic
def record_observation(
    lesion: Lesion,
    timepoint: Timepoint,
    *,
    actor: Any | None,
    reason: str = "",
    correlation_id: str = "",
    **measurements: Any,
) -> LesionObservation:
    """Record a lesion at a visit with its measurements (rano-bm.md section 1).

    Args:
        lesion: the lesion.
        timepoint: a visit of the same patient.
        **measurements: any of ``LesionObservation.WRITABLE_FIELDS``.

    Raises:
        DuplicateError: the lesion already has an observation at this visit (use update_observation).
        InvalidInputError: visit of another patient, run of another visit, or invalid values.
    """
    check_fields(LesionObservation, measurements, LesionObservation.WRITABLE_FIELDS)
    if timepoint.patient_id != lesion.patient_id:
        raise InvalidInputError(
            "The visit and the lesion belong to different patients.",
            {"timepoint": ["Must be a visit of the lesion's patient."]},
        )
    run = measurements.get("segmentation_run")
    if run is not None and run.series.timepoint_id != timepoint.pk:
        raise InvalidInputError(
            "The segmentation run is of another visit.",
            {"segmentation_run": ["Must be a run on a series of this visit."]},
        )
    _check_caliper(measurements)
    _check_measurements(measurements)
    _check_merged_into(lesion, measurements)
    return create_row(
        LesionObservation,
        actor=actor,
        reason=reason,
        correlation_id=correlation_id,
        lesion=lesion,
        timepoint=timepoint,
        **measurements,
    )


#: Upper bounds of a plausible brain lesion measurement (a whole adult head is about 200 mm and 1.5 l):
#: beyond them a value is a typing or unit error, refused before it can drive a response.
MAX_DIAMETER_MM = 300.0
MAX_VOLUME_MM3 = 3_000_000.0
_DIAMETER_FIELDS = ("longest_diameter_mm", "perpendicular_diameter_mm", "max_3d_diameter_mm")


def _check_measurements(values: dict[str, Any], current: LesionObservation | None = None) -> None:
    """Refuse impossible measurements (negative, not finite, beyond a head, perpendicular > LD).

    Args:
        values: the fields being set.
        current: the observation being changed (its other values take part in the LD check).
    """
    errors: dict[str, list[str]] = {}
    for name in (*_DIAMETER_FIELDS, "volume_mm3"):
        value = values.get(name)
        if value is None:
            continue
        limit = MAX_VOLUME_MM3 if name == "volume_mm3" else MAX_DIAMETER_MM
        unit = "mm3" if name == "volume_mm3" else "mm"
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            errors[name] = ["Must be a number."]
        elif value < 0:
            errors[name] = ["Must be 0 or more."]
        elif value > limit:
            errors[name] = [
                f"{value:g} {unit} is beyond any brain lesion (at most {limit:g} {unit}): check the unit."
            ]
    if not errors:
        longest = values.get("longest_diameter_mm", getattr(current, "longest_diameter_mm", None))
        perpendicular = values.get(
            "perpendicular_diameter_mm", getattr(current, "perpendicular_diameter_mm", None)
        )
        if longest is not None and perpendicular is not None and perpendicular > longest + 1e-6:
            field = (
                "perpendicular_diameter_mm"
                if "perpendicular_diameter_mm" in values
                else "longest_diameter_mm"
            )
            errors[field] = [
                f"The perpendicular diameter ({perpendicular:g} mm) cannot exceed the longest diameter "
                f"({longest:g} mm): the longest diameter is the longest chord (rano-bm.md section 1)."
            ]
    if errors:
        raise InvalidInputError(
            "Invalid measurement: " + "; ".join(f"{k}: {' '.join(v)}" for k, v in errors.items()), errors
        )


def _check_merged_into(lesion: Lesion, values: dict[str, Any]) -> None:
    """A lesion merges into another lesion of its patient, and a merged lesion is not seen on its own."""
    into = values.get("merged_into")
    if into is None:
        return
    if into.pk == lesion.pk or into.patient_id != lesion.patient_id:
        raise InvalidInputError(
            "A lesion merges into another lesion of the same patient.",
            {"merged_into": ["Must be another lesion of this patient."]},
        )
    if values.get("present") is True:
        raise InvalidInputError(
            "A lesion merged into another has no component of its own at this visit (present must be false).",
            {"present": ["Must be false for a merged lesion."]},
        )


def _check_caliper(values: dict[str, Any]) -> None:
    for name in ("caliper_points_mm", "perpendicular_points_mm"):
        points = values.get(name)
        if points is None:
            continue
        ok = (
            isinstance(points, list | tuple)
            and len(points) == 2
            and all(
                isinstance(p, list | tuple)
                and len(p) == 3
                and all(isinstance(c, int | float) and not isinstance(c, bool) for c in p)
                for p in points
            )
        )
        if not ok:
            raise InvalidInputError(
                f"{name} must be two physical points [[x, y, z], [x, y, z]] in mm.",
                {name: ["Expected [[x, y, z], [x, y, z]] (numbers, mm)."]},
            )
        values[name] = [[float(c) for c in p] for p in points]


@transaction.atomic
def update_observation(
    observation: LesionObservation,
    *,
    actor: Any | None,
    reason: str = "",
    correlation_id: str = "",
    **changes: Any,
) -> LesionObservation:
    """Correct an observation. A user's edit of an AI observation turns its source into ``edited``."""
    check_fields(LesionObservation, changes, LesionObservation.WRITABLE_FIELDS)
    _check_caliper(changes)
    _check_measurements(changes, observation)
    if changes.get("present") is True:
        changes.setdefault("merged_into", None)  # seen on its own again: no longer inside another mass
    _check_merged_into(observation.lesion, changes)
    run = changes.get("segmentation_run")
    if run is not None and run.series.timepoint_id != observation.timepoint_id:
        raise InvalidInputError(
            "The segmentation run is of another visit.",
            {"segmentation_run": ["Must be a run on a series of this visit."]},
        )
    if actor is not None and observation.source == ObservationSource.AI and "source" not in changes:
        changes["source"] = ObservationSource.EDITED
    return update_row(
        observation,
        changes,
        allowed=LesionObservation.WRITABLE_FIELDS,
        actor=actor,
        reason=reason,
        correlation_id=correlation_id,
    )


__all__ = [
    "LESION_FIELDS",
    "MAX_DIAMETER_MM",
    "create_lesion",
    "measurement_fields",
    "next_lesion_label",
    "record_observation",
    "update_lesion",
    "update_observation",
]
