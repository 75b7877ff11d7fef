"""Production settings pass ``manage.py check --deploy``, and every response carries the security headers
(issue 19: before it, check --deploy warned of HSTS, SSL redirect and more, there was no CSP, no
Permissions-Policy, no Cache-Control on clinical pages or API JSON, and sessions never timed out)."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.test import Client
from rest_framework.test import APIClient

from tests.factories import make_member

ROOT = Path(__file__).resolve().parents[2]


def test_check_deploy_is_clean_with_production_settings() -> None:
    # The browser tests set DJANGO_ALLOW_ASYNC_UNSAFE for this process; a deployment never has it.
    inherited = {k: v for k, v in os.environ.items() if k != "DJANGO_ALLOW_ASYNC_UNSAFE"}
    env = {
        **inherited,
        "DEBUG": "0",
        "SECRET_KEY": secrets.token_urlsafe(60),
        "ALLOWED_HOSTS": "mettrack.example.org",
        "DATABASE_URL": os.environ.get("DATABASE_URL", "sqlite:///:memory:"),
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_session_and_tls_settings() -> None:
    assert settings.SESSION_COOKIE_AGE <= 30 * 60 and settings.SESSION_SAVE_EVERY_REQUEST
    assert settings.SESSION_EXPIRE_AT_BROWSER_CLOSE and settings.SESSION_COOKIE_HTTPONLY
    assert settings.SECURE_PROXY_SSL_HEADER == ("HTTP_X_FORWARDED_PROTO", "https")
    assert settings.SECURE_HSTS_SECONDS >= 31_536_000 and settings.SESSION_COOKIE_SECURE


@pytest.mark.django_db
def test_clinical_pages_and_api_json_are_not_stored_and_carry_the_policies(trial: Any) -> None:
    user = make_member(trial, "investigator")
    api = APIClient()
    api.force_authenticate(user)
    browser = Client()
    browser.force_login(user)
    for response in (api.get("/api/v1/patients/"), browser.get(f"/trials/{trial.pk}/"), browser.get("/")):
        assert response.status_code == 200
        assert response["Cache-Control"] == "no-store"
        assert "default-src 'self'" in response["Content-Security-Policy"]
        assert "camera=()" in response["Permissions-Policy"]
        assert response["X-Frame-Options"] == "DENY"
    asset = browser.get("/assets/dashboard.css")
    assert asset["Cache-Control"].startswith("public")  # static assets keep their own caching


def test_templates_have_no_inline_style_or_script() -> None:
    for path in (ROOT / "templates").rglob("*.html"):
        text = path.read_text(encoding="utf-8")
        assert "<style" not in text and " style=" not in text, path
        assert "<script>" not in text and " on" + "click=" not in text, path
