"""Patient timeline: visits with responses, SLD and volume charts, per-lesion curves, lesion tables,
and upload of a new visit's series with a live progress bar (the ProcessingJob)."""

from __future__ import annotations

import datetime as dt

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from trials import charts, permissions
from trials.actions import jobs as job_actions
from trials.actions import patients as patient_actions
from trials.exceptions import ServiceError
from trials.models import ProcessingJob, Trial
from trials.views.common import capability_flags, patient_for, require, timepoint_for
from trials.views.queries import VisitRow, patient_timeline


def _volume_point(r: VisitRow) -> charts.BurdenPoint:
    """A visit's total target volume and volumetric response (its volumetric row, else the RANO-BM row's)."""
    row = r.volumetric or r.assessment
    if r.volumetric is not None:
        response = r.volumetric.overall_response or r.volumetric.volumetric_response
    else:
        response = r.assessment.volumetric_response if r.assessment is not None else ""
    return charts.BurdenPoint(
        r.timepoint.visit_label,
        r.timepoint.scan_date,
        row.sum_volume_mm3 if row is not None else None,
        r.timepoint.is_baseline,
        response,
    )


def timeline_figures(rows: list[VisitRow], trial: Trial) -> dict[str, str]:
    """Plotly JSON of the patient's charts: SLD, total volume, per-lesion LD and volume."""
    figures: dict[str, str] = {}
    if sum(1 for r in rows if r.timepoint.is_baseline) != 1:
        return figures
    sld = [
        charts.BurdenPoint(
            r.timepoint.visit_label,
            r.timepoint.scan_date,
            r.assessment.sum_ld_mm if r.assessment else None,
            r.timepoint.is_baseline,
            r.assessment.overall_response if r.assessment else "",
        )
        for r in rows
    ]
    volume = [_volume_point(r) for r in rows]
    if any(p.value is not None for p in sld):
        figures["sld"] = charts.burden_figure(
            sld, pr_threshold_pct=trial.pr_threshold_pct, pd_threshold_pct=trial.pd_threshold_pct
        ).to_json()
    if any(p.value is not None for p in volume):
        figures["volume"] = charts.burden_figure(
            volume,
            pr_threshold_pct=trial.vol_pr_threshold_pct,
            pd_threshold_pct=trial.vol_pd_threshold_pct,
            quantity="Total volume",
            unit="mm3",
        ).to_json()
    ld_points: list[charts.LesionPoint] = []
    volume_points: list[charts.LesionPoint] = []
    for r in rows:
        for lesion_row in r.lesions:
            obs = lesion_row.observation
            if obs is None or lesion_row.category == "dropped":
                continue
            ld = (
                (obs.longest_diameter_mm if obs.present else 0.0)
                if obs.longest_diameter_mm is not None
                else None
            )
            vol = (obs.volume_mm3 if obs.present else 0.0) if obs.volume_mm3 is not None else None
            ld_points.append(charts.LesionPoint(lesion_row.lesion.label, r.timepoint.scan_date, ld))
            volume_points.append(charts.LesionPoint(lesion_row.lesion.label, r.timepoint.scan_date, vol))
    if ld_points:
        figures["lesion_ld"] = charts.lesion_curves_figure(ld_points).to_json()
        figures["lesion_volume"] = charts.lesion_curves_figure(
            volume_points, quantity="Volume", unit="mm3"
        ).to_json()
    return figures


@login_required
def patient_detail(request: HttpRequest, patient_id: int) -> HttpResponse:
    """The patient timeline page."""
    patient = patient_for(request.user, patient_id)
    rows = patient_timeline(patient)
    flags = capability_flags(request.user, patient.trial)
    running = [job.pk for row in rows for job in row.jobs if job.state in ("queued", "running")]
    return render(
        request,
        "dashboard/patient.html",
        {
            "patient": patient,
            "trial": patient.trial,
            "rows": rows,
            "figures": timeline_figures(rows, patient.trial),
            "running_job_ids": running,
            **flags,
        },
    )


@login_required
def job_progress(request: HttpRequest, job_id: int) -> JsonResponse:
    """Progress of a processing job, polled by the progress bar."""
    job = (
        ProcessingJob.objects.filter(pk=job_id, trial__in=permissions.visible_trial_ids(request.user))
        .values("pk", "kind", "state", "progress_pct", "stage", "message", "error")
        .first()
    )
    if job is None:
        raise Http404("No such job.")
    return JsonResponse(job)


@require_POST
@login_required
def retry_job(request: HttpRequest, job_id: int) -> HttpResponse:
    """Run a failed job again (data managers and trial admins), then back to the patient's timeline."""
    job = ProcessingJob.objects.filter(
        pk=job_id, trial__in=permissions.visible_trial_ids(request.user)
    ).first()
    if job is None:
        raise Http404("No such job.")
    if not any(
        permissions.has_capability(request.user, job.trial, c)
        for c in (permissions.MANAGE_PATIENTS, permissions.MANAGE_TRIAL)
    ):
        raise PermissionDenied("Your role in this trial does not allow running jobs again.")
    reason = request.POST.get("reason", "").strip()
    back = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(
        back, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        back = reverse("dashboard:trial", args=[job.trial_id]) if job.trial_id else reverse("dashboard:home")
    if not reason:
        messages.error(request, "Say why the job is run again (a reason for the audit trail).")
        return HttpResponseRedirect(back)
    try:
        job_actions.retry_job(
            job, actor=request.user, reason=reason, correlation_id=getattr(request, "correlation_id", "")
        )
    except ServiceError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"Job {job.pk} queued again.")
    return HttpResponseRedirect(back)


@require_POST
@login_required
def add_visit(request: HttpRequest, patient_id: int) -> HttpResponse:
    """Add a visit to the patient (data managers), then back to the timeline with what happened."""
    patient = patient_for(request.user, patient_id)
    require(request.user, patient.trial, permissions.MANAGE_PATIENTS)
    back = reverse("dashboard:patient", args=[patient.pk])
    label = request.POST.get("visit_label", "").strip()
    scan_date = request.POST.get("scan_date", "").strip()
    if not label or not scan_date:
        messages.error(request, "A visit needs its label and its scan date.")
        return HttpResponseRedirect(back)
    try:
        visit = patient_actions.create_timepoint(
            patient,
            visit_label=label,
            scan_date=scan_date,
            is_baseline=request.POST.get("is_baseline") == "on",
            actor=request.user,
            reason="visit added on the dashboard",
            correlation_id=getattr(request, "correlation_id", ""),
        )
    except ServiceError as exc:
        messages.error(request, exc.message)
        return HttpResponseRedirect(back)
    messages.success(
        request, f"Visit {visit.visit_label} ({visit.scan_date:%Y-%m-%d}) added: upload its series."
    )
    return HttpResponseRedirect(f"{back}#visit-{visit.pk}")


@require_POST
@login_required
def edit_visit(request: HttpRequest, timepoint_id: int) -> HttpResponse:
    """Change a visit's label or scan date (data managers; a reason is required), then back to the visit.

    Through ``edit_timepoint``: audited, and the patient is re-assessed when the date changes the order.
    """
    timepoint = timepoint_for(request.user, timepoint_id)
    require(request.user, timepoint.patient.trial, permissions.MANAGE_PATIENTS)
    back = reverse("dashboard:visit", args=[timepoint.pk])
    reason = request.POST.get("reason", "").strip()
    label = request.POST.get("visit_label", "").strip()
    try:
        scan_date = dt.date.fromisoformat(request.POST.get("scan_date", "").strip())
    except ValueError:
        messages.error(request, "The scan date must be a date (YYYY-MM-DD).")
        return HttpResponseRedirect(back)
    if not label or not reason:
        messages.error(request, "A visit needs its label, and a change its reason (for the audit trail).")
        return HttpResponseRedirect(back)
    changes = {
        name: value
        for name, value in (("visit_label", label), ("scan_date", scan_date))
        if getattr(timepoint, name) != value
    }
    if not changes:
        messages.info(request, "Nothing changed.")
        return HttpResponseRedirect(back)
    try:
        patient_actions.edit_timepoint(
            timepoint,
            actor=request.user,
            reason=reason,
            correlation_id=getattr(request, "correlation_id", ""),
            **changes,
        )
    except ServiceError as exc:
        messages.error(request, exc.message)
        return HttpResponseRedirect(back)
    messages.success(request, f"Visit saved: {timepoint.visit_label}, {timepoint.scan_date:%Y-%m-%d}.")
    return HttpResponseRedirect(back)
