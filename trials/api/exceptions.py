"""DRF exception handler: service errors become 400/409 with field-level messages, never a 500."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from trials.exceptions import AuditImmutableError, ServiceError


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Map ``trials.exceptions.ServiceError`` (and stray IntegrityErrors) to clear JSON responses.

    Response body: ``{"detail": message, <field>: [messages], ...}`` with status 400 (invalid input)
    or 409 (duplicate, wrong state).
    """
    if isinstance(exc, ServiceError):
        body: dict[str, Any] = {"detail": exc.message}
        for field, messages in exc.field_errors.items():
            body["non_field_errors" if field == "__all__" else field] = messages
        return Response(body, status=exc.http_status)
    if isinstance(exc, AuditImmutableError):
        return Response({"detail": str(exc)}, status=status.HTTP_405_METHOD_NOT_ALLOWED)
    if isinstance(exc, DjangoValidationError):
        detail = exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
        return Response(detail, status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, IntegrityError):
        # Services turn constraint violations into DuplicateError; this is the safety net for a race.
        return Response(
            {"detail": "The request conflicts with existing data (a uniqueness rule)."},
            status=status.HTTP_409_CONFLICT,
        )
    return drf_exception_handler(exc, context)
