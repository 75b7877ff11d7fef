"""docker/ as far as this machine can check it (no container engine runs here, README "Deployment"):
the Dockerfile passes hadolint, compose.yaml validates against the Compose Specification's JSON schema
(check-jsonschema's copy), the topology is the one the README describes, and the configuration names
the same variables everywhere: what config/settings.py and docker/gunicorn.conf.py read, what
docker/env.example lists and what the README documents. The processes themselves run with compose's
commands in test_cluster.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.processes import ROOT

DOCKER = ROOT / "docker"
BIN = Path(sys.executable).parent
#: Variables of compose.yaml itself (image names, the database password it builds DATABASE_URL from).
COMPOSE_VARIABLES = {
    "POSTGRES_PASSWORD",
    "POSTGRES_APP_PASSWORD",
    "METTRACK_IMAGE",
    "METTRACK_TAG",
    "METTRACK_GPU_TAG",
}
#: Set by compose.yaml for every container (commented in env.example, documented in the README).
SET_BY_COMPOSE = {"DATABASE_URL", "CELERY_BROKER_URL", "CACHE_URL", "MEDIA_ROOT", "LOG_FORMAT"}
APP_SERVICES = {"migrate", "web", "worker-gpu", "worker-default", "beat", "dicom-listener"}


def _tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{name} is not installed in the environment (make test installs the dev extras)")
    return str(path)


def _compose() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def _read_variables() -> set[str]:
    """Environment variables read by the settings and the gunicorn configuration."""
    settings = (ROOT / "config" / "settings.py").read_text()
    names = set(re.findall(r'env\.[a-z_]+\(\s*"([A-Z][A-Z0-9_]+)"', settings))
    gunicorn = (DOCKER / "gunicorn.conf.py").read_text()
    names |= set(re.findall(r'_int\(\s*"([A-Z][A-Z0-9_]+)"', gunicorn))
    names |= set(re.findall(r'os\.environ\.get\(\s*"((?:GUNICORN|PROMETHEUS)_[A-Z0-9_]+)"', gunicorn))
    return names


def _env_example() -> dict[str, str]:
    """Variables of docker/env.example: set ones, and commented ``# NAME=`` ones (set by compose)."""
    values = {}
    for line in (DOCKER / "env.example").read_text().splitlines():
        match = re.match(r"^#?\s*([A-Z][A-Z0-9_]+)=(\S*)", line)
        if match:
            values[match.group(1)] = match.group(2)
    return values


def test_the_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [_tool("hadolint"), "--no-color", str(DOCKER / "Dockerfile")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_reports_a_defect_it_should() -> None:
    """The linter runs for real: a Dockerfile that runs as root from an unpinned image fails."""
    result = subprocess.run(
        [_tool("hadolint"), "--no-color", "-"],
        input="FROM python\nRUN apt-get install -y curl\n",
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and "DL3006" in result.stdout


def test_compose_validates_against_the_compose_specification(tmp_path: Path) -> None:
    check = [_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec"]
    result = subprocess.run([*check, str(DOCKER / "compose.yaml")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    # A file the specification rejects is reported (the check is not a formality).
    broken = _compose()
    broken["services"]["web"]["comand"] = broken["services"]["web"].pop("command")  # a typo
    (tmp_path / "compose.yaml").write_text(yaml.safe_dump(broken))
    result = subprocess.run([*check, str(tmp_path / "compose.yaml")], capture_output=True, text=True)
    assert result.returncode != 0 and "comand" in result.stdout


def test_the_topology_is_the_documented_one() -> None:
    compose = _compose()
    services = compose["services"]
    assert set(services) == APP_SERVICES | {"postgres", "redis"}
    gpu = services["worker-gpu"]
    assert gpu["command"][4:8] == ["-Q", "gpu", "--concurrency", "1"]  # one job at a time per GPU
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert gpu["build"]["args"]["TORCH_VARIANT"] == "cuda" and gpu["environment"]["PIPELINE_DEVICE"] == "cuda"
    assert services["worker-default"]["command"][4:6] == ["-Q", "default"]
    assert services["beat"]["command"][3] == "beat"
    assert services["web"]["command"] == ["gunicorn", "-c", "docker/gunicorn.conf.py", "config.wsgi"]
    assert services["web"]["ports"] == ["127.0.0.1:8000:8000"]  # behind the TLS proxy, not on the network
    # Redis keeps its queues over a restart; every long-running service has a health check.
    redis_command = services["redis"]["command"]
    assert redis_command[redis_command.index("--appendonly") + 1] == "yes"
    for name in ("postgres", "redis", "web", "worker-gpu", "worker-default", "dicom-listener"):
        assert "healthcheck" in services[name], name
    # Two database roles: migrate as the schema owner, then the application role gets its privileges;
    # every other process connects as the application role, which owns nothing.
    assert services["migrate"]["environment"]["DATABASE_URL"].startswith("postgres://mettrack:")
    assert services["migrate"]["command"][-1].endswith("manage.py grant_app_role mettrack_app")
    assert "./postgres-init:/docker-entrypoint-initdb.d:ro" in services["postgres"]["volumes"]
    for name in APP_SERVICES:
        assert "media:/data/media" in services[name]["volumes"] or name == "beat", name
        if name != "migrate":
            assert services[name]["environment"]["DATABASE_URL"].startswith("postgres://mettrack_app:"), name
    for name in APP_SERVICES - {"migrate"}:
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert set(compose["volumes"]) >= {"pgdata", "redisdata", "media"}


def test_every_variable_is_in_the_template_and_the_readme() -> None:
    read = _read_variables()
    template = set(_env_example())
    readme = (ROOT / "README.md").read_text()
    assert read - template == set(), "missing from docker/env.example"
    assert template - read - COMPOSE_VARIABLES == set(), "docker/env.example lists variables nothing reads"
    undocumented = {name for name in read | COMPOSE_VARIABLES if f"`{name}`" not in readme}
    assert undocumented == set(), "missing from the README"
    assert template >= SET_BY_COMPOSE


def test_the_template_is_a_working_configuration_once_the_secrets_are_set(tmp_path: Path) -> None:
    """Settings and gunicorn load with docker/env.example's values (a typo in a value would stop them)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DJANGO", "PYTEST"))}
    env.update({key: value for key, value in _env_example().items() if key not in SET_BY_COMPOSE})
    env.update(
        SECRET_KEY="template-check-not-a-secret-0123456789-abcdefghijklmnopqrstuvwxyz",
        ALLOWED_HOSTS="mettrack.example.org",
        DATABASE_URL="postgres://mettrack:secret@postgres:5432/mettrack",
        CELERY_BROKER_URL="redis://redis:6379/0",
        STATIC_ROOT=str(tmp_path / "static"),
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"),
    )
    probe = (
        "import django; django.setup(); from django.conf import settings as s; "
        "print(s.DEBUG, s.SESSION_COOKIE_SECURE, s.DATABASES['default']['CONN_MAX_AGE'], s.STORAGE_MIN_FREE_BYTES)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        env={**env, "DJANGO_SETTINGS_MODULE": "config.settings"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["False", "True", "60", str(256 * 1024**2)]

    gunicorn = shutil.which("gunicorn", path=str(BIN))
    assert gunicorn is not None
    check = subprocess.run(
        [gunicorn, "--check-config", "--print-config", "-c", "docker/gunicorn.conf.py", "config.wsgi"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.returncode == 0, check.stdout[-3000:] + check.stderr[-3000:]
    config = dict(re.findall(r"^(\w+)\s*=\s*(.*)$", check.stdout, re.M))
    assert config["worker_class"] == "gthread" and config["threads"] == "4" and config["timeout"] == "600"
    assert config["preload_app"] == "True" and int(config["workers"]) >= 2


@pytest.mark.django_db(transaction=True)
def test_the_postgres_init_script_and_migrate_leave_an_app_role_that_cannot_rewrite_the_audit_trail() -> None:
    """docker/postgres-init/10-app-role.sh (run by the postgres image) and the migrate service's
    grant_app_role, run here against the test database: the role reads and writes the clinical tables
    and cannot delete or truncate the audit trail."""
    import psycopg
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.fail("this test needs PostgreSQL: set DATABASE_URL")
    db = connection.settings_dict
    role = f"mt_app_test_{os.getpid()}"
    host, port = db["HOST"] or "127.0.0.1", str(db["PORT"] or 5432)
    env = {
        **os.environ,
        "PGHOST": host,
        "PGPORT": port,
        "POSTGRES_USER": db["USER"],
        "POSTGRES_DB": db["NAME"],
        "POSTGRES_APP_ROLE": role,
        "POSTGRES_APP_PASSWORD": "app-role-test-password",
    }
    try:
        init = subprocess.run(
            ["sh", str(DOCKER / "postgres-init" / "10-app-role.sh")], env=env, capture_output=True, text=True
        )
        assert init.returncode == 0, init.stderr
        grant = subprocess.run(
            [sys.executable, "manage.py", "grant_app_role", role],
            cwd=ROOT,
            env={
                **os.environ,
                "DEBUG": "1",
                "DATABASE_URL": f"postgres://{db['USER']}@{host}:{port}/{db['NAME']}",
            },
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert grant.returncode == 0, grant.stderr[-2000:]
        with psycopg.connect(host=host, port=port, dbname=db["NAME"], user=role, autocommit=True) as app:
            assert app.execute("SELECT count(*) FROM trials_patient").fetchone() is not None
            app.execute("UPDATE trials_trial SET title = title")  # clinical tables are writable
            for statement in ("DELETE FROM trials_auditevent", "TRUNCATE trials_auditevent"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    app.execute(statement)
    finally:
        with psycopg.connect(
            host=host, port=port, dbname=db["NAME"], user=db["USER"], autocommit=True
        ) as owner:
            owner.execute(f'DROP OWNED BY "{role}"')
            owner.execute(f'DROP ROLE IF EXISTS "{role}"')
