"""Fixtures of the dashboard tests: an imaged world under a temporary MEDIA_ROOT."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.dashboard.world import World, build_world


@pytest.fixture
def media_root(settings: Any, tmp_path: Path) -> Path:
    """A fresh MEDIA_ROOT for the test (the viewer's volume cache is emptied too)."""
    from trials.views.imaging import clear_cache

    settings.MEDIA_ROOT = tmp_path / "media"
    settings.MEDIA_ROOT.mkdir()
    clear_cache()
    return settings.MEDIA_ROOT


@pytest.fixture
def world(db: None, media_root: Path) -> World:
    """The imaged case of tests/dashboard/world.py."""
    return build_world(media_root)


@pytest.fixture
def rad_client(client: Any, world: World) -> Any:
    """A test client logged in as the world's radiologist."""
    client.force_login(world.radiologist)
    return client
