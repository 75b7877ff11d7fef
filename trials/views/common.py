"""Access helpers shared by the dashboard views.

Objects of trials the user does not belong to answer 404 (as the API does: no information leaks);
a verb the user's role does not allow answers 403, even when the button was not shown.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404
from django.urls import NoReverseMatch, reverse

from trials import permissions
from trials.models import Patient, Timepoint, Trial


def trial_for(user: Any, trial_id: int) -> Trial:
    """The trial if the user may see it, else 404."""
    trial = permissions.visible_trials(user).filter(pk=trial_id).first()
    if trial is None:
        raise Http404("No such trial.")
    return trial


def patient_for(user: Any, patient_id: int) -> Patient:
    """The patient (with trial and site) if the user may see its trial, else 404."""
    patient = (
        Patient.objects.select_related("trial", "site")
        .filter(pk=patient_id, trial__in=permissions.visible_trial_ids(user))
        .first()
    )
    if patient is None:
        raise Http404("No such patient.")
    return patient


def timepoint_for(user: Any, timepoint_id: int, queryset: QuerySet[Timepoint] | None = None) -> Timepoint:
    """The visit (with patient, trial, site) if the user may see its trial, else 404."""
    base = queryset if queryset is not None else Timepoint.objects.all()
    timepoint = (
        base.select_related("patient__trial", "patient__site")
        .filter(pk=timepoint_id, patient__trial__in=permissions.visible_trial_ids(user))
        .first()
    )
    if timepoint is None:
        raise Http404("No such visit.")
    return timepoint


def require(user: Any, trial: Trial, capability: str) -> None:
    """Raise PermissionDenied (403) unless the user holds ``capability`` in ``trial``."""
    if not permissions.has_capability(user, trial, capability):
        raise PermissionDenied("Your role in this trial does not allow this action.")


def capability_flags(user: Any, trial: Trial) -> dict[str, bool]:
    """Template flags: ``can_review``, ``can_edit_lesions``, ``can_export``, ``can_manage_patients``,
    ``can_retry_jobs``."""
    caps = permissions.user_capabilities(user, trial)
    return {
        "can_review": permissions.REVIEW_ASSESSMENTS in caps,
        "can_edit_lesions": permissions.EDIT_LESIONS in caps,
        "can_export": permissions.EXPORT in caps,
        "can_manage_patients": permissions.MANAGE_PATIENTS in caps,
        "can_retry_jobs": bool({permissions.MANAGE_PATIENTS, permissions.MANAGE_TRIAL} & caps),
    }


def optional_url(name: str, *args: Any) -> str | None:
    """Reverse a URL that another part of the project may or may not provide yet (exports, data quality)."""
    try:
        return reverse(name, args=args)
    except NoReverseMatch:
        return None
