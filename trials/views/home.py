"""Home (the user's trials) and trial home (patients with latest response, BOR, pending reviews...)."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone

from trials import permissions
from trials.models import TrialMembership
from trials.views.common import capability_flags, optional_url, trial_for
from trials.views.queries import trial_patient_summaries, worklist


@login_required
def home(request: HttpRequest) -> HttpResponse:
    """Trials the user belongs to, with their patient counts and the user's roles."""
    trials = list(
        permissions.visible_trials(request.user)
        .annotate(patient_count=Count("patients", distinct=True))
        .order_by("code")
    )
    roles: dict[int, list[str]] = {}
    for trial_id, role in TrialMembership.objects.filter(user_id=request.user.pk or 0).values_list(
        "trial_id", "role"
    ):  # login_required: the user has a primary key
        roles.setdefault(trial_id, []).append(role.replace("_", " "))
    rows = [
        (
            trial,
            ", ".join(sorted(roles.get(trial.pk, []))) or ("superuser" if request.user.is_superuser else ""),
        )
        for trial in trials
    ]
    return render(request, "dashboard/home.html", {"rows": rows})


@login_required
def trial_home(request: HttpRequest, trial_id: int) -> HttpResponse:
    """Patients of a trial: latest response, best overall response, pending reviews, failed jobs, next visit."""
    trial = trial_for(request.user, trial_id)
    summaries = trial_patient_summaries(trial)
    # One reverse() for the page instead of several per row: the table can hold hundreds of patients.
    marker = 987654321
    pattern = reverse("dashboard:patient", args=[marker])
    for summary in summaries:
        summary.url = pattern.replace(str(marker), str(summary.patient_id))
    flags = capability_flags(request.user, trial)
    context = {
        "trial": trial,
        "summaries": summaries,
        "pending_total": sum(s.pending_reviews for s in summaries),
        "failed_total": sum(s.failed_jobs for s in summaries),
        "exports_url": optional_url("exports:trial", trial.pk) if flags["can_export"] else None,
        "quality_url": optional_url("exports:quality", trial.pk) if flags["can_export"] else None,
        **flags,
    }
    return render(request, "dashboard/trial.html", context)


@login_required
def review_worklist(request: HttpRequest) -> HttpResponse:
    """Radiologists' worklist: visits awaiting review across the trials where the user reviews, oldest
    draft first, with the AI's answer and whether signing the visit changes the patient's response."""
    trial_ids = [
        trial.pk
        for trial in permissions.visible_trials(request.user)
        if permissions.has_capability(request.user, trial, permissions.REVIEW_ASSESSMENTS)
    ]
    rows = worklist(trial_ids, today=timezone.localdate())
    return render(request, "dashboard/worklist.html", {"rows": rows, "reviews_somewhere": bool(trial_ids)})
