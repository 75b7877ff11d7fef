"""Every dashboard page under the Content-Security-Policy, in a real browser: no violation in the console.

The policy allows no inline script or style (issue 19); before it, the pages carried inline styles and
there was no policy at all. A page that still had an inline style, an inline handler or a script
needing ``eval`` would log "Refused to ..." here. Also checks the headers every page carries.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.dashboard.world import build_world
from tests.factories import make_superuser
from trials.models import Lesion

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def live_world(transactional_db: None, settings: Any, tmp_path: Path) -> Any:
    from trials.views.imaging import clear_cache

    settings.MEDIA_ROOT = tmp_path / "media"
    settings.MEDIA_ROOT.mkdir()
    settings.SESSION_COOKIE_SECURE = False  # the live server speaks plain HTTP
    settings.CSRF_COOKIE_SECURE = False
    clear_cache()
    return build_world(settings.MEDIA_ROOT)


def _log_in(page: Any, base: str, username: str, password: str) -> None:
    page.goto(f"{base}/accounts/login/")
    page.get_by_label("User name").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("heading", name="Your trials").wait_for()


def test_no_page_breaks_the_content_security_policy(live_server: Any, live_world: Any, page: Any) -> None:
    world = live_world
    root = make_superuser("csp-root")
    problems: list[str] = []
    page.on(
        "console",
        lambda msg: (
            problems.append(f"{page.url}: {msg.text}")
            if msg.type == "error" or "Content Security Policy" in msg.text
            else None
        ),
    )
    page.on("pageerror", lambda exc: problems.append(f"{page.url}: {exc}"))
    base = live_server.url
    login = page.goto(f"{base}/accounts/login/")
    policy = login.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert login.headers["permissions-policy"].startswith("accelerometer=()")

    _log_in(page, base, root.username, world.password)
    lesion = Lesion.objects.filter(patient=world.patient).first()
    assert lesion is not None
    pages = {
        "trials": "/",
        "trial home": f"/trials/{world.trial.pk}/",
        "trial plots": f"/trials/{world.trial.pk}/plots/",
        "patient": f"/patients/{world.patient.pk}/",
        "visit": f"/visits/{world.fu1.pk}/",
        "visit report": f"/visits/{world.fu1.pk}/report/",
        "exports": f"/trials/{world.trial.pk}/exports/",
        "quality": f"/trials/{world.trial.pk}/quality/",
        "PACS inbox": "/inbox/",
        "password change": "/accounts/password_change/",
        "API docs": "/api/docs/",
    }
    for name, path in pages.items():
        response = page.goto(f"{base}{path}")
        assert response is not None and response.status == 200, name
        assert response.headers["cache-control"] == "no-store", name
        assert "content-security-policy" in response.headers, name
        page.wait_for_load_state("networkidle")
        if name in ("patient", "trial plots"):
            page.locator(".chart .main-svg").first.wait_for()  # plotly drew under the policy
        if name == "visit":
            page.locator("#viewer-root[data-ready]").wait_for(
                state="attached", timeout=60_000
            )  # the viewer ran
        if name == "API docs":
            page.locator(".swagger-ui .info").first.wait_for()  # Swagger UI rendered without inline script
    assert problems == [], "\n".join(problems)
