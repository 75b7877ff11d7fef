"""API authentication: hashed, expiring, revocable tokens (django-rest-knox) behind a lockout.

The contract clients use is unchanged: ``POST /api/v1/auth/token/`` with ``username`` and ``password``
answers ``{"token": ..., "expiry": ...}``; requests send ``Authorization: Token <token>``. Now:

* only the token's SHA-512 digest is stored (``trials.models.ApiToken``), the key is shown once;
* a token expires after ``API_TOKEN_TTL_HOURS`` (12 h by default) and dies when the password changes;
* ``POST auth/token/rotate/`` swaps the presented token for a new one, ``POST auth/token/revoke/``
  revokes it, ``POST auth/token/revoke-all/`` revokes every token of the user;
* failed attempts count toward the django-axes lockout (five per user name and address, 15 minutes:
  429), the endpoint has its own throttle scope, and every issue, rotation, revocation and failure is
  an audit event (``trials.actions.accounts``).
"""

from __future__ import annotations

from typing import Any

from axes.exceptions import AxesBackendPermissionDenied
from django.contrib.auth import authenticate
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import exceptions, serializers, status
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from trials.actions import accounts
from trials.api.authentication import ApiTokenAuthentication
from trials.models import ApiToken


def client_ip(request: Any) -> str | None:
    """The client's address as the server saw it (the proxy's ``X-Forwarded-For`` is not trusted)."""
    return request.META.get("REMOTE_ADDR") or None


class TokenRequestSerializer(serializers.Serializer):
    """Credentials for a new token."""

    username = serializers.CharField(max_length=150)
    password = serializers.CharField(max_length=4096, trim_whitespace=False, style={"input_type": "password"})


_TOKEN_RESPONSE = inline_serializer(
    "ApiTokenIssued",
    {
        "token": serializers.CharField(help_text="Send as 'Authorization: Token <token>'. Shown once."),
        "expiry": serializers.DateTimeField(allow_null=True, help_text="When the token stops working (UTC)."),
    },
)


def _token_body(issued: accounts.IssuedToken) -> dict[str, Any]:
    expiry = issued.token.expiry
    return {"token": issued.key, "expiry": expiry.isoformat().replace("+00:00", "Z") if expiry else None}


class ObtainTokenView(APIView):
    """``POST /api/v1/auth/token/``: a new API token for a user name and password."""

    authentication_classes: list[type] = []
    permission_classes = [AllowAny]
    throttle_scope = "auth"

    @extend_schema(request=TokenRequestSerializer, responses={200: _TOKEN_RESPONSE}, auth=[])
    def post(self, request: Request) -> Response:
        """Issue a token (expiring, revocable, dead when the password changes). 400 for wrong
        credentials; 429 when this user name is locked out from this address."""
        data = TokenRequestSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            user = authenticate(
                request._request,
                username=data.validated_data["username"],
                password=data.validated_data["password"],
            )
        except AxesBackendPermissionDenied:
            user = None
        if getattr(request._request, "axes_locked_out", False):
            return Response(
                {"detail": "Too many failed attempts: this account is locked from this address for a while."},
                status=status.HTTP_429_TOO_MANY_REQUESTS,
            )
        if user is None or not user.is_active:
            raise exceptions.ValidationError(
                {"non_field_errors": ["Unable to log in with provided credentials."]}
            )
        issued = accounts.issue_token(
            user,
            client_ip=client_ip(request),
            reason="POST /api/v1/auth/token/",
            correlation_id=getattr(request._request, "correlation_id", ""),
        )
        return Response(_token_body(issued))


class RotateTokenView(APIView):
    """``POST /api/v1/auth/token/rotate/``: replace the presented token by a new one."""

    authentication_classes = [ApiTokenAuthentication]
    permission_classes = [IsAuthenticated]

    @extend_schema(request=None, responses={200: _TOKEN_RESPONSE})
    def post(self, request: Request) -> Response:
        """The old token stops working at once; the answer carries the new one."""
        token: ApiToken = request.auth  # type: ignore[assignment]  # ApiTokenAuthentication's
        issued = accounts.rotate_token(
            token, client_ip=client_ip(request), correlation_id=getattr(request, "correlation_id", "")
        )
        return Response(_token_body(issued))


class RevokeTokenView(APIView):
    """``POST /api/v1/auth/token/revoke/``: revoke the presented token (log out)."""

    authentication_classes = [ApiTokenAuthentication]
    permission_classes = [IsAuthenticated]

    @extend_schema(request=None, responses={204: None})
    def post(self, request: Request) -> Response:
        """Revoke this token."""
        token: ApiToken = request.auth  # type: ignore[assignment]  # ApiTokenAuthentication's
        accounts.revoke_token(
            token,
            actor=request.user,
            reason="revoked by its holder",
            correlation_id=getattr(request, "correlation_id", ""),
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


class RevokeAllTokensView(APIView):
    """``POST /api/v1/auth/token/revoke-all/``: revoke every token of the signed-in user."""

    permission_classes = [IsAuthenticated]

    @extend_schema(request=None, responses={204: None})
    def post(self, request: Request) -> Response:
        """Revoke all of this user's tokens (e.g. after a laptop was lost)."""
        accounts.revoke_all_tokens(
            request.user,
            actor=request.user,
            reason="revoked by their holder",
            correlation_id=getattr(request, "correlation_id", ""),
        )
        return Response(status=status.HTTP_204_NO_CONTENT)
