"""Authentication backends: django-axes' lockout for every login that arrives over HTTP."""

from __future__ import annotations

from typing import Any

from axes.backends import AxesStandaloneBackend


class LockoutBackend(AxesStandaloneBackend):
    """django-axes' lockout check, for requests only.

    A login over HTTP (the login page, the admin, ``POST /api/v1/auth/token/``) always passes a request
    and is checked. ``authenticate()`` without one comes from code on the server (a management command,
    a test's ``client.login``), which no attacker reaches; axes would refuse it with an error instead of
    leaving it to the next backend.
    """

    def authenticate(
        self, request: Any, username: str | None = None, password: str | None = None, **kwargs: Any
    ) -> None:
        if request is None:
            return None
        return super().authenticate(request, username=username, password=password, **kwargs)
