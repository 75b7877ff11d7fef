"""Actions on trials, their sites and memberships (trial admins; creating a trial is for superusers).

Each function is the whole operation an interface asks for, in one transaction with its audit event:
a change of a trial's response-criteria settings also queues the re-assessment of every patient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import transaction

from trials.audit import new_correlation_id, record_audit_event, snapshot
from trials.choices import AuditAction, MembershipRole
from trials.exceptions import InvalidInputError
from trials.models import ProcessingJob, Site, Trial, TrialMembership
from trials.pipeline.queue import create_reassessment_job
from trials.records.base import check_fields, check_same_trial, create_row, update_row

TRIAL_EDITABLE_FIELDS = ("title", "description", *Trial.CRITERIA_SETTING_FIELDS)


@transaction.atomic
def create_trial(
    *,
    code: str,
    title: str,
    description: str = "",
    is_demo: bool = False,
    actor: Any | None,
    reason: str = "",
    correlation_id: str = "",
    **criteria_settings: Any,
) -> Trial:
    """Create a trial; criteria settings not given take the rano-bm.md section 9 defaults.

    Args:
        code: unique protocol code.
        title: trial title.
        description: optional text.
        is_demo: a demo trial on synthetic data, where the demo model runs without approval (README
            "Model governance"); fixed at creation.
        actor: acting user or None. reason, correlation_id: see module docstring.
        **criteria_settings: any of ``Trial.CRITERIA_SETTING_FIELDS``.

    Raises:
        DuplicateError: the code is taken. InvalidInputError: unknown setting or invalid value.
    """
    check_fields(Trial, criteria_settings, Trial.CRITERIA_SETTING_FIELDS)
    return create_row(
        Trial,
        actor=actor,
        reason=reason,
        correlation_id=correlation_id,
        code=code,
        title=title,
        description=description,
        is_demo=is_demo,
        **criteria_settings,
    )


@dataclass(frozen=True)
class TrialUpdate:
    """What :func:`update_trial` did: the trial as saved and the re-assessment job it queued (or None)."""

    trial: Trial
    reassessment_job: ProcessingJob | None


@transaction.atomic
def update_trial(
    trial: Trial, *, actor: Any | None, reason: str = "", correlation_id: str = "", **changes: Any
) -> TrialUpdate:
    """Change a trial's title, description or response-criteria settings (the code never changes).

    A change of the criteria settings (rano-bm.md section 9) queues one job re-assessing every patient
    of the trial (each assessment stores the settings it was made under); the job is enqueued once
    the transaction commits.

    Raises:
        InvalidInputError: a field that cannot be changed, or settings the rules engine refuses.
    """
    correlation_id = correlation_id or new_correlation_id()
    before = trial.criteria_settings()
    trial = update_row(
        trial,
        changes,
        allowed=TRIAL_EDITABLE_FIELDS,
        actor=actor,
        reason=reason,
        correlation_id=correlation_id,
    )
    job = None
    if trial.criteria_settings() != before:
        job = create_reassessment_job(trial, actor=actor, correlation_id=correlation_id)
    return TrialUpdate(trial=trial, reassessment_job=job)


@transaction.atomic
def create_site(
    trial: Trial,
    *,
    code: str,
    name: str,
    actor: Any | None,
    reason: str = "",
    correlation_id: str = "",
) -> Site:
    """Add a site to a trial. Raises DuplicateError when the code exists in the trial."""
    return create_row(
        Site, actor=actor, reason=reason, correlation_id=correlation_id, trial=trial, code=code, name=name
    )


@transaction.atomic
def update_site(
    site: Site, *, actor: Any | None, reason: str = "", correlation_id: str = "", **changes: Any
) -> Site:
    """Change a site's code or name."""
    return update_row(
        site, changes, allowed=("code", "name"), actor=actor, reason=reason, correlation_id=correlation_id
    )


@transaction.atomic
def add_membership(
    trial: Trial,
    *,
    user: Any,
    role: str,
    site: Site | None = None,
    actor: Any | None,
    reason: str = "",
    correlation_id: str = "",
) -> TrialMembership:
    """Give a user a role in a trial.

    A grant to oneself (a trial admin making themselves radiologist, say) is recorded as such: the
    event's action is ``self_grant``. With ``SEPARATE_ADMIN_AND_REVIEW_DUTIES`` it is refused (except for
    superusers), and so is holding both the admin and the radiologist role in one trial.

    Raises:
        DuplicateError: the user already has this role in the trial.
        InvalidInputError: unknown role, a site of another trial, or a grant separation of duties forbids.
    """
    check_same_trial(trial, site)
    _check_duties(trial, user, role, actor)
    membership = create_row(
        TrialMembership,
        actor=actor,
        reason=reason,
        correlation_id=correlation_id,
        trial=trial,
        user=user,
        role=role,
        site=site,
    )
    if _is_self(actor, user):
        record_audit_event(
            actor=actor,
            action="self_grant",
            obj=membership,
            after={"role": role},
            reason=reason or "granted a role to themselves",
            correlation_id=correlation_id,
        )
    return membership


def _is_self(actor: Any | None, user: Any) -> bool:
    return actor is not None and getattr(actor, "pk", None) == user.pk


#: Roles one user may not hold together in a trial when duties are separated.
_SEPARATED_ROLES = frozenset({MembershipRole.ADMIN, MembershipRole.RADIOLOGIST})


def _check_duties(trial: Trial, user: Any, role: str, actor: Any | None) -> None:
    """Refuse what ``SEPARATE_ADMIN_AND_REVIEW_DUTIES`` forbids (a no-op when it is off)."""
    if not settings.SEPARATE_ADMIN_AND_REVIEW_DUTIES:
        return
    if _is_self(actor, user) and not getattr(actor, "is_superuser", False):
        raise InvalidInputError(
            "Separation of duties: nobody grants a role to themselves.",
            {"user": ["Ask another trial admin to grant you a role."]},
        )
    if role in _SEPARATED_ROLES:
        others = set(
            TrialMembership.objects.filter(trial=trial, user=user)
            .exclude(role=role)
            .values_list("role", flat=True)
        )
        if others & _SEPARATED_ROLES:
            raise InvalidInputError(
                "Separation of duties: one person cannot be both trial admin and radiologist of a trial.",
                {"role": ["This user already holds the other of admin and radiologist in this trial."]},
            )


@transaction.atomic
def update_membership(
    membership: TrialMembership,
    *,
    actor: Any | None,
    reason: str = "",
    correlation_id: str = "",
    **changes: Any,
) -> TrialMembership:
    """Change a membership's role or site (the role under the rules of :func:`add_membership`)."""
    if "site" in changes:
        check_same_trial(membership.trial, changes["site"])
    if "role" in changes and changes["role"] != membership.role:
        _check_duties(membership.trial, membership.user, changes["role"], actor)
    return update_row(
        membership,
        changes,
        allowed=("role", "site"),
        actor=actor,
        reason=reason,
        correlation_id=correlation_id,
    )


@transaction.atomic
def remove_membership(
    membership: TrialMembership, *, actor: Any | None, reason: str = "", correlation_id: str = ""
) -> None:
    """Revoke a user's role in a trial; the reason is required (the audit trail says why).

    Raises:
        InvalidInputError: no reason given.
    """
    if not (reason or "").strip():
        raise InvalidInputError(
            "Say why: removing a membership needs a reason for the audit trail.",
            {"reason": ["This field is required (e.g. ?reason=left the study team)."]},
        )
    before = snapshot(membership)
    record_audit_event(
        actor=actor,
        action=AuditAction.DELETE,
        obj=membership,
        before=before,
        reason=reason,
        correlation_id=correlation_id,
    )
    membership.delete()


__all__ = [
    "TRIAL_EDITABLE_FIELDS",
    "TrialUpdate",
    "add_membership",
    "create_site",
    "create_trial",
    "remove_membership",
    "update_membership",
    "update_site",
    "update_trial",
]
