"""Export endpoint: ``GET /api/v1/trials/{id}/exports/{kind}.csv`` (kinds: visits, lesions, tu, tr, rs, patients).

Query parameters: ``site`` (site code; repeat or comma-separate), ``date_from``, ``date_to`` (scan date,
``YYYY-MM-DD``, inclusive), ``only_confirmed`` (``true``: only reader-signed visits).

Access: data managers and trial admins of the trial (and superusers). A trial the user is not a member of
answers 404 (its existence is not revealed), other roles 403. The response streams (a large trial never
sits in memory), and every export writes an ``AuditEvent`` (action ``export``: who, which file, which
filters, when) before the first byte is sent.
"""

from __future__ import annotations

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import HttpResponse, StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.exceptions import NotFound, ParseError, PermissionDenied
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.views import APIView

from trials.actions.exports import export_submission_file, export_trial
from trials.exports import EXPORT_KINDS, ExportError, ExportFilters, UnknownExportKindError, get_dataset
from trials.exports.access import trial_for_export


class TrialExportView(APIView):
    """Stream one export of a trial as CSV."""

    permission_classes = [IsAuthenticated]

    @extend_schema(
        operation_id="trials_export_csv",
        summary="Export a trial's data as CSV (eCRF visits/lesions, SDTM TU/TR/RS, per-patient BOR)",
        parameters=[
            OpenApiParameter("kind", OpenApiTypes.STR, OpenApiParameter.PATH, enum=list(EXPORT_KINDS)),
            OpenApiParameter("site", OpenApiTypes.STR, description="Site code(s), comma-separated."),
            OpenApiParameter("date_from", OpenApiTypes.DATE, description="First scan date (inclusive)."),
            OpenApiParameter("date_to", OpenApiTypes.DATE, description="Last scan date (inclusive)."),
            OpenApiParameter("only_confirmed", OpenApiTypes.BOOL, description="Only reader-signed visits."),
        ],
        responses={(200, "text/csv"): OpenApiTypes.BINARY},
    )
    def get(self, request: Request, pk: int, kind: str) -> StreamingHttpResponse:
        try:
            trial = trial_for_export(request.user, pk)
        except DjangoPermissionDenied as exc:
            raise PermissionDenied(str(exc)) from None  # keep the message (DRF would replace it)
        try:
            get_dataset(kind)
            filters = ExportFilters.from_query(request.query_params)
            export = export_trial(
                trial,
                kind,
                filters,
                actor=request.user,
                correlation_id=getattr(request, "correlation_id", ""),
            )
        except UnknownExportKindError as exc:
            raise NotFound(exc.message) from None
        except ExportError as exc:
            raise ParseError(exc.message) from None
        response = StreamingHttpResponse(export.chunks, content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="{export.filename}"'
        response["Cache-Control"] = "no-store"  # clinical data: never cached by proxies or browsers
        return response


class TrialSubmissionFileView(APIView):
    """One SDTM dataset as SAS XPORT v5 (``tu``, ``tr``, ``rs``), or ``define.xml`` describing them."""

    permission_classes = [IsAuthenticated]

    @extend_schema(
        operation_id="trials_export_submission",
        summary="SDTM TU/TR/RS as SAS transport (XPORT v5) files, and their Define-XML 2.0",
        parameters=[
            OpenApiParameter("name", OpenApiTypes.STR, OpenApiParameter.PATH, enum=["tu", "tr", "rs"]),
            OpenApiParameter("site", OpenApiTypes.STR, description="Site code(s), comma-separated."),
            OpenApiParameter("date_from", OpenApiTypes.DATE, description="First scan date (inclusive)."),
            OpenApiParameter("date_to", OpenApiTypes.DATE, description="Last scan date (inclusive)."),
            OpenApiParameter("only_confirmed", OpenApiTypes.BOOL, description="Only reader-signed visits."),
        ],
        responses={(200, "application/x-sas-xport"): OpenApiTypes.BINARY},
    )
    def get(self, request: Request, pk: int, name: str) -> HttpResponse:
        if name == "define":
            raise NotFound("The Define-XML is define.xml.")
        return _submission_response(request, pk, name)


class TrialDefineXmlView(APIView):
    """The Define-XML 2.0 of the trial's SDTM datasets."""

    permission_classes = [IsAuthenticated]

    @extend_schema(
        operation_id="trials_export_define_xml",
        summary="Define-XML 2.0 describing the SDTM TU, TR and RS transport files",
        responses={(200, "application/xml"): OpenApiTypes.BINARY},
    )
    def get(self, request: Request, pk: int) -> HttpResponse:
        return _submission_response(request, pk, "define")


def _submission_response(request: Request, pk: int, name: str) -> HttpResponse:
    try:
        trial = trial_for_export(request.user, pk)
    except DjangoPermissionDenied as exc:
        raise PermissionDenied(str(exc)) from None
    try:
        filters = ExportFilters.from_query(request.query_params) if name != "define" else ExportFilters()
        file = export_submission_file(
            trial, name, filters, actor=request.user, correlation_id=getattr(request, "correlation_id", "")
        )
    except UnknownExportKindError as exc:
        raise NotFound(exc.message) from None
    except ExportError as exc:
        raise ParseError(exc.message) from None
    response = HttpResponse(file.content, content_type=file.media_type)
    response["Content-Disposition"] = f'attachment; filename="{file.filename}"'
    response["Cache-Control"] = "no-store"
    return response
