"""Browser-test fixtures: Debian's Chromium driven by Playwright (never ``playwright install``)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    # WebGL2 for the viewer (Niivue) without a GPU: Chromium's software renderer, SwiftShader, which
    # Chromium no longer falls back to silently.
    "--enable-unsafe-swiftshader",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

# Playwright's sync API keeps an event loop in this thread; the ORM calls the test makes between
# browser steps are plain synchronous calls, which Django would otherwise refuse next to a loop.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


def _ensure_chromium() -> None:
    if not os.access(CHROMIUM, os.X_OK):
        script = Path(__file__).resolve().parents[2] / "scripts" / "ensure-chromium.sh"
        subprocess.run(["bash", str(script)], check=False)
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip("Debian's Chromium is not installed (run scripts/ensure-chromium.sh as root).")


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """A headless Chromium for the whole session."""
    _ensure_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh browser context and page (1400 x 1000, no network outside the live server)."""
    ARTIFACTS.mkdir(exist_ok=True)
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()
