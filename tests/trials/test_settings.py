"""Settings: environment variables, and refusal to start insecurely with DEBUG off.

Each case imports ``config.settings`` in a fresh interpreter (not under pytest, so the test-run
allowance does not apply), with a controlled environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROBE = (
    "import json, config.settings as s; "
    "print(json.dumps({'debug': s.DEBUG, 'hosts': s.ALLOWED_HOSTS, 'db': s.DATABASES['default']['ENGINE'], "
    "'db_name': str(s.DATABASES['default']['NAME']), 'broker': s.CELERY_BROKER_URL, "
    "'embedded': s.CELERY_EMBEDDED, 'media': str(s.MEDIA_ROOT), 'tz': s.USE_TZ, 'key': s.SECRET_KEY}))"
)


def _load(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if k
        not in {
            "DEBUG",
            "SECRET_KEY",
            "ALLOWED_HOSTS",
            "DATABASE_URL",
            "CELERY_BROKER_URL",
            "MEDIA_ROOT",
        }
    }
    return subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("env", "missing"),
    [
        ({}, "SECRET_KEY, ALLOWED_HOSTS"),
        ({"ALLOWED_HOSTS": "mettrack.example.org"}, "SECRET_KEY"),
        ({"SECRET_KEY": "k" * 50}, "ALLOWED_HOSTS"),
        ({"DEBUG": "0", "SECRET_KEY": "k" * 50, "ALLOWED_HOSTS": ""}, "ALLOWED_HOSTS"),
    ],
)
def test_debug_off_without_secret_key_or_allowed_hosts_refuses_to_start(
    env: dict[str, str], missing: str
) -> None:
    result = _load(env)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert f"refuses to start with DEBUG off while {missing}" in result.stderr


def test_production_environment_is_read() -> None:
    result = _load(
        {
            "SECRET_KEY": "s" * 50,
            "ALLOWED_HOSTS": "a.example.org,b.example.org",
            "DATABASE_URL": "postgres://u@db.example.org:5432/mettrack",
            "CELERY_BROKER_URL": "redis://redis.example.org:6379/0",
            "MEDIA_ROOT": "/srv/mettrack/media",
        }
    )
    assert result.returncode == 0, result.stderr
    cfg = json.loads(result.stdout)
    assert cfg["debug"] is False and cfg["tz"] is True
    assert cfg["hosts"] == ["a.example.org", "b.example.org"]
    assert cfg["db"] == "django.db.backends.postgresql" and cfg["db_name"] == "mettrack"
    assert cfg["broker"] == "redis://redis.example.org:6379/0" and cfg["embedded"] is False
    assert cfg["media"] == "/srv/mettrack/media"
    assert cfg["key"] == "s" * 50


def test_debug_defaults_are_the_embedded_demo() -> None:
    result = _load({"DEBUG": "1"})
    assert result.returncode == 0, result.stderr
    cfg = json.loads(result.stdout)
    assert cfg["db"] == "django.db.backends.sqlite3"
    assert cfg["db_name"] == str(ROOT / "var" / "demo.sqlite3")
    assert cfg["embedded"] is True and cfg["broker"] == ""
    assert cfg["media"] == str(ROOT / "var" / "media")
