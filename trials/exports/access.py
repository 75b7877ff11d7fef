"""Who may export a trial's data and see its data-quality page: data managers and trial admins."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import Http404

from trials.choices import MembershipRole
from trials.models import Trial
from trials.permissions import user_roles, visible_trials

#: Roles that may export a trial's data (issue 8: "data managers and trial admins only").
EXPORT_ROLES = frozenset({MembershipRole.DATA_MANAGER, MembershipRole.ADMIN})


def may_export(user: Any, trial: Trial) -> bool:
    """Whether ``user`` may export ``trial``: a data manager or trial admin of it, or a superuser."""
    if not getattr(user, "is_authenticated", False):
        return False
    if user.is_superuser:
        return True
    return bool(EXPORT_ROLES & user_roles(user, trial))


def trial_for_export(user: Any, trial_id: int) -> Trial:
    """The trial, checked for export access.

    Raises:
        Http404: no such trial, or the user is not a member (no information about other trials leaks).
        PermissionDenied: a member whose roles do not allow exports (DRF and Django both answer 403).
    """
    trial = visible_trials(user).filter(pk=trial_id).first()
    if trial is None:
        raise Http404("No such trial.")
    if not may_export(user, trial):
        raise PermissionDenied("Only data managers and trial admins may export this trial's data.")
    return trial
