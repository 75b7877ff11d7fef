"""Shared pytest fixtures of the MetTrack suite (builders live in tests/factories.py)."""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

# Property tests must not fail because the machine is busy: no per-example deadline and no "too slow"
# health check (a fresh-clone run on a loaded machine once failed that way). The profile is loaded here,
# before any test module is imported, so the tests' own @settings inherit it.
hypothesis_settings.register_profile(
    "mettrack", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "mettrack"))


# Under pytest-xdist each worker gets its share of the cores for PyTorch, BLAS and ONNX Runtime threads
# (set before any test module imports torch): more threads than cores only thrash a small CI machine.
_XDIST_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _XDIST_WORKERS > 1:
    _share = str(max(1, len(os.sched_getaffinity(0)) // _XDIST_WORKERS))
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_var, _share)


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix: None) -> None:
    """Give this run its own test database (``test_<name>_p<pid>``).

    Several engineers and CI jobs share one PostgreSQL server; a fixed test database name would make
    concurrent runs destroy each other's database.
    """
    from django.conf import settings

    for db_settings in settings.DATABASES.values():
        if db_settings["ENGINE"] == "django.db.backends.sqlite3":
            continue  # in-memory per process already
        test_settings = db_settings.setdefault("TEST", {})
        base = test_settings.get("NAME") or f"test_{db_settings['NAME']}"
        test_settings["NAME"] = f"{base}_p{os.getpid()}"


@pytest.fixture
def api_client() -> Any:
    """An unauthenticated DRF test client."""
    from rest_framework.test import APIClient

    return APIClient()


@pytest.fixture
def trial(db: None) -> Any:
    """A trial with one site."""
    from tests.factories import make_site, make_trial

    trial = make_trial("TRIAL-A")
    make_site(trial, code="SITE-A")
    return trial


@pytest.fixture
def other_trial(db: None) -> Any:
    """A second trial with one site, for cross-trial checks."""
    from tests.factories import make_site, make_trial

    trial = make_trial("TRIAL-B")
    make_site(trial, code="SITE-B")
    return trial


@pytest.fixture(autouse=True)
def _fresh_throttle_counters() -> None:
    """API throttle counters live in the cache: each test starts with none (a rate is per minute)."""
    from django.core.cache import cache

    cache.clear()
