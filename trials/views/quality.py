"""Data-management pages: the export page (download form) and the data-quality page of a trial.

Routes in ``trials/urls.py``, namespace ``exports``:
    ``exports:trial``    ``/trials/<id>/exports/``   filters + one download button per export kind
    ``exports:download`` ``/trials/<id>/exports/<kind>.csv``   the download; an error comes back on the page
    ``exports:dictionary`` ``/trials/<id>/exports/dictionary.md``   the data dictionary of every column
    ``exports:quality``  ``/trials/<id>/quality/``   missing images, failed jobs, pending reviews,
                                                     unconfirmed CR/PR with due dates, overrides, kappa

Same access rule as the export API: data managers and trial admins; 404 for non-members, 403 for others.
"""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, HttpResponseBase, StreamingHttpResponse
from django.shortcuts import render
from django.urls import reverse

from trials.actions.exports import export_submission_file, export_trial
from trials.exports import EXPORTS, ExportError, ExportFilters, UnknownExportKindError, dictionary
from trials.exports.access import trial_for_export
from trials.exports.submission import SUBMISSION_DATASETS
from trials.models import Trial
from trials.quality import quality_report


def _trial(request: HttpRequest, trial_id: int) -> Trial:
    return trial_for_export(request.user, trial_id)


def _exports_page(request: HttpRequest, trial: Trial, *, error: str = "", status: int = 200) -> HttpResponse:
    downloads = [
        (dataset, reverse("exports:download", args=(trial.pk, kind))) for kind, dataset in EXPORTS.items()
    ]
    submission = [
        (f"{name}.xpt", reverse("exports:submission", args=(trial.pk, name))) for name in SUBMISSION_DATASETS
    ] + [("define.xml", reverse("exports:define-xml", args=(trial.pk,)))]
    context = {
        "trial": trial,
        "downloads": downloads,
        "submission": submission,
        "sites": trial.sites.order_by("code"),
        "error": error,
        "chosen": request.GET,  # the filters stay as the user set them
    }
    return render(request, "quality/exports.html", context, status=status)


@login_required
def exports_page(request: HttpRequest, trial_id: int) -> HttpResponse:
    """Export form: filters and one download button per export kind."""
    return _exports_page(request, _trial(request, trial_id))


@login_required
def export_download(request: HttpRequest, trial_id: int, kind: str) -> HttpResponseBase:
    """One export as CSV, through the same action as the API (audited); a filter the trial cannot
    answer comes back on the export page with its message, the filters kept."""
    trial = _trial(request, trial_id)
    try:
        export = export_trial(
            trial,
            kind,
            ExportFilters.from_query(request.GET),
            actor=request.user,
            correlation_id=getattr(request, "correlation_id", ""),
        )
    except UnknownExportKindError as exc:
        return _exports_page(request, trial, error=exc.message, status=404)
    except ExportError as exc:
        return _exports_page(request, trial, error=exc.message, status=400)
    response = StreamingHttpResponse(export.chunks, content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{export.filename}"'
    return response


@login_required
def submission_download(request: HttpRequest, trial_id: int, name: str) -> HttpResponse:
    """An SDTM dataset as SAS XPORT v5 (``tu``, ``tr``, ``rs``), audited; an error comes back on the page."""
    trial = _trial(request, trial_id)
    if name not in SUBMISSION_DATASETS:
        return _exports_page(
            request, trial, error=f"No transport file {name}.xpt: choose tu, tr or rs.", status=404
        )
    return _submission(request, trial, name)


@login_required
def define_download(request: HttpRequest, trial_id: int) -> HttpResponse:
    """The Define-XML 2.0 of the trial's SDTM transport files, audited."""
    return _submission(request, _trial(request, trial_id), "define")


def _submission(request: HttpRequest, trial: Trial, name: str) -> HttpResponse:
    try:
        filters = ExportFilters.from_query(request.GET) if name != "define" else ExportFilters()
        file = export_submission_file(
            trial, name, filters, actor=request.user, correlation_id=getattr(request, "correlation_id", "")
        )
    except ExportError as exc:
        return _exports_page(request, trial, error=exc.message, status=exc.http_status)
    response = HttpResponse(file.content, content_type=file.media_type)
    response["Content-Disposition"] = f'attachment; filename="{file.filename}"'
    return response


@login_required
def data_dictionary(request: HttpRequest, trial_id: int) -> HttpResponse:
    """The data dictionary (every column of every export, generated from their definitions)."""
    _trial(request, trial_id)
    response = HttpResponse(dictionary.render(), content_type="text/markdown; charset=utf-8")
    response["Content-Disposition"] = 'inline; filename="data-dictionary.md"'
    return response


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
