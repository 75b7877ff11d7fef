"""Roles and per-trial permissions.

A user sees a trial's objects only when they hold a ``TrialMembership`` in that trial (superusers see
every trial). What each role may change is one table, ``ROLE_CAPABILITIES``; the API, the admin and the
dashboard ask ``has_capability``. Objects of trials a user cannot see are filtered out of every queryset,
so they answer 404, never 403 (no information leaks about other trials).

Capabilities:
    view                read everything of the trial (patients, visits, lesions, assessments, audit, jobs)
    manage_trial        change the trial's title and criteria settings, manage sites
    manage_memberships  add, change and remove memberships
    manage_patients     create and edit patients and visits
    export              export trial data (eCRF CSV, SDTM)
    edit_lesions        create and edit lesions and lesion observations
    review_assessments  confirm or override assessments (signed)
"""

from __future__ import annotations

from typing import Any

from django.db.models import Q, QuerySet
from rest_framework.permissions import SAFE_METHODS, BasePermission

from trials.audit import trial_of
from trials.choices import MembershipRole
from trials.models import ReceivedStudy, Trial, TrialMembership

VIEW = "view"
MANAGE_TRIAL = "manage_trial"
MANAGE_MEMBERSHIPS = "manage_memberships"
MANAGE_PATIENTS = "manage_patients"
EXPORT = "export"
EDIT_LESIONS = "edit_lesions"
REVIEW_ASSESSMENTS = "review_assessments"

#: Role -> capabilities in the trial of the membership (the README "Roles" table is this table).
ROLE_CAPABILITIES: dict[str, frozenset[str]] = {
    MembershipRole.INVESTIGATOR: frozenset({VIEW}),
    MembershipRole.RADIOLOGIST: frozenset({VIEW, EDIT_LESIONS, REVIEW_ASSESSMENTS}),
    MembershipRole.DATA_MANAGER: frozenset({VIEW, MANAGE_PATIENTS, EXPORT}),
    MembershipRole.ADMIN: frozenset({VIEW, MANAGE_TRIAL, MANAGE_MEMBERSHIPS, EXPORT}),
}

ALL_CAPABILITIES: frozenset[str] = frozenset().union(*ROLE_CAPABILITIES.values())


def visible_trials(user: Any) -> QuerySet[Trial]:
    """Trials the user may see: all for a superuser, else those they are a member of."""
    if not getattr(user, "is_authenticated", False):
        return Trial.objects.none()
    if user.is_superuser:
        return Trial.objects.all()
    return Trial.objects.filter(memberships__user=user).distinct()


def visible_trial_ids(user: Any) -> QuerySet[Any]:
    """Ids of ``visible_trials(user)``, as a subquery usable in ``filter(trial__in=...)``."""
    if getattr(user, "is_authenticated", False) and not user.is_superuser:
        # A flat subquery on memberships avoids the DISTINCT join of visible_trials().
        return TrialMembership.objects.filter(user=user).values("trial_id")
    return visible_trials(user).values("pk")


def user_roles(user: Any, trial: Trial | int) -> set[str]:
    """Roles the user holds in a trial (cached per user object and trial for one request)."""
    if not getattr(user, "is_authenticated", False):
        return set()
    trial_id = trial.pk if isinstance(trial, Trial) else trial
    cache: dict[int, set[str]] = user.__dict__.setdefault("_mettrack_roles", {})
    if trial_id not in cache:
        cache[trial_id] = set(
            TrialMembership.objects.filter(user=user, trial_id=trial_id).values_list("role", flat=True)
        )
    return cache[trial_id]


def user_capabilities(user: Any, trial: Trial | int) -> frozenset[str]:
    """Everything the user may do in a trial (all capabilities for a superuser)."""
    if not getattr(user, "is_authenticated", False):
        return frozenset()
    if user.is_superuser:
        return ALL_CAPABILITIES
    roles = user_roles(user, trial)
    return frozenset().union(*(ROLE_CAPABILITIES.get(role, frozenset()) for role in roles))


def has_capability(user: Any, trial: Trial | int | None, capability: str) -> bool:
    """Whether the user may exercise ``capability`` in ``trial``.

    Objects outside any trial (``trial`` None, e.g. model versions) are managed by superusers only.

    Raises:
        ValueError: unknown capability name (a typo must not silently deny or allow).
    """
    if capability not in ALL_CAPABILITIES:
        raise ValueError(f"Unknown capability {capability!r}; known: {', '.join(sorted(ALL_CAPABILITIES))}.")
    if trial is None:
        return bool(getattr(user, "is_superuser", False))
    return capability in user_capabilities(user, trial)


class TrialObjectPermission(BasePermission):
    """DRF permission: reads need membership (enforced by the queryset), writes need a capability.

    A view sets ``write_capability`` (for create/update/delete) and may set ``action_capabilities``
    (``{"confirm": REVIEW_ASSESSMENTS}``) for ``@action`` verbs. Create is checked again by the view once
    the target trial is known from the validated data.
    """

    message = "Your role in this trial does not allow this action."

    def has_permission(self, request: Any, view: Any) -> bool:
        return bool(request.user and request.user.is_authenticated)

    def has_object_permission(self, request: Any, view: Any, obj: Any) -> bool:
        capability = required_capability(request, view)
        if capability is None:
            return True
        return has_capability(request.user, trial_of(obj), capability)


def required_capability(request: Any, view: Any) -> str | None:
    """Capability a request needs: the action's, the view's write capability, or None for reads."""
    action = getattr(view, "action", None)
    per_action: dict[str, str] = getattr(view, "action_capabilities", {})
    if action in per_action:
        return per_action[action]
    if request.method in SAFE_METHODS:
        return None
    return getattr(view, "write_capability", None)


def visible_received_studies(user: Any) -> QuerySet[ReceivedStudy]:
    """Received studies (the PACS inbox and its history) a user may see and resolve.

    Those of the trials where the user manages patients, and those of no known trial (an unknown patient
    may belong to any trial) for anyone who manages patients in some trial; all for a superuser.
    """
    items = ReceivedStudy.objects.select_related("trial", "patient", "timepoint")
    if not getattr(user, "is_authenticated", False):
        return items.none()
    if user.is_superuser:
        return items
    roles = [role for role, caps in ROLE_CAPABILITIES.items() if MANAGE_PATIENTS in caps]
    managed = TrialMembership.objects.filter(user=user, role__in=roles)
    if not managed.exists():
        return items.none()
    return items.filter(Q(trial__in=managed.values("trial_id")) | Q(trial__isnull=True))
