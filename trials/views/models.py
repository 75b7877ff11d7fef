"""A trial's segmentation models (README "Model governance"): which version the trial runs, which are
approved or in shadow, each version's lifecycle and validation report, and, for trial admins, the forms
of the governance verbs (validation job, shadow start and stop, approve with the e-signature, activate,
retire), each calling its action in :mod:`trials.actions.governance`, the export of the signed reads as
a training set and the fine-tuning job (README "Learning from the readers")."""

from __future__ import annotations

from collections.abc import Callable

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_POST

from trials import permissions
from trials.actions import governance, training
from trials.choices import JobKind, TrialModelStatus
from trials.exceptions import InvalidInputError, ServiceError
from trials.models import ModelVersion, ProcessingJob, TrainingSet, Trial, TrialModel
from trials.views.common import trial_for


@login_required
def trial_models(request: HttpRequest, trial_id: int) -> HttpResponse:
    """The trial's models and every registered version, with the validation job for trial admins."""
    trial = trial_for(request.user, trial_id)
    approvals = list(TrialModel.objects.filter(trial=trial).select_related("model_version"))
    rows = {row.model_version_id: row for row in approvals}
    versions = list(ModelVersion.objects.order_by("-created_at"))
    for version in versions:
        version.trial_row = rows.get(version.pk)  # type: ignore[attr-defined]
    context = {
        "trial": trial,
        "approvals": approvals,
        "versions": versions,
        "jobs": ProcessingJob.objects.filter(
            trial=trial, kind__in=(JobKind.VALIDATE, JobKind.TRAIN)
        ).order_by("-pk")[:10],
        "can_manage": permissions.has_capability(request.user, trial, permissions.MANAGE_TRIAL),
        "statuses": TrialModelStatus,
        "training_sets": TrainingSet.objects.filter(trial=trial)[:10],
    }
    return render(request, "dashboard/models.html", context)


def _managed_trial(
    request: HttpRequest, trial_id: int, doing: str = "change the models of this trial"
) -> Trial:
    """The trial, for a trial admin of it (404 for non-members, 403 "Only a trial admin can <doing>." for
    other members)."""
    trial = trial_for(request.user, trial_id)
    if not permissions.has_capability(request.user, trial, permissions.MANAGE_TRIAL):
        raise PermissionDenied(f"Only a trial admin can {doing}.")
    return trial


def _back(request: HttpRequest, trial_id: int) -> HttpResponseRedirect:
    return HttpResponseRedirect(reverse("dashboard:trial-models", args=[trial_id]))


#: Verbs on one of the trial's model rows: the action and the message of its success.
ROW_VERBS: dict[str, tuple[Callable[..., TrialModel], str]] = {
    "activate": (governance.activate_model, "{} is now the trial's active model."),
    "retire": (governance.retire_trial_model, "{} is retired in this trial."),
    "stop-shadow": (governance.stop_shadow, "The shadow runs of {} are stopped."),
}


@login_required
@require_POST
def model_verb(request: HttpRequest, trial_id: int, version_id: int, verb: str) -> HttpResponse:
    """Shadow start, approval (signed with the password) or a verb on the trial's row of a version
    (activate, retire, stop the shadow), for trial admins; the reason is required, errors come back on
    the page."""
    trial = _managed_trial(request, trial_id)
    version = ModelVersion.objects.filter(pk=version_id).first()
    if version is None or (verb not in ROW_VERBS and verb not in ("shadow", "approve")):
        raise Http404("No such model version or verb.")
    reason = request.POST.get("reason", "")
    cid = getattr(request, "correlation_id", "")
    try:
        if verb == "shadow":
            governance.start_shadow(trial, version, actor=request.user, reason=reason, correlation_id=cid)
            done = f"{version} is in shadow: new visits are also segmented by it (not approved)."
        elif verb == "approve":
            governance.approve_model(
                trial,
                version,
                actor=request.user,
                password=request.POST.get("password", ""),
                reason=reason,
                correlation_id=cid,
            )
            done = f"{version} is approved for use in {trial.code} (signed)."
        else:
            row = TrialModel.objects.filter(trial=trial, model_version=version).first()
            if row is None:
                raise Http404("This model version has no row in this trial.")
            change, message = ROW_VERBS[verb]
            change(row, actor=request.user, reason=reason, correlation_id=cid)
            done = message.format(version)
    except ServiceError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, done)
    return _back(request, trial.pk)


@login_required
@require_POST
def validate_model(request: HttpRequest, trial_id: int, version_id: int) -> HttpResponse:
    """Queue the validation of a model version on the trial's signed visits (trial admins)."""
    trial = _managed_trial(request, trial_id, "validate models for this trial")
    version = ModelVersion.objects.filter(pk=version_id).first()
    if version is None:
        raise Http404("No such model version.")
    try:
        job = governance.start_validation(
            version, trial, actor=request.user, correlation_id=getattr(request, "correlation_id", "")
        )
    except ServiceError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"Validation of {version} queued (job {job.pk}).")
    return _back(request, trial.pk)


#: What only a trial admin may do with training sets, as the 403 page says it.
TRAINING = "export training sets and fine-tune models"


def _whole_number(request: HttpRequest, name: str, default: int) -> int:
    try:
        return int(request.POST.get(name) or default)
    except ValueError as exc:
        raise InvalidInputError(f"{name.replace('_', ' ')} must be a whole number.") from exc


@login_required
@require_POST
def export_training_set(request: HttpRequest, trial_id: int) -> HttpResponse:
    """Export the trial's signed reads as a training set (trial admins), the listed patients held out."""
    trial = _managed_trial(request, trial_id, TRAINING)
    hold_out = [s for s in request.POST.get("hold_out", "").replace(",", " ").split() if s]
    try:
        try:
            fraction = float(request.POST.get("hold_out_fraction") or 0.0)
        except ValueError as exc:
            raise InvalidInputError("The held-out fraction must be a number.") from exc
        row = training.export_training_set(
            trial,
            actor=request.user,
            hold_out=hold_out,
            hold_out_fraction=fraction,
            correlation_id=getattr(request, "correlation_id", ""),
        )
    except ServiceError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(
            request,
            f"Training set {row.pk} exported: {row.n_cases} case(s), {len(row.held_out_patients)} patient(s) "
            "held out.",
        )
    return _back(request, trial.pk)


@login_required
@require_POST
def fine_tune(request: HttpRequest, trial_id: int, set_id: int) -> HttpResponse:
    """Queue a fine-tuning job on one of the trial's training sets (trial admins)."""
    trial = _managed_trial(request, trial_id, TRAINING)
    row = TrainingSet.objects.filter(pk=set_id, trial=trial).first()
    if row is None:
        raise Http404("No such training set in this trial.")
    try:
        job = training.start_fine_tuning(
            row,
            actor=request.user,
            method=request.POST.get("method", training.PAPER),
            epochs=_whole_number(request, "epochs", 20),
            steps_per_epoch=_whole_number(request, "steps_per_epoch", 50),
            correlation_id=getattr(request, "correlation_id", ""),
        )
    except ServiceError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"Fine-tuning on training set {row.pk} queued (job {job.pk}).")
    return _back(request, trial.pk)
