"""Authentication and the audit of accounts (issue 19): lockout, throttles, the token lifecycle, failed
signatures, logins, admin changes to accounts, downloads, membership removal, separation of duties.

Each test failed on the code before issue 19 (no lockout or throttle; DRF tokens in plain text that
never expired, survived a password change and could not be revoked; none of these events audited).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from tests.factories import (
    DEFAULT_PASSWORD,
    make_assessment,
    make_member,
    make_membership,
    make_series,
    make_superuser,
    make_timepoint,
    make_user,
)
from trials.models import ApiToken, AuditEvent, TrialMembership

pytestmark = pytest.mark.django_db


def token_for(username: str, password: str = DEFAULT_PASSWORD) -> Any:
    return APIClient().post(
        "/api/v1/auth/token/", {"username": username, "password": password}, format="json"
    )


def authed(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return client


def events(action: str, **filters: Any) -> Any:
    return AuditEvent.objects.filter(action=action, **filters)


# ---------------------------------------------------------------------------------------- tokens


def test_a_token_is_stored_hashed_expires_and_is_audited(trial: Any) -> None:
    user = make_member(trial, "investigator", "ina")
    response = token_for("ina")
    assert response.status_code == 200
    key = response.json()["token"]
    stored = ApiToken.objects.get(user=user)
    assert stored.digest != key and key not in stored.digest and stored.expiry is not None
    assert dt.timedelta(hours=11) < stored.expiry - timezone.now() <= dt.timedelta(hours=12)
    assert events("token_issued", object_id=str(user.pk)).count() == 1
    assert authed(key).get("/api/v1/trials/").status_code == 200

    ApiToken.objects.filter(pk=stored.pk).update(expiry=timezone.now() - dt.timedelta(seconds=1))
    assert authed(key).get("/api/v1/trials/").status_code == 401


def test_a_password_change_ends_every_token(trial: Any) -> None:
    user = make_member(trial, "investigator", "ina")
    key = token_for("ina").json()["token"]
    user.set_password("a-new-password-456")
    user.save()  # however it changes (shell, admin, the page), the old token stops working
    assert authed(key).get("/api/v1/trials/").status_code == 401
    assert not ApiToken.objects.filter(user=user).exists()


def test_rotation_and_revocation(trial: Any) -> None:
    user = make_member(trial, "investigator", "ina")
    old = token_for("ina").json()["token"]
    rotated = authed(old).post("/api/v1/auth/token/rotate/")
    assert rotated.status_code == 200
    new = rotated.json()["token"]
    assert authed(old).get("/api/v1/trials/").status_code == 401
    assert authed(new).get("/api/v1/trials/").status_code == 200

    assert authed(new).post("/api/v1/auth/token/revoke/").status_code == 204
    assert authed(new).get("/api/v1/trials/").status_code == 401

    first, second = token_for("ina").json()["token"], token_for("ina").json()["token"]
    assert authed(first).post("/api/v1/auth/token/revoke-all/").status_code == 204
    assert authed(second).get("/api/v1/trials/").status_code == 401
    assert events("token_revoked", object_id=str(user.pk)).count() == 2  # rotated, revoked
    assert events("tokens_revoked", object_id=str(user.pk)).count() == 1


def test_live_tokens_per_user_are_limited(trial: Any, settings: Any) -> None:
    settings.REST_KNOX = {**settings.REST_KNOX, "TOKEN_LIMIT_PER_USER": 2}
    make_member(trial, "investigator", "ina")
    assert [token_for("ina").status_code for _ in range(3)] == [200, 200, 409]


# --------------------------------------------------------------------------------------- lockout


def test_five_wrong_passwords_lock_the_token_endpoint_for_that_user_and_address(trial: Any) -> None:
    make_member(trial, "investigator", "ina")
    for _ in range(4):
        assert token_for("ina", "wrong").status_code == 400
    assert token_for("ina", "wrong").status_code == 429  # the fifth failure locks
    assert token_for("ina").status_code == 429  # even with the right password
    failures = events("login_failed", object_repr="ina")
    assert failures.count() == 6 and failures.filter(after__locked_out=True).exists()
    assert failures.first().after["channel"] == "api-token"


@pytest.mark.parametrize("url", ["/accounts/login/", "/admin/login/"])
def test_five_wrong_passwords_lock_the_login_pages(trial: Any, url: str) -> None:
    user = make_member(trial, "investigator", "ina")
    user.is_staff = True
    user.save()
    browser = Client()
    for _ in range(5):
        browser.post(url, {"username": "ina", "password": "wrong"})
    locked = browser.post(url, {"username": "ina", "password": DEFAULT_PASSWORD})
    assert locked.status_code == 429
    assert "_auth_user_id" not in browser.session


def test_a_login_is_audited(trial: Any) -> None:
    user = make_member(trial, "investigator", "ina")
    browser = Client()
    response = browser.post("/accounts/login/", {"username": "ina", "password": DEFAULT_PASSWORD})
    assert response.status_code == 302
    login = events("login", object_id=str(user.pk)).get()
    assert login.actor == user and login.after["channel"] == "web"


def test_the_token_endpoint_is_throttled(trial: Any, settings: Any) -> None:
    rates = {**settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], "auth": "3/min"}
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": rates}
    from rest_framework.throttling import SimpleRateThrottle

    SimpleRateThrottle.THROTTLE_RATES = rates  # DRF reads the rates once at import
    try:
        statuses = [token_for(f"nobody{n}", "x").status_code for n in range(4)]
    finally:
        from rest_framework.settings import api_settings

        SimpleRateThrottle.THROTTLE_RATES = api_settings.DEFAULT_THROTTLE_RATES
    assert statuses == [400, 400, 400, 429]


# ------------------------------------------------------------------------------------ signatures


def test_a_failed_signature_is_audited_and_five_lock_signing(trial: Any) -> None:
    radiologist = make_member(trial, "radiologist", "rad")
    client = APIClient()
    client.force_authenticate(radiologist)
    own = make_assessment(make_timepoint(_patient_of(trial)), overall_response="SD")
    url = f"/api/v1/assessments/{own.pk}/confirm/"
    for _ in range(5):
        response = client.post(url, {"password": "wrong"}, format="json")
        assert response.status_code == 400 and "password" in response.json()
    failed = events("signature_failed", object_id=str(radiologist.pk))
    assert failed.count() == 5 and failed.first().after["object_id"] == str(own.pk)
    locked = client.post(url, {"password": DEFAULT_PASSWORD}, format="json")
    assert locked.status_code == 400 and "locked" in locked.json()["detail"]
    own.refresh_from_db()
    assert own.status == "draft"


def _patient_of(trial: Any) -> Any:
    from tests.factories import make_patient

    return make_patient(trial)


# ------------------------------------------------------------------------------ account changes


def test_admin_changes_to_accounts_are_audited_and_revoke_tokens(trial: Any) -> None:
    root = make_superuser("root")
    target = make_member(trial, "investigator", "ina")
    key = token_for("ina").json()["token"]
    browser = Client()
    browser.force_login(root)

    page = browser.get(f"/admin/auth/user/{target.pk}/change/")
    form = page.context["adminform"].form
    data = {name: value for name, value in form.initial.items() if value is not None}
    data.update(
        {
            "username": "ina",
            "is_active": "on",
            "is_staff": "on",
            "is_superuser": "on",
            "last_login_0": "",
            "last_login_1": "",
            "date_joined_0": "2024-01-01",
            "date_joined_1": "00:00:00",
        }
    )
    for name in ("groups", "user_permissions", "last_login", "date_joined", "password"):
        data.pop(name, None)
    response = browser.post(f"/admin/auth/user/{target.pk}/change/", data)
    assert response.status_code == 302, response.content[:2000]
    change = events("user_changed", object_id=str(target.pk)).get()
    assert (
        change.actor == root
        and change.before["is_superuser"] is False
        and change.after["is_superuser"] is True
    )

    response = browser.post(
        f"/admin/auth/user/{target.pk}/password/",
        {"password1": "Another-pass-789", "password2": "Another-pass-789", "usable_password": "true"},
    )
    assert response.status_code == 302
    assert events("password_changed", object_id=str(target.pk)).get().actor == root
    assert authed(key).get("/api/v1/trials/").status_code == 401


def test_the_password_change_page_is_audited_and_there_is_no_reset_page(trial: Any) -> None:
    user = make_member(trial, "investigator", "ina")
    browser = Client()
    browser.force_login(user)
    response = browser.post(
        "/accounts/password_change/",
        {
            "old_password": DEFAULT_PASSWORD,
            "new_password1": "Fresh-pass-321",
            "new_password2": "Fresh-pass-321",
        },
    )
    assert response.status_code == 302
    assert events("password_changed", object_id=str(user.pk)).get().after == {"by_self": True}
    assert Client().get("/accounts/password_reset/").status_code == 404


# ------------------------------------------------------------------------------------ downloads


def test_downloads_of_stored_files_are_audited(trial: Any, settings: Any, tmp_path: Path) -> None:
    settings.MEDIA_ROOT = tmp_path
    series = make_series(make_timepoint(_patient_of(trial)))
    (tmp_path / "series").mkdir()
    (tmp_path / "series" / "volume.nii").write_bytes(b"\0" * 352)
    type(series).objects.filter(pk=series.pk).update(volume_file="series/volume.nii")
    reader = make_member(trial, "investigator")
    client = APIClient()
    client.force_authenticate(reader)
    response = client.get(f"/api/v1/series/{series.pk}/volume/")
    assert response.status_code == 200
    download = events("download", object_id=str(series.pk)).get()
    assert download.actor == reader and download.trial == trial and download.after == {"file": "volume"}


# ----------------------------------------------------------------------------------- memberships


def test_removing_a_membership_needs_a_reason(trial: Any) -> None:
    admin = make_member(trial, "admin")
    membership = make_membership(make_user(), trial, "investigator")
    client = APIClient()
    client.force_authenticate(admin)
    assert client.delete(f"/api/v1/memberships/{membership.pk}/").status_code == 400
    assert client.delete(f"/api/v1/memberships/{membership.pk}/?reason=left+the+team").status_code == 204
    assert events("delete", object_id=str(membership.pk)).get().reason == "left the team"


def test_a_self_grant_is_recorded_and_can_be_forbidden(trial: Any, settings: Any) -> None:
    admin = make_member(trial, "admin")
    client = APIClient()
    client.force_authenticate(admin)
    grant = {"trial": trial.pk, "user": admin.pk, "role": "radiologist"}
    assert client.post("/api/v1/memberships/", grant, format="json").status_code == 201
    assert events("self_grant", actor=admin).get().after == {"role": "radiologist"}
    TrialMembership.objects.filter(user=admin, role="radiologist").delete()

    settings.SEPARATE_ADMIN_AND_REVIEW_DUTIES = True
    refused = client.post("/api/v1/memberships/", grant, format="json")
    assert refused.status_code == 400 and "Separation of duties" in refused.json()["detail"]
    other_admin = make_member(trial, "admin")
    client.force_authenticate(other_admin)
    both = client.post("/api/v1/memberships/", grant, format="json")  # granted by someone else
    assert both.status_code == 400 and "both trial admin and radiologist" in both.json()["detail"]


def test_with_separated_duties_a_trial_admin_cannot_sign(trial: Any, settings: Any) -> None:
    admin = make_member(trial, "admin")
    make_membership(admin, trial, "radiologist")  # held before the setting was turned on
    settings.SEPARATE_ADMIN_AND_REVIEW_DUTIES = True
    own = make_assessment(make_timepoint(_patient_of(trial)), overall_response="SD")
    client = APIClient()
    client.force_authenticate(admin)
    response = client.post(
        f"/api/v1/assessments/{own.pk}/confirm/", {"password": DEFAULT_PASSWORD}, format="json"
    )
    assert response.status_code == 400 and "separation of duties" in response.json()["detail"]


def test_accounts_events_are_for_superusers_only(trial: Any) -> None:
    make_member(trial, "investigator", "ina")
    token_for("ina")
    member = APIClient()
    member.force_authenticate(make_member(trial, "admin"))
    listed = member.get("/api/v1/audit-events/", {"action": "token_issued"}).json()
    assert listed["count"] == 0
    root = APIClient()
    root.force_authenticate(make_superuser())
    assert root.get("/api/v1/audit-events/", {"action": "token_issued"}).json()["count"] == 1
