"""Actions of model governance: register a model directory, attach its validation report, approve it for
a trial (a trial admin's e-signature), make it the trial's active model, retire it.

Lifecycle (README "Model governance"): a :class:`~trials.models.ModelVersion` is *registered*, then
*validated* once a validation report is attached (``bm-validate`` or the validation job), and may be
*retired* everywhere. In one trial (:class:`~trials.models.TrialModel`) a validated version is *approved*
by a trial admin, who signs by re-entering their password (meaning "approved for use", with a reason),
then made *active* (one active model per trial: the pipeline runs it on the trial's new series), and
*retired* there. Before approval a trial admin may put a registered or validated version *in shadow*
for a trial (one candidate per trial; :func:`start_shadow`, :func:`stop_shadow`): it then segments the
trial's new visits next to the active model, for comparison only (:mod:`trials.pipeline.shadow`). The
demo model needs no validation or approval in a demo trial, and is flagged as not for clinical use
wherever it appears. Each function is one transaction with its audit event.

Only file reads (config, checksums): no torch, so the web processes can call these actions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.db import transaction
from django.utils import timezone

from trials.actions.assessments import verify_signature
from trials.audit import record_audit_event, snapshot
from trials.choices import ModelLifecycle, SignatureMeaning, TrialModelStatus
from trials.exceptions import DuplicateError, InvalidInputError, InvalidStateError, SignatureError
from trials.models import ModelVersion, ProcessingJob, Trial, TrialModel
from trials.permissions import MANAGE_TRIAL, has_capability
from trials.pipeline.queue import create_validation_job
from trials.records.base import save_validated, update_row
from trials.records.imaging import model_identity, register_model_directory, store_validation_report

#: Audit actions of this module.
REGISTER = "model_register"
VALIDATE = "model_validate"
APPROVE = "model_approve"
ACTIVATE = "model_activate"
RETIRE = "model_retire"
SHADOW_START = "model_shadow_start"
SHADOW_STOP = "model_shadow_stop"

#: Statuses of a trial's row that carry no approval (a shadow candidate, running or stopped).
UNAPPROVED = (TrialModelStatus.SHADOW, TrialModelStatus.SHADOW_STOPPED)


def require_trial_admin(
    actor: Any | None, trial: Trial, doing: str = "approve, activate, retire or shadow its models"
) -> None:
    """A signed-in actor must be a trial admin of ``trial`` (or a superuser); None is the system (commands).

    Raises:
        SignatureError: "Only a trial admin of <trial> can <doing>."
    """
    if actor is not None and not has_capability(actor, trial, MANAGE_TRIAL):
        raise SignatureError(
            f"Only a trial admin of {trial.code} can {doing}.", {"trial": ["Trial admins only."]}
        )


def _require_reason(reason: str) -> str:
    reason = (reason or "").strip()
    if not reason:
        raise InvalidInputError("A reason is required.", {"reason": ["This field is required."]})
    return reason


def register_model(
    directory: str | Path, *, actor: Any | None, reason: str = "", correlation_id: str = ""
) -> tuple[ModelVersion, bool]:
    """Register a model directory as a ``ModelVersion`` (lifecycle ``registered``); idempotent.

    See :func:`trials.records.imaging.register_model_directory`.
    """
    return register_model_directory(directory, actor=actor, reason=reason, correlation_id=correlation_id)


def find_version(directory: str | Path) -> ModelVersion | None:
    """The registered version of a model directory (same weights and configuration), or None."""
    ident = model_identity(directory)
    return ModelVersion.objects.filter(
        weights_sha256=ident["weights_sha256"], config_sha256=ident["config_sha256"]
    ).first()


def attach_validation_report(
    version: ModelVersion,
    *,
    report_html: bytes,
    summary: dict[str, Any],
    actor: Any | None,
    correlation_id: str = "",
) -> ModelVersion:
    """Store a validation report with the version and move it to ``validated``
    (:func:`trials.records.imaging.store_validation_report`).

    Raises:
        InvalidStateError: the version is retired.
    """
    return store_validation_report(
        version, report_html=report_html, summary=summary, actor=actor, correlation_id=correlation_id
    )


@transaction.atomic
def start_validation(
    version: ModelVersion,
    trial: Trial,
    *,
    actor: Any | None,
    enqueue: bool = True,
    correlation_id: str = "",
) -> ProcessingJob:
    """Queue a validation job (queue ``gpu``): the version run on the trial's signed visits, its report
    stored with the version (which becomes validated). For a trial admin of the trial.

    Raises:
        SignatureError: not a trial admin. InvalidStateError: the version is retired.
    """
    require_trial_admin(actor, trial)
    if version.lifecycle == ModelLifecycle.RETIRED:
        raise InvalidStateError(f"{version} is retired: it cannot be validated.")
    return create_validation_job(version, trial, enqueue=enqueue, actor=actor, correlation_id=correlation_id)


def approve_model(
    trial: Trial,
    version: ModelVersion,
    *,
    actor: Any,
    password: str,
    reason: str,
    correlation_id: str = "",
) -> TrialModel:
    """A trial admin approves a validated model version for their trial, signing with their password.

    The signature records who, when (UTC) and the meaning "approved for use", with the reason. The demo
    model needs no validation report in a demo trial (it is still flagged as not for clinical use).

    A shadow candidate (running or stopped) is approved on its own row: its shadow stops, its evidence
    (runs, agreement) stays with it.

    Raises:
        SignatureError: not a trial admin of the trial, wrong password, or signing locked.
        InvalidInputError: no reason. InvalidStateError: the version is not validated, or retired.
        DuplicateError: already approved for this trial.
    """
    require_trial_admin(actor, trial)
    reason = _require_reason(reason)
    # The signature check first, outside the change's transaction: a failure is recorded and stays.
    verify_signature(actor, password, signed=version, correlation_id=correlation_id, separate_duties=False)
    return _approve(trial, version, actor=actor, reason=reason, correlation_id=correlation_id)


@transaction.atomic
def _approve(
    trial: Trial, version: ModelVersion, *, actor: Any, reason: str, correlation_id: str
) -> TrialModel:
    version = ModelVersion.objects.select_for_update().get(pk=version.pk)
    if version.lifecycle == ModelLifecycle.RETIRED:
        raise InvalidStateError(f"{version} is retired: it cannot be approved.")
    if version.lifecycle != ModelLifecycle.VALIDATED and not (version.is_demo and trial.is_demo):
        raise InvalidStateError(
            f"{version} has no validation report: validate it (bm-validate, or the dashboard's validation "
            "job) before approving it for a trial."
        )
    now = timezone.now()
    signature = {
        "status": TrialModelStatus.APPROVED,
        "approved_by": actor,
        "approved_by_name": actor.get_username(),
        "approved_at": now,
        "signature_meaning": SignatureMeaning.APPROVED_FOR_USE,
        "reason": reason,
    }
    existing = TrialModel.objects.select_for_update().filter(trial=trial, model_version=version).first()
    if existing is not None and existing.status in UNAPPROVED:
        if existing.status == TrialModelStatus.SHADOW:
            signature["shadow_stopped_at"] = now
        return update_row(
            existing,
            signature,
            allowed=list(signature),
            actor=actor,
            reason=reason,
            correlation_id=correlation_id,
            action=APPROVE,
        )
    if existing is not None:
        raise DuplicateError(f"{version} is already approved for {trial.code}.")
    row = TrialModel(trial=trial, model_version=version, **signature)
    save_validated(row)
    record_audit_event(
        actor=actor,
        action=APPROVE,
        obj=row,
        after=snapshot(row),
        reason=reason,
        correlation_id=correlation_id,
    )
    return row


@transaction.atomic
def activate_model(
    trial_model: TrialModel, *, actor: Any | None, reason: str, correlation_id: str = ""
) -> TrialModel:
    """Make an approved model the trial's active model; the previously active one goes back to approved.

    Raises:
        SignatureError: not a trial admin. InvalidInputError: no reason.
        InvalidStateError: the approval or the version is retired.
    """
    trial = trial_model.trial
    require_trial_admin(actor, trial)
    reason = _require_reason(reason)
    # Lock the trial's approvals so two activations serialise (the constraint allows one active).
    rows = {row.pk: row for row in TrialModel.objects.select_for_update().filter(trial=trial)}
    target = rows[trial_model.pk]
    if target.status == TrialModelStatus.ACTIVE:
        return target
    if target.status == TrialModelStatus.RETIRED:
        raise InvalidStateError(f"{target.model_version} is retired in {trial.code}: approve a new version.")
    if target.status in UNAPPROVED:
        raise InvalidStateError(
            f"{target.model_version} is a shadow candidate of {trial.code}, not approved: approve it "
            "(signed) before activating it."
        )
    if target.model_version.lifecycle == ModelLifecycle.RETIRED:
        raise InvalidStateError(f"{target.model_version} is retired: it cannot be activated.")
    now = timezone.now()
    for row in rows.values():
        if row.status == TrialModelStatus.ACTIVE:
            update_row(
                row,
                {"status": TrialModelStatus.APPROVED},
                allowed=["status"],
                actor=actor,
                reason=f"replaced as active model by {target.model_version}: {reason}",
                correlation_id=correlation_id,
                action=ACTIVATE,
            )
    return update_row(
        target,
        {"status": TrialModelStatus.ACTIVE, "activated_at": now},
        allowed=["status", "activated_at"],
        actor=actor,
        reason=reason,
        correlation_id=correlation_id,
        action=ACTIVATE,
    )


@transaction.atomic
def retire_trial_model(
    trial_model: TrialModel, *, actor: Any | None, reason: str, correlation_id: str = ""
) -> TrialModel:
    """Retire a model in one trial (the pipeline refuses it there from now on; its runs stay).

    Raises:
        SignatureError: not a trial admin. InvalidInputError: no reason.
    """
    require_trial_admin(actor, trial_model.trial)
    reason = _require_reason(reason)
    return update_row(
        trial_model,
        {"status": TrialModelStatus.RETIRED, "retired_at": timezone.now()},
        allowed=["status", "retired_at"],
        actor=actor,
        reason=reason,
        correlation_id=correlation_id,
        action=RETIRE,
    )


@transaction.atomic
def start_shadow(
    trial: Trial, version: ModelVersion, *, actor: Any | None, reason: str, correlation_id: str = ""
) -> TrialModel:
    """Put a registered or validated version *in shadow* for a trial: from now on each new visit's series
    is also segmented by it, after the active model's run, for comparison only (README "Shadow runs").

    Shadow is not approval: the row carries no signature, the pipeline never uses its runs as a visit's
    result, and approving it later is the usual signed approval. One candidate per trial at a time.
    Starting the shadow of the current candidate again changes nothing.

    Raises:
        SignatureError: not a trial admin. InvalidInputError: no reason.
        InvalidStateError: the version is retired, already approved (or active, or retired) in the
            trial, or another version is in shadow there.
    """
    require_trial_admin(actor, trial)
    reason = _require_reason(reason)
    version = ModelVersion.objects.select_for_update().get(pk=version.pk)
    if version.lifecycle == ModelLifecycle.RETIRED:
        raise InvalidStateError(f"{version} is retired: it cannot run in shadow.")
    # Lock the trial's rows so two starts serialise (the constraint allows one shadow per trial).
    rows = list(TrialModel.objects.select_for_update().filter(trial=trial).select_related("model_version"))
    other = next(
        (r for r in rows if r.status == TrialModelStatus.SHADOW and r.model_version_id != version.pk), None
    )
    if other is not None:
        raise InvalidStateError(
            f"{other.model_version} is already in shadow for {trial.code}: stop its shadow first."
        )
    now = timezone.now()
    existing = next((r for r in rows if r.model_version_id == version.pk), None)
    if existing is None:
        row = TrialModel(
            trial=trial,
            model_version=version,
            status=TrialModelStatus.SHADOW,
            reason=reason,
            shadow_started_at=now,
        )
        save_validated(row)
        record_audit_event(
            actor=actor,
            action=SHADOW_START,
            obj=row,
            after=snapshot(row),
            reason=reason,
            correlation_id=correlation_id,
        )
        return row
    if existing.status == TrialModelStatus.SHADOW:
        return existing
    if existing.status != TrialModelStatus.SHADOW_STOPPED:
        raise InvalidStateError(
            f"{version} is {existing.get_status_display().lower()} in {trial.code}: shadow runs are for "
            "candidates not yet approved."
        )
    return update_row(
        existing,
        {"status": TrialModelStatus.SHADOW, "shadow_started_at": now, "shadow_stopped_at": None},
        allowed=["status", "shadow_started_at", "shadow_stopped_at"],
        actor=actor,
        reason=reason,
        correlation_id=correlation_id,
        action=SHADOW_START,
    )


@transaction.atomic
def stop_shadow(
    trial_model: TrialModel, *, actor: Any | None, reason: str, correlation_id: str = ""
) -> TrialModel:
    """Stop a trial's shadow candidate: new visits are no longer segmented by it. Its shadow runs and
    their agreement stay (shown on the quality page); it can be approved, or put in shadow again.

    Raises:
        SignatureError: not a trial admin. InvalidInputError: no reason.
        InvalidStateError: the model is not in shadow in its trial.
    """
    require_trial_admin(actor, trial_model.trial)
    reason = _require_reason(reason)
    row = TrialModel.objects.select_for_update().select_related("model_version").get(pk=trial_model.pk)
    if row.status != TrialModelStatus.SHADOW:
        raise InvalidStateError(f"{row.model_version} is not in shadow in {trial_model.trial.code}.")
    return update_row(
        row,
        {"status": TrialModelStatus.SHADOW_STOPPED, "shadow_stopped_at": timezone.now()},
        allowed=["status", "shadow_stopped_at"],
        actor=actor,
        reason=reason,
        correlation_id=correlation_id,
        action=SHADOW_STOP,
    )


@transaction.atomic
def retire_model_version(
    version: ModelVersion, *, actor: Any | None, reason: str, correlation_id: str = ""
) -> ModelVersion:
    """Retire a version everywhere (superusers and the command line): every trial's approval is retired.

    Raises:
        SignatureError: a signed-in actor who is not a superuser. InvalidInputError: no reason.
    """
    if actor is not None and not getattr(actor, "is_superuser", False):
        raise SignatureError("Only a superuser can retire a model version in every trial.")
    reason = _require_reason(reason)
    for row in TrialModel.objects.filter(model_version=version).exclude(status=TrialModelStatus.RETIRED):
        update_row(
            row,
            {"status": TrialModelStatus.RETIRED, "retired_at": timezone.now()},
            allowed=["status", "retired_at"],
            actor=actor,
            reason=reason,
            correlation_id=correlation_id,
            action=RETIRE,
        )
    return update_row(
        version,
        {"lifecycle": ModelLifecycle.RETIRED, "is_active": False},
        allowed=["lifecycle", "is_active"],
        actor=actor,
        reason=reason,
        correlation_id=correlation_id,
        action=RETIRE,
    )


__all__ = [
    "activate_model",
    "approve_model",
    "attach_validation_report",
    "find_version",
    "model_identity",
    "register_model",
    "retire_model_version",
    "retire_trial_model",
    "start_shadow",
    "start_validation",
    "stop_shadow",
]
