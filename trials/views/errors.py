"""The server-error page: a database outage is a 503 the client can retry, never a bare 500.

Django calls ``handler500`` while it handles an uncaught exception (from a view or a middleware, such as
the session or user lookup), so the exception is ``sys.exc_info()`` here. Nothing here touches the
database: the answer must work while it is down.
"""

from __future__ import annotations

import sys

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.defaults import server_error as django_server_error

#: Seconds a client should wait before retrying during a database outage (the ``Retry-After`` header).
RETRY_AFTER_S = 30


def server_error(request: HttpRequest) -> HttpResponse:
    """503 JSON with ``Retry-After`` for a lost database; JSON 500 for the API; Django's page otherwise."""
    exc = sys.exc_info()[1]
    if isinstance(exc, OperationalError | InterfaceError):
        response = JsonResponse(
            {"detail": "The database is unavailable; please retry shortly.", "code": "database_unavailable"},
            status=503,
        )
        response["Retry-After"] = str(RETRY_AFTER_S)
        response["Cache-Control"] = "no-store"
        return response
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": "Server error.", "code": "server_error"}, status=500)
    return django_server_error(request)
