"""Fixtures of the export tests: the golden synthetic trial, built once per test module."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.db import transaction

from tests.exports.world import World, build_world


@pytest.fixture(scope="module")
def world(django_db_setup: None, django_db_blocker: Any) -> Iterator[World]:
    """GOLD-BM (tests/exports/world.py), created once per module inside a transaction rolled back at the end.

    Tests using it also request ``db``, so each test runs in its own savepoint and cannot leak changes.
    """
    with django_db_blocker.unblock(), transaction.atomic():
        built = build_world()
        yield built
        transaction.set_rollback(True)
