"""Row helpers of assessments: a new draft superseding the current one, a confirmation, an override.

Each response is a row: a new result supersedes the current row of its visit and criteria (kept, with
``is_current`` false), so every earlier version stays. The engine's rows are written by the
re-assessment: source ``ai`` for the AI's own answer, ``edited`` for a result on edited data. A
radiologist's confirmation signs the current row, an override is a new signed row of source
``radiologist``. The actions (``trials.actions.assessments``) verify the signature and re-assess what
follows.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils import timezone

from trials.audit import record_audit_event, snapshot
from trials.choices import (
    AssessmentSource,
    AssessmentStatus,
    AuditAction,
    Criteria,
    ResponseChoices,
    SignatureMeaning,
)
from trials.exceptions import InvalidInputError, InvalidStateError
from trials.models import Assessment, ModelVersion, Timepoint
from trials.records.base import check_fields, create_row, save_validated, update_row


def _current_assessment(timepoint: Timepoint, criteria: str) -> Assessment | None:
    row = (
        Assessment.objects.select_for_update()
        .filter(timepoint=timepoint, criteria=criteria, is_current=True)
        .first()
    )
    if row is not None:
        row.timepoint = timepoint  # the caller's object, with the patient and trial it has loaded
    return row


def _retire(assessment: Assessment, *, actor: Any | None, reason: str, correlation_id: str) -> None:
    update_row(
        assessment,
        {"is_current": False},
        allowed=("is_current",),
        actor=actor,
        reason=reason,
        correlation_id=correlation_id,
        action="supersede",
    )


@transaction.atomic
def create_assessment(
    timepoint: Timepoint,
    *,
    criteria: str = Criteria.RANO_BM,
    source: str = AssessmentSource.AI,
    model_version: ModelVersion | None = None,
    actor: Any | None,
    reason: str = "",
    correlation_id: str = "",
    **results: Any,
) -> Assessment:
    """Store a new draft assessment of a visit; it supersedes the current one of the same criteria.

    ``settings`` defaults to the trial's ``criteria_settings()``: every assessment stores what it used.

    Args:
        timepoint: the visit.
        criteria: ``Criteria`` value.
        source: ``AssessmentSource`` value.
        model_version: the model whose segmentation of the visit was assessed.
        **results: any of ``Assessment.RESULT_FIELDS``.

    Raises:
        InvalidInputError: invalid response value or field.
    """
    check_fields(Assessment, results, Assessment.RESULT_FIELDS)
    results.setdefault("settings", timepoint.patient.trial.criteria_settings())
    previous = _current_assessment(timepoint, criteria)
    if previous is not None:
        _retire(
            previous,
            actor=actor,
            reason=reason or "superseded by a new assessment",
            correlation_id=correlation_id,
        )
    return create_row(
        Assessment,
        actor=actor,
        reason=reason,
        correlation_id=correlation_id,
        timepoint=timepoint,
        criteria=criteria,
        source=source,
        model_version=model_version,
        status=AssessmentStatus.DRAFT,
        supersedes=previous,
        is_current=True,
        **results,
    )


def _require_user(actor: Any | None, verb: str) -> None:
    if actor is None or not getattr(actor, "is_authenticated", False):
        raise InvalidInputError(f"Only a signed-in user can {verb} an assessment (the signature is theirs).")


def _require_current(assessment: Assessment, verb: str) -> None:
    if not assessment.is_current:
        raise InvalidStateError(
            f"Assessment {assessment.pk} has been superseded; {verb} the current assessment of the visit."
        )


@transaction.atomic
def record_confirmation(
    assessment: Assessment,
    *,
    actor: Any,
    reason: str = "",
    correlation_id: str = "",
) -> Assessment:
    """A radiologist confirms the current draft assessment and signs it ("reviewed and confirmed").

    The signature's meaning follows from the verb, never from the caller: a confirmed row cannot carry
    an "overridden" manifestation. Callers acting for a person verify the signature first
    (:func:`trials.actions.assessments.confirm_assessment`).

    Raises:
        InvalidInputError: no user (the system cannot sign).
        InvalidStateError: the assessment is superseded or already confirmed/overridden.
    """
    _require_user(actor, "confirm")
    assessment = Assessment.objects.select_for_update().get(pk=assessment.pk)
    _require_current(assessment, "confirm")
    if assessment.status != AssessmentStatus.DRAFT:
        raise InvalidStateError(
            f"Assessment {assessment.pk} is already {assessment.status}; only a draft can be confirmed."
        )
    return update_row(
        assessment,
        {
            "status": AssessmentStatus.CONFIRMED,
            "signed_by": actor,
            "signed_at": timezone.now(),
            "signature_meaning": SignatureMeaning.REVIEWED_AND_CONFIRMED,
        },
        allowed=("status", "signed_by", "signed_at", "signature_meaning"),
        actor=actor,
        reason=reason,
        correlation_id=correlation_id,
        action=AuditAction.CONFIRM,
    )


@transaction.atomic
def record_override(
    assessment: Assessment,
    *,
    overall_response: str,
    actor: Any,
    reason: str,
    correlation_id: str = "",
    **changes: Any,
) -> Assessment:
    """A radiologist replaces the response of the current assessment; a new signed row supersedes it.

    Args:
        assessment: the current assessment of the visit (any status).
        overall_response: the reader's ``ResponseChoices`` value.
        reason: required: why the reader disagrees.
        **changes: other result fields to change (target_response, non_target_response, comment...).

    Raises:
        InvalidInputError: no user, empty reason, or invalid response.
        InvalidStateError: the assessment is superseded, or it is the baseline's (no response there).
    """
    _require_user(actor, "override")
    if not (reason or "").strip():
        raise InvalidInputError("An override needs a reason.", {"reason": ["This field is required."]})
    check_fields(Assessment, changes, Assessment.RESULT_FIELDS)
    if overall_response not in ResponseChoices.values:
        raise InvalidInputError(
            f"Unknown response {overall_response!r}.",
            {"overall_response": [f"Must be one of {', '.join(ResponseChoices.values)}."]},
        )
    old = Assessment.objects.select_for_update(of=("self",)).select_related("timepoint").get(pk=assessment.pk)
    _require_current(old, "override")
    if old.timepoint.is_baseline:
        raise InvalidStateError(
            "The baseline visit has no response to override (rano-bm.md section 6); correct its lesions, "
            "flags or target selection instead, or confirm it."
        )
    _retire(old, actor=actor, reason=reason, correlation_id=correlation_id)
    values = {name: getattr(old, name) for name in Assessment.RESULT_FIELDS}
    values.update(changes)
    values["overall_response"] = overall_response
    new = Assessment(
        timepoint=old.timepoint,
        criteria=old.criteria,
        source=AssessmentSource.RADIOLOGIST,
        model_version=old.model_version,
        status=AssessmentStatus.OVERRIDDEN,
        signed_by=actor,
        signed_at=timezone.now(),
        signature_meaning=SignatureMeaning.REVIEWED_AND_OVERRIDDEN,
        supersedes=old,
        is_current=True,
        **values,
    )
    save_validated(new)
    record_audit_event(
        actor=actor,
        action=AuditAction.OVERRIDE,
        obj=new,
        before=snapshot(old),
        after=snapshot(new),
        reason=reason,
        correlation_id=correlation_id,
    )
    return new


__all__ = [
    "create_assessment",
    "record_confirmation",
    "record_override",
]
