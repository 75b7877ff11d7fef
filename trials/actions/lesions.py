"""Actions on lesions and their observations, field by field (the REST API and the admin).

A reader's change that can alter a response (a lesion's role or flags, rano-bm.md section 2; an
observation's measurements, presence or unequivocal progression, sections 3-4) re-assesses the patient
in the same transaction; a change of ``notes`` alone does not. A reader's measurement is never
labelled as the AI's: the observations they add are ``manual``, an AI observation they change becomes
``edited`` (the dashboard's contour-based corrections are in :mod:`trials.actions.review`).
"""

from __future__ import annotations

from typing import Any

from django.db import transaction

from trials.audit import new_correlation_id
from trials.choices import ObservationSource
from trials.exceptions import InvalidInputError
from trials.models import Lesion, LesionObservation, Patient, Timepoint
from trials.pipeline.assessment import reassess_patient
from trials.records.lesions import create_lesion, record_observation, update_lesion, update_observation


def _changed(obj: Any, before: dict[str, Any]) -> bool:
    return any(name != "notes" and getattr(obj, name) != value for name, value in before.items())


def _refuse_ai_source(values: dict[str, Any]) -> None:
    """A reader's measurement cannot be labelled as the AI's (traceability of every number)."""
    if values.get("source") == ObservationSource.AI:
        raise InvalidInputError(
            "A reader's measurement cannot be recorded as the AI's.",
            {"source": ["Only the pipeline records AI observations; yours are manual or edited."]},
        )


@transaction.atomic
def add_lesion(
    patient: Patient,
    *,
    label: str | None = None,
    actor: Any | None,
    reason: str = "",
    correlation_id: str = "",
    **fields: Any,
) -> Lesion:
    """Add a lesion to a patient (its observations follow with :func:`add_observation`).

    Raises:
        DuplicateError: the label exists for the patient.
        InvalidInputError: ``first_seen_timepoint`` is another patient's visit, or an invalid field.
    """
    return create_lesion(
        patient, label=label, actor=actor, reason=reason, correlation_id=correlation_id, **fields
    )


@transaction.atomic
def edit_lesion(
    lesion: Lesion, *, actor: Any, reason: str = "", correlation_id: str = "", **changes: Any
) -> Lesion:
    """Change a lesion's role or reader flags, then re-assess the patient from the lesion's first visit
    when the change can alter a response."""
    correlation_id = correlation_id or new_correlation_id()
    before = {name: getattr(lesion, name) for name in changes}
    update_lesion(lesion, actor=actor, reason=reason, correlation_id=correlation_id, **changes)
    first = Timepoint.objects.filter(observations__lesion=lesion).order_by("scan_date").first()
    if _changed(lesion, before) and first is not None:
        reassess_patient(
            lesion.patient,
            from_timepoint=first,
            actor=actor,
            reason=reason,
            correlation_id=correlation_id,
            edited=True,
        )
    return lesion


@transaction.atomic
def add_observation(
    lesion: Lesion,
    timepoint: Timepoint,
    *,
    actor: Any,
    reason: str = "",
    correlation_id: str = "",
    **fields: Any,
) -> LesionObservation:
    """Record a reader's measurement of a lesion at a visit (source ``manual``), then re-assess."""
    _refuse_ai_source(fields)
    fields["source"] = ObservationSource.MANUAL
    correlation_id = correlation_id or new_correlation_id()
    observation = record_observation(
        lesion, timepoint, actor=actor, reason=reason, correlation_id=correlation_id, **fields
    )
    reassess_patient(
        timepoint.patient,
        from_timepoint=timepoint,
        actor=actor,
        reason=reason,
        correlation_id=correlation_id,
        edited=True,
    )
    return observation


@transaction.atomic
def edit_observation(
    observation: LesionObservation, *, actor: Any, reason: str = "", correlation_id: str = "", **changes: Any
) -> LesionObservation:
    """Correct an observation, then re-assess when the change can alter a response.

    The source is derived, never the client's: a person's edit of an AI row makes it ``edited`` (the row
    helper applies that rule), a reader's row keeps its source.
    """
    _refuse_ai_source(changes)
    changes.pop("source", None)
    correlation_id = correlation_id or new_correlation_id()
    before = {name: getattr(observation, name) for name in changes}
    update_observation(observation, actor=actor, reason=reason, correlation_id=correlation_id, **changes)
    if _changed(observation, before):
        timepoint = observation.timepoint
        reassess_patient(
            timepoint.patient, from_timepoint=timepoint, actor=actor, reason=reason,
            correlation_id=correlation_id, edited=True
        )  # fmt: skip
    return observation


__all__ = ["add_lesion", "add_observation", "edit_lesion", "edit_observation"]
