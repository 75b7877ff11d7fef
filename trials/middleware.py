"""Request correlation id: every audit event of one request shares it, and the response returns it."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from trials.logs import correlation_id_bound

HEADER = "X-Request-ID"
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class CorrelationIdMiddleware:
    """Set ``request.correlation_id`` from the ``X-Request-ID`` header (when well-formed) or a new UUID.

    A proxy's request id is reused so that web server, application and audit logs line up; anything
    that is not a short token is replaced rather than trusted into the audit trail.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        supplied = request.headers.get(HEADER, "")
        request.correlation_id = supplied if _SAFE_ID.match(supplied) else uuid.uuid4().hex  # type: ignore[attr-defined]
        with correlation_id_bound(request.correlation_id):  # type: ignore[attr-defined]
            response = self.get_response(request)
        response[HEADER] = request.correlation_id  # type: ignore[attr-defined]
        return response


#: Browser features no MetTrack page uses: denied to every page and frame (ASVS 14.4).
PERMISSIONS_POLICY = ", ".join(
    f"{feature}=()"
    for feature in (
        "accelerometer",
        "autoplay",
        "camera",
        "display-capture",
        "geolocation",
        "gyroscope",
        "magnetometer",
        "microphone",
        "midi",
        "payment",
        "usb",
        "xr-spatial-tracking",
    )
)


class SecurityHeadersMiddleware:
    """Headers every response carries: a Permissions-Policy, and ``Cache-Control: no-store`` unless the
    view chose its own caching (only the static assets do), so no clinical page, API answer or export
    is kept by a browser or a proxy."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        response.headers.setdefault("Permissions-Policy", PERMISSIONS_POLICY)
        if "Cache-Control" not in response.headers:
            response["Cache-Control"] = "no-store"
        return response
