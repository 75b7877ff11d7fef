"""Actions on trials, their sites and memberships (trial admins; creating a trial is for superusers).

Each function is the whole operation an interface asks for, in one transaction with its audit event:
a change of a trial's response-criteria settings also queues the re-assessment of every patient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db import transaction

from trials.audit import new_correlation_id, record_audit_event, snapshot
from trials.choices import AuditAction
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

    Raises:
        DuplicateError: the user already has this role in the trial.
        InvalidInputError: unknown role, or a site of another trial.
    """
    check_same_trial(trial, site)
    return create_row(
        TrialMembership,
        actor=actor,
        reason=reason,
        correlation_id=correlation_id,
        trial=trial,
        user=user,
        role=role,
        site=site,
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
    """Change a membership's role or site."""
    if "site" in changes:
        check_same_trial(membership.trial, changes["site"])
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
    """Revoke a user's role in a trial."""
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
