"""Data-management pages: the export page (download form) and the data-quality page of a trial.

Routes in ``trials/urls.py``, namespace ``exports``:
    ``exports:trial``    ``/trials/<id>/exports/``   filters + one download button per export kind
    ``exports:quality``  ``/trials/<id>/quality/``   missing images, failed jobs, pending reviews,
                                                     unconfirmed CR/PR with due dates, overrides, kappa

Same access rule as the export API: data managers and trial admins; 404 for non-members, 403 for others.
"""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse

from trials.exports import EXPORTS
from trials.exports.access import trial_for_export
from trials.models import Trial
from trials.quality import quality_report


def _trial(request: HttpRequest, trial_id: int) -> Trial:
    return trial_for_export(request.user, trial_id)


@login_required
def exports_page(request: HttpRequest, trial_id: int) -> HttpResponse:
    """Export form: filters and one button per export kind (the download itself is the API endpoint)."""
    trial = _trial(request, trial_id)
    downloads = [
        (dataset, reverse("api:trial-export", args=(trial.pk, kind))) for kind, dataset in EXPORTS.items()
    ]
    context = {"trial": trial, "downloads": downloads, "sites": trial.sites.order_by("code")}
    return render(request, "quality/exports.html", context)


@login_required
def quality_page(request: HttpRequest, trial_id: int) -> HttpResponse:
    """Data-quality report of a trial (a fixed number of queries, whatever the trial's size)."""
    trial = _trial(request, trial_id)
    report = quality_report(trial)
    categories, matrix = report.agreement.matrix()
    context = {
        "trial": trial,
        "report": report,
        "agreement_categories": categories,
        "agreement_rows": list(zip(categories, matrix, strict=True)),
        "exports_url": reverse("exports:trial", args=(trial.pk,)),
    }
    return render(request, "quality/quality.html", context)
