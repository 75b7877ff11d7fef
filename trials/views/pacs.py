"""The PACS inbox page for data managers: studies received but not routed, to assign or discard.

``/inbox/`` lists the pending studies the user may resolve (``trials.permissions.visible_received_studies``):
sender, study date, the series with the trial rules' verdicts, and why routing stopped. Each has two
forms: assign (to an existing visit, or a new visit of a patient, optionally remembering the site's
Patient ID) and discard (with a reason). Both call the actions of ``trials.actions.pacs`` and are audited.
The last resolved or routed studies are listed below for reference.
"""

from __future__ import annotations

import datetime as dt

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from trials.actions.pacs import assign_received_study, discard_received_study
from trials.choices import ReceivedStudyState
from trials.exceptions import ServiceError
from trials.models import Patient, ReceivedStudy, Timepoint
from trials.permissions import MANAGE_PATIENTS, has_capability, visible_received_studies, visible_trial_ids

RECENT = 20


@login_required
def inbox(request: HttpRequest) -> HttpResponse:
    """Pending studies with their assign/discard forms, and the last ones received."""
    items = visible_received_studies(request.user)
    pending = list(items.filter(state=ReceivedStudyState.INBOX).order_by("received_at"))
    recent = list(items.exclude(state=ReceivedStudyState.INBOX)[:RECENT])
    trials = visible_trial_ids(request.user)
    visits = list(
        Timepoint.objects.filter(patient__trial__in=trials)
        .select_related("patient__trial")
        .order_by("patient__trial__code", "patient__subject_id", "scan_date")
    )
    patients = list(
        Patient.objects.filter(trial__in=trials).select_related("trial").order_by("trial__code", "subject_id")
    )
    context = {"pending": pending, "recent": recent, "visits": visits, "patients": patients}
    return render(request, "dashboard/inbox.html", context)


def _item(request: HttpRequest, item_id: int) -> ReceivedStudy:
    item = visible_received_studies(request.user).filter(pk=item_id).first()
    if item is None:
        raise Http404("No such received study.")
    return item


@login_required
@require_POST
def inbox_assign(request: HttpRequest, item_id: int) -> HttpResponse:
    item = _item(request, item_id)
    trials = visible_trial_ids(request.user)
    timepoint = Timepoint.objects.filter(
        pk=request.POST.get("timepoint") or 0, patient__trial__in=trials
    ).first()
    patient = timepoint.patient if timepoint else None
    if patient is None:
        patient = Patient.objects.filter(pk=request.POST.get("patient") or 0, trial__in=trials).first()
    if patient is None:
        messages.error(request, "Choose a visit, or a patient and the label of a new visit.")
        return redirect("dashboard:inbox")
    if not has_capability(request.user, patient.trial, MANAGE_PATIENTS):
        messages.error(request, "Your role in this trial does not allow assigning studies.")
        return redirect("dashboard:inbox")
    scan_date = None
    if request.POST.get("scan_date"):
        try:
            scan_date = dt.date.fromisoformat(request.POST["scan_date"])
        except ValueError:
            messages.error(request, "The scan date is not a date (YYYY-MM-DD).")
            return redirect("dashboard:inbox")
    try:
        resolved = assign_received_study(
            item,
            timepoint=timepoint,
            patient=patient,
            visit_label=request.POST.get("visit_label", "").strip(),
            scan_date=scan_date,
            series_uid=request.POST.get("series_instance_uid", ""),
            remember_patient_id=request.POST.get("remember_patient_id") == "on",
            actor=request.user,
            reason=request.POST.get("reason", ""),
        )
    except ServiceError as exc:
        messages.error(request, exc.message)
        return redirect("dashboard:inbox")
    messages.success(request, f"Received study {resolved.pk}: {resolved.reason}.")
    return redirect("dashboard:inbox")


@login_required
@require_POST
def inbox_discard(request: HttpRequest, item_id: int) -> HttpResponse:
    item = _item(request, item_id)
    if item.trial is not None and not has_capability(request.user, item.trial, MANAGE_PATIENTS):
        messages.error(request, "Your role in this trial does not allow discarding studies.")
        return redirect("dashboard:inbox")
    try:
        discard_received_study(item, actor=request.user, reason=request.POST.get("reason", ""))
    except ServiceError as exc:
        messages.error(request, exc.message)
        return redirect("dashboard:inbox")
    messages.success(request, f"Received study {item.pk} discarded.")
    return redirect("dashboard:inbox")
