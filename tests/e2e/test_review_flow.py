"""End to end, in a real browser against a live server on PostgreSQL: a radiologist logs in, opens a
patient, scrolls the viewer, drops a false-positive lesion, sees the assessment change from PD to SD,
adds a missed lesion by clicking its seed (PD again: a new lesion), overrides the response with a reason
and a password signature, and finds the events in the visit's audit trail.
Screenshots go to test-artifacts/."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.dashboard.world import CENTRE_MISSED, build_world
from tests.e2e.conftest import ARTIFACTS
from trials.models import Assessment, AuditEvent

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def live_world(transactional_db: None, settings: Any, tmp_path: Path) -> Any:
    from trials.views.imaging import clear_cache

    settings.MEDIA_ROOT = tmp_path / "media"
    settings.MEDIA_ROOT.mkdir()
    # The live server speaks plain HTTP; secure-only cookies would never come back to it.
    settings.SESSION_COOKIE_SECURE = False
    settings.CSRF_COOKIE_SECURE = False
    clear_cache()
    return build_world(settings.MEDIA_ROOT)


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """The conftest's page, with the Content-Security-Policy bypassed for Playwright's own helpers:
    ``wait_for_function`` evaluates strings in the page, which the policy (rightly) forbids. The policy
    itself is tested page by page in test_csp.py."""
    ARTIFACTS.mkdir(exist_ok=True)
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, bypass_csp=True)
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()


def _shot(page: Any, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_radiologist_review_flow(live_server: Any, live_world: Any, page: Any) -> None:
    world = live_world
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("response", lambda r: errors.append(f"HTTP {r.status} {r.url}") if r.status >= 400 else None)

    # Log in.
    page.goto(f"{live_server.url}/")
    assert "/accounts/login/" in page.url
    page.get_by_label("User name").fill(world.radiologist.username)
    page.get_by_label("Password").fill(world.password)
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("heading", name="Your trials").wait_for()
    _shot(page, "01-home")

    # Trial home -> patient timeline.
    page.get_by_role("link", name="DASH-BM").first.click()
    page.get_by_role("heading", name=re.compile("DASH-BM")).wait_for()
    _shot(page, "02a-trial-home")
    page.get_by_role("link", name="Plots").first.click()
    page.locator("#chart-swimmer .main-svg").first.wait_for()
    _shot(page, "02b-trial-plots")
    page.go_back()
    page.get_by_role("link", name="SUBJ-0001").click()
    page.get_by_role("heading", name=re.compile("Patient SUBJ-0001")).wait_for()
    page.locator("#chart-sld .main-svg").first.wait_for()  # plotly drew the SLD chart
    _shot(page, "02-patient-timeline")

    # Visit FU1: the viewer.
    page.locator("#visits").get_by_role("link", name="FU1").click()
    try:
        page.locator("#main-canvas[data-k]").wait_for(state="attached")
    except Exception:
        _shot(page, "viewer-failed")
        raise AssertionError(f"viewer did not load; browser errors: {errors}") from None
    assert page.locator("#overall-response").inner_text().startswith("PD")
    start_k = int(page.locator("#main-canvas").get_attribute("data-k"))
    page.locator("#viewer-root").focus()
    page.keyboard.press("ArrowUp")
    page.keyboard.press("ArrowUp")
    page.wait_for_function(f"document.getElementById('main-canvas').dataset.k === '{start_k + 2}'")
    page.keyboard.press("ArrowDown")
    page.wait_for_function(f"document.getElementById('main-canvas').dataset.k === '{start_k + 1}'")
    # Outside the viewer the arrows are the page's: the slice stays.
    page.locator("h1").click()
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowDown")
    page.wait_for_timeout(300)
    assert page.locator("#main-canvas").get_attribute("data-k") == str(start_k + 1)
    page.locator("#viewer-root").focus()
    # j jumps to a lesion; its contour and label are on that slice.
    page.keyboard.press("j")
    page.wait_for_function("document.getElementById('main-canvas').dataset.lesions.includes('L')")
    assert "slice" in page.locator("#main-status").inner_text()
    assert page.locator("#compare-img").get_attribute("src"), "the comparison panel shows the previous visit"
    _shot(page, "03-viewer")

    # The reader's own window/level; the review action below must bring the same view back.
    page.locator("#window-input").fill("300")
    page.locator("#window-input").dispatch_event("change")
    page.locator("#level-input").fill("120")
    page.locator("#level-input").dispatch_event("change")
    viewed_k = page.locator("#main-canvas").get_attribute("data-k")

    # Drop L2 as a false positive: the assessment is recomputed (PD -> SD).
    page.get_by_label("Reason").and_(page.locator(f"#drop-reason-{world.lesions['L2'].pk}")).fill(
        "vessel, not a metastasis"
    )
    page.get_by_role("button", name="Drop L2 as a false positive").click()
    page.locator(".messages").get_by_text("L2 dropped").wait_for()
    page.locator("#main-canvas[data-k]").wait_for(state="attached")
    assert page.locator("#main-canvas").get_attribute("data-k") == viewed_k  # the same slice
    assert (page.locator("#window-input").input_value(), page.locator("#level-input").input_value()) == (
        "300",
        "120",
    )
    assert page.locator("#overall-response").inner_text().startswith("SD")
    assert "dropped" in page.locator("#lesion-L2").inner_text()
    _shot(page, "04-after-drop")

    # Add the lesion the AI missed: click its centre on the image in "seed" mode (region growing).
    page.get_by_label("Click on the image to").select_option("add")
    page.locator("#main-canvas[data-k]").wait_for(state="attached")
    assert page.locator("#main-canvas").get_attribute("data-k") == str(CENTRE_MISSED[2])
    box = page.locator("#main-canvas").bounding_box()
    scale = min(box["width"], box["height"]) / 64  # the 64 x 64 slice, drawn with object-fit: contain
    off_x, off_y = (box["width"] - 64 * scale) / 2, (box["height"] - 64 * scale) / 2
    page.locator("#main-canvas").click(
        position={
            "x": off_x + (CENTRE_MISSED[0] + 0.5) * scale,
            "y": off_y + (CENTRE_MISSED[1] + 0.5) * scale,
        }
    )
    assert page.get_by_label("Seed voxel (i,j,k)").input_value() == ",".join(map(str, CENTRE_MISSED))
    page.locator("#add-reason").fill("missed enhancing focus")
    page.get_by_role("button", name="Add lesion").click()
    page.locator(".messages").get_by_text("L3 added").wait_for()
    assert page.locator("#overall-response").inner_text().startswith("PD")  # an unequivocal new lesion
    assert "new" in page.locator("#lesion-L3").inner_text()

    # Override with a reason, signed by the password.
    page.get_by_label("Reader's overall response").select_option("SD")
    page.get_by_label("Reason (required)").fill("new focus is a vessel on the perfusion series")
    page.get_by_label(re.compile("Password \\(electronic signature: .reviewed and overridden")).fill(
        world.password
    )
    dialogs: list[str] = []

    def accept(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    page.get_by_role("button", name="Override and sign").click()
    page.locator(".messages").get_by_text("overridden to SD").wait_for()
    assert dialogs == ["Override the response PD with SD, signed by you? The AI's answer stays on record."]
    assert page.locator("#overall-response").inner_text().startswith("SD")
    status = page.locator("#review-status").inner_text()
    assert "Overridden" in status and world.radiologist.username in status

    # The audit trail of the visit shows both, with who and why.
    audit = page.locator("#audit-table")
    override_row = audit.locator("tr", has_text="new focus is a vessel on the perfusion series").filter(
        has_text="override"
    )
    assert override_row.count() >= 1
    assert world.radiologist.username in override_row.first.inner_text()
    assert (
        audit.locator("tr", has_text="review.drop_lesion").filter(has_text="vessel, not a metastasis").count()
        == 1
    )
    page.locator("#audit").scroll_into_view_if_needed()
    _shot(page, "05-audit-trail")
    assert not errors, f"JavaScript errors: {errors}"

    # The database agrees with the page.
    current = Assessment.objects.get(timepoint=world.fu1, criteria="rano_bm", is_current=True)
    assert (current.overall_response, current.status, current.signed_by_id) == (
        "SD",
        "overridden",
        world.radiologist.pk,
    )
    assert AuditEvent.objects.filter(action="override", actor=world.radiologist).exists()
