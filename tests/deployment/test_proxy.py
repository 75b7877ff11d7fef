"""Behind a TLS-terminating proxy: the settings the environment turns on, checked in a fresh process as
the container starts (settings are read once, from the environment)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.processes import ROOT

PROBE = """
import json
import django
django.setup()
from django.test import Client
client = Client()
results = {}
for name, path, headers in [
    ("plain", "/accounts/login/", {}),
    ("forwarded_https", "/accounts/login/", {"HTTP_X_FORWARDED_PROTO": "https"}),
    ("probe", "/healthz", {}),
]:
    response = client.get(path, HTTP_HOST="mettrack.example.org", **headers)
    results[name] = [response.status_code, response.get("Location", "")]
from django.conf import settings
results["csrf_trusted_origins"] = settings.CSRF_TRUSTED_ORIGINS
print(json.dumps(results))
"""


def _probe(**environ: str) -> dict[str, list[object]]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DEBUG": "0",
        "SECRET_KEY": "proxy-test-key-not-secret-0123456789-abcdefghijklmnopqrstuvwxyz",
        "ALLOWED_HOSTS": "mettrack.example.org",
        "CELERY_BROKER_URL": "",
        "WHITENOISE_USE_FINDERS": "1",
        **environ,
    }
    result = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_behind_the_proxy_https_is_recognised_and_plain_http_redirected_except_probes() -> None:
    results = _probe(CSRF_TRUSTED_ORIGINS="https://mettrack.example.org")  # the defaults, DEBUG off
    assert results["plain"] == [301, "https://mettrack.example.org/accounts/login/"]
    assert results["forwarded_https"][0] == 200  # the proxy said HTTPS: no redirect loop
    assert results["probe"][0] == 200  # the orchestrator's probe talks HTTP to the container
    assert results["csrf_trusted_origins"] == ["https://mettrack.example.org"]


def test_without_trusting_the_proxy_its_header_is_ignored() -> None:
    """A client cannot claim HTTPS with a header when the site says no proxy sets it."""
    results = _probe(TLS_BEHIND_PROXY="0")
    assert results["forwarded_https"][0] == 301
