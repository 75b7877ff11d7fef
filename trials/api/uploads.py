"""Series upload: ``POST /api/v1/timepoints/{id}/series/`` (GET on the same URL lists the visit's series).

The request is multipart with one file field ``file``: a zip of one DICOM series, or a NIfTI file
(``.nii``/``.nii.gz``); optional field ``series_uid`` picks one series when a zip holds several. The body
is streamed to a temporary file and refused past ``PIPELINE_MAX_UPLOAD_BYTES`` (413). The file is then
validated, de-identified and stored by :func:`trials.actions.imaging.upload_series`, which also queues the
pipeline job; the answer is 202 with the job and its URL (``GET /api/v1/jobs/{id}/`` shows the progress).

Errors: 400 with the imaging module's message for an unusable upload (nothing is stored), 409 with a
pointer to the existing series for a duplicate (same Series Instance UID), 403 without the
``manage_patients`` capability in the visit's trial, 404 for a visit the user cannot see.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.files.uploadhandler import FileUploadHandler, TemporaryFileUploadHandler
from django.http import Http404
from django.urls import reverse
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.parsers import MultiPartParser
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from trials.actions.imaging import resegment_series, upload_series
from trials.api import serializers as s
from trials.api.pagination import StandardPagination
from trials.api.views import TimepointViewSet
from trials.exceptions import DuplicateSeriesError
from trials.models import ImagingSeries, Timepoint
from trials.permissions import MANAGE_PATIENTS, has_capability, visible_trial_ids
from trials.storage import disk_space_errors


class UploadTooLargeError(Exception):
    """The request body passed the upload size limit while it was being read."""


class SizeLimitUploadHandler(FileUploadHandler):
    """Counts the bytes of every uploaded file and stops reading past ``limit_bytes``.

    Placed before Django's TemporaryFileUploadHandler, so nothing beyond the limit is written to disk.
    """

    def __init__(self, request: Any = None, *, limit_bytes: int) -> None:
        super().__init__(request)
        self.limit_bytes = limit_bytes

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes:
        if start + len(raw_data) > self.limit_bytes:
            raise UploadTooLargeError
        return raw_data

    def file_complete(self, file_size: int) -> None:
        return None


def _max_bytes() -> int:
    return int(getattr(settings, "PIPELINE_MAX_UPLOAD_BYTES", 2 * 1024**3))


def _too_large() -> Response:
    limit = _max_bytes()
    size = f"{limit / 1024**2:.0f} MiB" if limit >= 1024**2 else f"{limit / 1024:.0f} KiB"
    return Response(
        {"detail": f"The upload is larger than the limit of {size} for one series."},
        status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
    )


def _local_copy(upload: Any, folder: Path) -> Path:
    """Copy an uploaded file to ``folder`` under its own (sanitised) name, in chunks.

    The suffix matters: the reader tells NIfTI from zip by ``.nii``/``.nii.gz``, which Django's temporary
    file names do not keep. The rest of the client's name is dropped (``DOE_JOHN_T1.nii.gz`` becomes
    ``upload.nii.gz``), so it can reach no message, log line or row.
    """
    lower = Path(upload.name or "upload").name.lower()
    suffix = next((s for s in (".nii.gz", ".nii", ".zip", ".dcm") if lower.endswith(s)), "")
    target = folder / f"upload{suffix}"
    with disk_space_errors(), target.open("wb") as out:  # a full temporary disk is a 507, not a 500
        for chunk in upload.chunks():
            out.write(chunk)
    return target


def _duplicate_body(request: Request, exc: DuplicateSeriesError) -> dict[str, Any]:
    """The 409 body: a pointer to the stored series only when the uploader may see its trial."""
    body: dict[str, Any] = {"detail": exc.message}
    if exc.existing is not None:
        body["existing_series"] = exc.existing.pk
        body["existing_series_url"] = request.build_absolute_uri(
            reverse("api:series-detail", args=[exc.existing.pk])
        )
    return body


class SeriesUploadView(APIView):
    """Upload one MR series of a visit (POST) or list the visit's series (GET)."""

    permission_classes = [IsAuthenticated]
    parser_classes = [MultiPartParser]
    # GET answers the visit viewset's paginated list: the schema says so.
    pagination_class = StandardPagination

    def initialize_request(self, request: Any, *args: Any, **kwargs: Any) -> Request:
        # The upload handlers must be in place before anything reads the body. With session
        # authentication DRF's CSRF check reads request.POST during authentication, before post() runs,
        # and Django refuses to change the handlers once the body has been parsed.
        if request.method == "POST":
            request.upload_handlers = [
                SizeLimitUploadHandler(request, limit_bytes=_max_bytes()),
                TemporaryFileUploadHandler(request),
            ]
        return super().initialize_request(request, *args, **kwargs)

    def handle_exception(self, exc: Exception) -> Response:
        # The size limit can trip while the CSRF check parses the body, outside post()'s own handling.
        if isinstance(exc, UploadTooLargeError):
            return _too_large()
        return super().handle_exception(exc)

    def _timepoint(self, request: Request, pk: int) -> Timepoint:
        timepoint = (
            Timepoint.objects.select_related("patient__trial")
            .filter(pk=pk, patient__trial__in=visible_trial_ids(request.user))
            .first()
        )
        if timepoint is None:
            raise Http404("No such visit.")
        return timepoint

    @extend_schema(responses=s.ImagingSeriesSerializer(many=True))
    def get(self, request: Request, pk: int) -> Any:
        """Series of this visit (the visit viewset's list)."""
        return TimepointViewSet.as_view({"get": "series"})(request._request, pk=pk)

    @extend_schema(
        request={
            "multipart/form-data": inline_serializer(
                "SeriesUpload",
                {
                    "file": serializers.FileField(help_text="Zip of one DICOM series, or a NIfTI file."),
                    "series_uid": serializers.CharField(
                        required=False, help_text="Series Instance UID to use when the zip holds several."
                    ),
                },
            )
        },
        responses={
            202: inline_serializer(
                "SeriesUploadAccepted",
                {
                    "series": s.ImagingSeriesSerializer(),
                    "job": s.ProcessingJobSerializer(),
                    "job_url": serializers.CharField(),
                },
            ),
            400: OpenApiResponse(description="Not a usable MR series; the message says why."),
            409: OpenApiResponse(
                description="Already stored; `existing_series` points to it when it is in a trial you can "
                "see (a series of another trial is named by nothing but its UID)."
            ),
            413: OpenApiResponse(description="Larger than PIPELINE_MAX_UPLOAD_BYTES."),
        },
    )
    def post(self, request: Request, pk: int) -> Response:
        """Store one uploaded series of this visit and queue its segmentation and assessment."""
        timepoint = self._timepoint(request, pk)
        if not has_capability(request.user, timepoint.patient.trial, MANAGE_PATIENTS):
            return Response(
                {"detail": "Your role in this trial does not allow uploading images."},
                status=status.HTTP_403_FORBIDDEN,
            )
        limit = _max_bytes()
        try:
            declared = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            declared = 0
        if declared > limit + 1024**2:  # allow for the multipart envelope
            return _too_large()
        django_request = request._request
        try:
            upload = request.FILES.get("file")
            if upload is None and len(request.FILES) == 1:
                upload = next(iter(request.FILES.values()))  # one file under another field name
            fields = request.data if isinstance(request.data, Mapping) else {}
            series_uid = (fields.get("series_uid") or "").strip() or None
        except UploadTooLargeError:
            return _too_large()
        if upload is None:
            return Response(
                {
                    "detail": "Send the series as a multipart file field named 'file' (a zip of DICOM files or a NIfTI)."
                },
                status=status.HTTP_400_BAD_REQUEST,
            )
        folder = Path(tempfile.mkdtemp(prefix="mettrack-upload-"))
        try:
            local = _local_copy(upload, folder)
            try:
                result = upload_series(
                    timepoint,
                    local,
                    series_uid=series_uid,
                    actor=request.user,
                    reason="uploaded through the API",
                    correlation_id=getattr(django_request, "correlation_id", ""),
                )
            except DuplicateSeriesError as exc:
                return Response(_duplicate_body(request, exc), status=status.HTTP_409_CONFLICT)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        context = {"request": request}
        job_url = request.build_absolute_uri(reverse("api:job-detail", args=[result.job.pk]))
        return Response(
            {
                "series": s.ImagingSeriesSerializer(result.series, context=context).data,
                "job": s.ProcessingJobSerializer(result.job, context=context).data,
                "job_url": job_url,
            },
            status=status.HTTP_202_ACCEPTED,
            headers={"Location": job_url},
        )


class SeriesSegmentView(APIView):
    """``POST /api/v1/series/{id}/segment/``: process a stored series again (e.g. with a newly installed model).

    A new pipeline job is queued (202 with the job); the series' earlier runs and rows stay. With the
    model that already segmented it, the stored mask is reused and only the assessments are refreshed.
    409 while a pipeline job of the series is queued or running.
    """

    permission_classes = [IsAuthenticated]

    @extend_schema(
        request=None,
        responses={
            202: inline_serializer(
                "SeriesSegmentAccepted",
                {"job": s.ProcessingJobSerializer(), "job_url": serializers.CharField()},
            ),
            409: OpenApiResponse(description="A job of this series is already queued or running."),
        },
    )
    def post(self, request: Request, pk: int) -> Response:
        """Queue the segmentation, lesion matching and assessment of this series again."""
        series = (
            ImagingSeries.objects.select_related("timepoint__patient__trial")
            .filter(pk=pk, timepoint__patient__trial__in=visible_trial_ids(request.user))
            .first()
        )
        if series is None:
            raise Http404("No such series.")
        if not has_capability(request.user, series.timepoint.patient.trial, MANAGE_PATIENTS):
            return Response(
                {"detail": "Your role in this trial does not allow processing images."},
                status=status.HTTP_403_FORBIDDEN,
            )
        job = resegment_series(
            series,
            actor=request.user,
            correlation_id=getattr(request._request, "correlation_id", ""),
        )
        job_url = request.build_absolute_uri(reverse("api:job-detail", args=[job.pk]))
        return Response(
            {"job": s.ProcessingJobSerializer(job, context={"request": request}).data, "job_url": job_url},
            status=status.HTTP_202_ACCEPTED,
            headers={"Location": job_url},
        )
