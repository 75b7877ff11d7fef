"""A trial's segmentation models (README "Model governance"): which version the trial runs, which are
approved, each version's lifecycle and validation report, and, for trial admins, the validation job."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_POST

from trials import permissions
from trials.actions import governance
from trials.choices import JobKind
from trials.exceptions import ServiceError
from trials.models import ModelVersion, ProcessingJob, TrialModel
from trials.views.common import trial_for


@login_required
def trial_models(request: HttpRequest, trial_id: int) -> HttpResponse:
    """The trial's models and every registered version, with the validation job for trial admins."""
    trial = trial_for(request.user, trial_id)
    context = {
        "trial": trial,
        "approvals": TrialModel.objects.filter(trial=trial).select_related("model_version"),
        "versions": ModelVersion.objects.order_by("-created_at"),
        "jobs": ProcessingJob.objects.filter(trial=trial, kind=JobKind.VALIDATE).order_by("-pk")[:10],
        "can_manage": permissions.has_capability(request.user, trial, permissions.MANAGE_TRIAL),
    }
    return render(request, "dashboard/models.html", context)


@login_required
@require_POST
def validate_model(request: HttpRequest, trial_id: int, version_id: int) -> HttpResponse:
    """Queue the validation of a model version on the trial's signed visits (trial admins)."""
    trial = trial_for(request.user, trial_id)
    if not permissions.has_capability(request.user, trial, permissions.MANAGE_TRIAL):
        raise PermissionDenied("Only a trial admin can validate models for this trial.")
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
    return HttpResponseRedirect(reverse("dashboard:trial-models", args=[trial.pk]))
