"""Actions on accounts: logins, API tokens, signature failures, account changes and downloads, audited.

Events about accounts belong to no trial (``trial`` None: only superusers see them in the API); a
download belongs to the trial of what was downloaded. Each verb is one transaction with its event.

    logins       record_login, record_login_failure
    tokens       issue_token, rotate_token, revoke_token, revoke_all_tokens
    signatures   record_signature_failure, recent_signature_failures
    accounts     save_user (admin add/change), change_password (admin and the password-change page)
    downloads    record_download (masks, label maps, RTSTRUCT, SEG, volumes)
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import models, transaction
from django.db.models import Q
from django.utils import timezone

from trials.audit import record_audit_event
from trials.exceptions import InvalidStateError
from trials.models import ApiToken, AuditEvent

#: Account fields whose change the audit trail records (never the password hash itself).
AUDITED_USER_FIELDS = (
    "username",
    "first_name",
    "last_name",
    "email",
    "is_active",
    "is_staff",
    "is_superuser",
    "groups",
    "user_permissions",
)


def _user_ref(user: Any) -> dict[str, Any]:
    return {"object_type": "auth.user", "object_id": str(user.pk), "object_repr": user.get_username()}


# ------------------------------------------------------------------------------------------- logins


@transaction.atomic
def record_login(user: Any, *, channel: str, client_ip: str | None, correlation_id: str = "") -> None:
    """A successful login (``channel``: web, admin, api-token)."""
    record_audit_event(
        actor=user,
        action="login",
        after={"channel": channel, "client_ip": client_ip},
        correlation_id=correlation_id,
        **_user_ref(user),
    )


@transaction.atomic
def record_login_failure(
    username: str, *, channel: str, client_ip: str | None, locked_out: bool, correlation_id: str = ""
) -> None:
    """A failed login: the name as typed (no password), the address, and whether the pair is locked."""
    record_audit_event(
        actor=None,
        action="login_failed",
        object_type="auth.user",
        object_repr=username[:150],
        after={"channel": channel, "client_ip": client_ip, "locked_out": locked_out},
        correlation_id=correlation_id,
    )


# ------------------------------------------------------------------------------------------- tokens


@dataclass(frozen=True)
class IssuedToken:
    """A new API token: the key (shown once, never stored) and its row."""

    key: str
    token: ApiToken


@transaction.atomic
def issue_token(
    user: Any, *, client_ip: str | None = None, reason: str = "", correlation_id: str = ""
) -> IssuedToken:
    """Issue an API token for ``user``; only its digest is stored. Audited (``token_issued``).

    Raises:
        InvalidStateError: the user already holds ``API_TOKEN_LIMIT_PER_USER`` live tokens.
    """
    limit = settings.REST_KNOX.get("TOKEN_LIMIT_PER_USER")
    live = ApiToken.objects.filter(user=user, password_fingerprint=user.get_session_auth_hash()).filter(
        Q(expiry__isnull=True) | Q(expiry__gt=timezone.now())
    )
    if limit is not None and live.count() >= limit:
        raise InvalidStateError(
            f"This account already holds {limit} live API tokens: revoke them (POST /api/v1/auth/token/"
            "revoke-all/) or let them expire before asking for another."
        )
    token, key = ApiToken.objects.create(
        user=user, password_fingerprint=user.get_session_auth_hash(), created_by_ip=client_ip
    )
    record_audit_event(
        actor=user,
        action="token_issued",
        after={"token": token.token_key, "expiry": token.expiry.isoformat() if token.expiry else None},
        reason=reason,
        correlation_id=correlation_id,
        **_user_ref(user),
    )
    return IssuedToken(key=key, token=token)


@transaction.atomic
def revoke_token(token: ApiToken, *, actor: Any | None, reason: str = "", correlation_id: str = "") -> None:
    """Revoke one token (its row is deleted). Audited (``token_revoked``)."""
    record_audit_event(
        actor=actor,
        action="token_revoked",
        before={"token": token.token_key, "created": token.created.isoformat()},
        reason=reason,
        correlation_id=correlation_id,
        **_user_ref(token.user),
    )
    token.delete()


@transaction.atomic
def revoke_all_tokens(user: Any, *, actor: Any | None, reason: str = "", correlation_id: str = "") -> int:
    """Revoke every token of ``user``; returns how many. Audited once (``tokens_revoked``)."""
    tokens = ApiToken.objects.filter(user=user)
    keys = list(tokens.values_list("token_key", flat=True))
    if keys:
        record_audit_event(
            actor=actor,
            action="tokens_revoked",
            before={"tokens": keys},
            reason=reason,
            correlation_id=correlation_id,
            **_user_ref(user),
        )
        tokens.delete()
    return len(keys)


@transaction.atomic
def rotate_token(token: ApiToken, *, client_ip: str | None = None, correlation_id: str = "") -> IssuedToken:
    """Replace a token by a new one (the old key stops working at once)."""
    user = token.user
    revoke_token(token, actor=user, reason="rotated", correlation_id=correlation_id)
    return issue_token(user, client_ip=client_ip, reason="rotated", correlation_id=correlation_id)


# --------------------------------------------------------------------------------------- signatures


def recent_signature_failures(user: Any) -> int:
    """Failed signatures of ``user`` within the lockout window (the audit trail is the counter)."""
    since = timezone.now() - dt.timedelta(minutes=settings.SIGNATURE_LOCKOUT_MINUTES)
    return AuditEvent.objects.filter(
        action="signature_failed", object_type="auth.user", object_id=str(user.pk), created_at__gte=since
    ).count()


@transaction.atomic
def record_signature_failure(
    user: Any, *, signed: models.Model, reason: str, correlation_id: str = ""
) -> None:
    """A wrong password entered to sign ``signed`` (an assessment). Audited (``signature_failed``)."""
    record_audit_event(
        actor=user,
        action="signature_failed",
        after={"object_type": signed._meta.label_lower, "object_id": str(signed.pk), "why": reason},
        correlation_id=correlation_id,
        **_user_ref(user),
    )


# ----------------------------------------------------------------------------------------- accounts


def _account_snapshot(user: Any) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for name in AUDITED_USER_FIELDS:
        value = getattr(user, name)
        if hasattr(value, "all"):
            value = sorted(str(item) for item in value.all()) if user.pk else []
        data[name] = value
    return data


@transaction.atomic
def save_user(
    user: Any,
    *,
    changed: list[str],
    before: dict[str, Any] | None,
    m2m: dict[str, list[str]] | None = None,
    actor: Any | None,
    reason: str = "",
    correlation_id: str = "",
) -> Any:
    """Save an account changed in the admin (or a new one), with the audited fields before and after.

    Deactivating an account, or taking away its staff or superuser flag, also revokes its API tokens.
    """
    created = user.pk is None
    user.save()
    after = {**_account_snapshot(user), **(m2m or {})}
    record_audit_event(
        actor=actor,
        action="user_created" if created else "user_changed",
        before=before,
        after={**after, "changed": [name for name in changed if name != "password"]},
        reason=reason,
        correlation_id=correlation_id,
        **_user_ref(user),
    )
    if before is not None and any(
        before.get(k) and not after.get(k) for k in ("is_active", "is_staff", "is_superuser")
    ):
        revoke_all_tokens(user, actor=actor, reason="account rights reduced", correlation_id=correlation_id)
    return user


def account_snapshot(user: Any) -> dict[str, Any]:
    """The audited fields of an account as stored (for ``save_user``'s ``before``)."""
    return _account_snapshot(type(user).objects.get(pk=user.pk)) if user.pk else {}


@transaction.atomic
def change_password(user: Any, *, actor: Any | None, reason: str = "", correlation_id: str = "") -> None:
    """Save a password the caller has set on ``user`` (``set_password``); revokes the user's API tokens.

    Audited (``password_changed``) without any trace of the password.
    """
    user.save(update_fields=["password"])
    record_audit_event(
        actor=actor,
        action="password_changed",
        after={"by_self": actor is not None and actor.pk == user.pk},
        reason=reason,
        correlation_id=correlation_id,
        **_user_ref(user),
    )
    revoke_all_tokens(user, actor=actor, reason="password changed", correlation_id=correlation_id)


# ---------------------------------------------------------------------------------------- downloads


@transaction.atomic
def record_download(obj: models.Model, *, kind: str, actor: Any, correlation_id: str = "") -> None:
    """A download of a stored file of ``obj`` (a segmentation run's mask/RTSTRUCT/SEG, a volume)."""
    record_audit_event(
        actor=actor, action="download", obj=obj, after={"file": kind}, correlation_id=correlation_id
    )


__all__ = [
    "AUDITED_USER_FIELDS",
    "IssuedToken",
    "account_snapshot",
    "change_password",
    "issue_token",
    "recent_signature_failures",
    "record_download",
    "record_login",
    "record_login_failure",
    "record_signature_failure",
    "revoke_all_tokens",
    "revoke_token",
    "rotate_token",
    "save_user",
]
