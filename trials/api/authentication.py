"""Authentication of API requests: knox tokens that also die when the user's password changes.

Kept apart from the token views (``trials.api.auth``): DRF imports this class while its settings load,
before any view module may be imported.
"""

from __future__ import annotations

from typing import Any

from django.utils.translation import gettext_lazy as _
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from knox.auth import TokenAuthentication
from rest_framework import exceptions

from trials.actions import accounts
from trials.models import ApiToken


class ApiTokenAuthentication(TokenAuthentication):
    """knox's token check, plus: the user's password has not changed since the token was issued."""

    def validate_user(self, auth_token: ApiToken) -> tuple[Any, ApiToken]:
        user, token = super().validate_user(auth_token)
        if token.password_fingerprint != user.get_session_auth_hash():
            accounts.revoke_token(token, actor=None, reason="password changed since the token was issued")
            raise exceptions.AuthenticationFailed(_("Invalid token."))
        return user, token


class ApiTokenAuthenticationScheme(OpenApiAuthenticationExtension):
    """The schema's security scheme for ``Authorization: Token <key>``."""

    target_class = "trials.api.authentication.ApiTokenAuthentication"
    name = "tokenAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": 'Token-based authentication with required prefix "Token"',
        }
