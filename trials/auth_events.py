"""Logins and failed logins into the audit trail, whichever page did them (web, admin, API token).

Django's login views announce themselves only through the ``user_logged_in`` and ``user_login_failed``
signals; these receivers turn each into the action that records it (``trials.actions.accounts``).
Connected once by ``TrialsConfig.ready``.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.signals import user_logged_in, user_login_failed

from trials.actions import accounts


def _channel(request: Any) -> str:
    path = getattr(request, "path", "") or ""
    if path.startswith("/admin/"):
        return "admin"
    if path.startswith("/api/"):
        return "api-token"
    return "web"


def _ip(request: Any) -> str | None:
    meta = getattr(request, "META", None) or {}
    return meta.get("REMOTE_ADDR") or None


def on_logged_in(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    accounts.record_login(
        user,
        channel=_channel(request),
        client_ip=_ip(request),
        correlation_id=getattr(request, "correlation_id", ""),
    )


def on_login_failed(sender: Any, credentials: dict[str, Any], request: Any = None, **kwargs: Any) -> None:
    accounts.record_login_failure(
        str(credentials.get("username", "")),
        channel=_channel(request),
        client_ip=_ip(request),
        locked_out=bool(getattr(request, "axes_locked_out", False)),
        correlation_id=getattr(request, "correlation_id", ""),
    )


def connect() -> None:
    """Connect the receivers (idempotent)."""
    user_logged_in.connect(on_logged_in, dispatch_uid="mettrack.audit.login")
    user_login_failed.connect(on_login_failed, dispatch_uid="mettrack.audit.login_failed")
