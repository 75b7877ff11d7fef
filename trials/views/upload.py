"""Series upload from the patient timeline (session login, CSRF-protected), answering the job to follow.

The upload handlers (a size limit, then a temporary file) must be installed before anything reads the
request body, and Django's CSRF check reads it (``request.POST``): so the view is ``csrf_exempt`` on
the outside and applies ``csrf_protect`` itself once the handlers are in place, as the Django docs on
upload handlers prescribe. The stored series and its pipeline job come from
the action :func:`trials.actions.imaging.upload_series`, the same as ``POST /api/v1/timepoints/{id}/series/``.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.files.uploadhandler import TemporaryFileUploadHandler
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_POST

from trials import permissions
from trials.actions import imaging
from trials.api.uploads import SizeLimitUploadHandler, UploadTooLargeError, _local_copy
from trials.exceptions import DuplicateSeriesError, ServiceError
from trials.views.common import timepoint_for


def _limit_bytes() -> int:
    return int(getattr(settings, "PIPELINE_MAX_UPLOAD_BYTES", 2 * 1024**3))


@csrf_protect
def _upload(request: HttpRequest, timepoint_id: int) -> HttpResponse:
    timepoint = timepoint_for(request.user, timepoint_id)
    if not permissions.has_capability(request.user, timepoint.patient.trial, permissions.MANAGE_PATIENTS):
        return JsonResponse(
            {"detail": "Your role in this trial does not allow uploading images."}, status=403
        )
    try:
        upload = request.FILES.get("file")
    except UploadTooLargeError:
        return JsonResponse(
            {"detail": f"The upload is larger than the limit of {_limit_bytes() / 1024**2:.0f} MiB."},
            status=413,
        )
    if upload is None:
        return JsonResponse({"detail": "Choose a file: a zip of one DICOM series, or a NIfTI."}, status=400)
    folder = Path(tempfile.mkdtemp(prefix="mettrack-upload-"))
    try:
        result = imaging.upload_series(
            timepoint,
            _local_copy(upload, folder),
            actor=request.user,
            reason="uploaded from the dashboard",
            correlation_id=getattr(request, "correlation_id", ""),
        )
    except DuplicateSeriesError as exc:
        body: dict[str, Any] = {"detail": exc.message}
        if exc.existing is not None:  # only a series of a trial the user can see is pointed to
            body["existing_series"] = exc.existing.pk
        return JsonResponse(body, status=409)
    except ServiceError as exc:  # not an MR series (400), no room to store it (507)
        return JsonResponse({"detail": exc.message}, status=exc.http_status)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    job = {"id": result.job.pk, "progress_url": reverse("dashboard:job-progress", args=[result.job.pk])}
    return JsonResponse({"series": {"id": result.series.pk}, "job": job}, status=202)


@csrf_exempt
@require_POST
@login_required
def upload_series(request: HttpRequest, timepoint_id: int) -> HttpResponse:
    """Store one uploaded series of a visit (data managers) and answer 202 with the job id."""
    request.upload_handlers = [
        SizeLimitUploadHandler(request, limit_bytes=_limit_bytes()),
        TemporaryFileUploadHandler(request),
    ]
    return _upload(request, timepoint_id)
