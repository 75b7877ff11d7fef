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
from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.exceptions import NotFound, ParseError, PermissionDenied
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.views import APIView

from trials.actions.exports import export_trial
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
