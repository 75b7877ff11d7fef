"""Actions on assessments: a radiologist confirms or overrides the response of a visit, and signs.

Both are electronic signatures (21 CFR Part 11 style): the signer re-enters their password, and the
row records who signed, when (UTC) and the meaning, which follows from the verb ("reviewed and
confirmed" / "reviewed and overridden"), never from the caller. The AI's answer stays as delivered: an
override is a new signed row (source ``radiologist``) superseding the current one, and the response it
sets counts for the rest of the patient (confirmation, best overall response and progression date of
that and later visits; rano-bm.md section 7), so the patient is re-assessed.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import transaction

from trials.actions import accounts
from trials.audit import new_correlation_id, trial_of
from trials.choices import DeliveryTrigger, MembershipRole, ResponseChoices, RunStatus
from trials.exceptions import InvalidInputError, SignatureError
from trials.models import Assessment, SegmentationRun, Timepoint
from trials.permissions import user_roles
from trials.pipeline.assessment import derive_override, reassess_patient
from trials.pipeline.delivery import queue_deliveries
from trials.records.assessments import record_confirmation, record_override


def verify_signature(
    actor: Any,
    password: str,
    *,
    signed: Any = None,
    correlation_id: str = "",
    separate_duties: bool = True,
) -> None:
    """Check the password re-entered to sign (21 CFR Part 11 style re-authentication).

    A wrong password is recorded (``signature_failed``, in its own transaction, so it stays when the
    signing action fails); after ``SIGNATURE_FAILURE_LIMIT`` failures within ``SIGNATURE_LOCKOUT_MINUTES``
    the user cannot sign, even with the right password, until the window has passed. With
    ``SEPARATE_ADMIN_AND_REVIEW_DUTIES`` a trial admin of the signed object's trial cannot sign (unless
    ``separate_duties`` is off: approving a model for a trial is a trial admin's own signature).

    Raises:
        SignatureError: no signed-in user, the password does not match, or signing is locked.
    """
    if actor is None or not getattr(actor, "is_authenticated", False):
        raise SignatureError("Only a signed-in user can sign.")
    if signed is not None and separate_duties:
        _check_separation_of_duties(actor, signed)
    if accounts.recent_signature_failures(actor) >= settings.SIGNATURE_FAILURE_LIMIT:
        raise SignatureError(
            f"Signing is locked for {settings.SIGNATURE_LOCKOUT_MINUTES} minutes after "
            f"{settings.SIGNATURE_FAILURE_LIMIT} wrong passwords: the signature was not applied.",
            {"password": ["Too many wrong passwords; try again later."]},
        )
    if not password or not actor.check_password(password):
        if signed is not None:
            accounts.record_signature_failure(
                actor, signed=signed, reason="wrong password", correlation_id=correlation_id
            )
        raise SignatureError(
            "The password does not match: the signature was not applied.",
            {"password": ["Incorrect password."]},
        )


def _check_separation_of_duties(actor: Any, signed: Any) -> None:
    if not settings.SEPARATE_ADMIN_AND_REVIEW_DUTIES:
        return
    trial = trial_of(signed)
    if trial is not None and MembershipRole.ADMIN in user_roles(actor, trial):
        raise SignatureError(
            "A trial admin of this trial cannot sign its assessments (separation of duties).",
            {"password": ["Signing is not allowed for trial admins of this trial."]},
        )


def confirm_assessment(
    assessment: Assessment, *, actor: Any, password: str, reason: str = "", correlation_id: str = ""
) -> Assessment:
    """Confirm the current AI assessment, signed by re-entering the password.

    The signature is the assessment's ``signed_by``, ``signed_at`` and ``signature_meaning``
    ("reviewed and confirmed"); the confirm AuditEvent records it.

    Raises:
        SignatureError: wrong password. InvalidStateError: superseded or already signed.
    """
    correlation_id = correlation_id or new_correlation_id()
    # The signature check first, outside the change's transaction: a failure is recorded and stays.
    verify_signature(actor, password, signed=assessment, correlation_id=correlation_id)
    with transaction.atomic():
        confirmed = record_confirmation(assessment, actor=actor, reason=reason, correlation_id=correlation_id)
    _send_signed_results(assessment.timepoint)
    return confirmed


def override_assessment(
    assessment: Assessment,
    *,
    overall_response: str,
    actor: Any,
    password: str,
    reason: str,
    correlation_id: str = "",
    **changes: Any,
) -> Assessment:
    """Override the response with the reader's, with a required reason, signed by the password.

    The new row's confirmation, best overall response and progression date are derived with the
    reader's response instead of being copied from the superseded row, and the patient is re-assessed:
    later visits' best overall response and progression date, and an earlier CR/PR's confirmation,
    follow the overridden response.

    Args:
        **changes: other result fields the reader sets (target_response, non_target_response, comment).

    Raises:
        SignatureError: wrong password. InvalidInputError: empty reason or unknown response.
        InvalidStateError: the assessment is superseded, or it is the baseline's.
    """
    correlation_id = correlation_id or new_correlation_id()
    verify_signature(actor, password, signed=assessment, correlation_id=correlation_id)
    with transaction.atomic():
        return _override(
            assessment, overall_response, actor=actor, reason=reason, correlation_id=correlation_id, **changes
        )


def _override(
    assessment: Assessment,
    overall_response: str,
    *,
    actor: Any,
    reason: str,
    correlation_id: str,
    **changes: Any,
) -> Assessment:
    if not (reason or "").strip():
        raise InvalidInputError("An override needs a reason.", {"reason": ["This field is required."]})
    if overall_response not in ResponseChoices.values:
        raise InvalidInputError(
            f"Unknown response {overall_response!r}.",
            {"overall_response": [f"One of {', '.join(ResponseChoices.values)}."]},
        )
    derived = derive_override(assessment, overall_response)
    new = record_override(
        assessment,
        overall_response=overall_response,
        actor=actor,
        reason=reason,
        correlation_id=correlation_id,
        **{**derived, **changes},
    )
    timepoint = assessment.timepoint
    reassess_patient(
        timepoint.patient,
        from_timepoint=timepoint,
        actor=actor,
        reason=reason,
        correlation_id=correlation_id,
        edited=True,
    )
    _send_signed_results(timepoint)
    return new


def _send_signed_results(timepoint: Timepoint) -> None:
    """Queue the visit's results for the destinations that get them only once signed (after commit)."""
    run = (
        SegmentationRun.objects.filter(
            series__timepoint=timepoint, status=RunStatus.SUCCEEDED, is_shadow=False
        )
        .select_related("series__timepoint__patient")
        .order_by("-created_at")
        .first()
    )
    if run is not None:
        queue_deliveries(run, trigger=DeliveryTrigger.SIGNED)


__all__ = ["confirm_assessment", "override_assessment", "verify_signature"]
