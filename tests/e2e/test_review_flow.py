"""End to end, in a real browser against a live server on PostgreSQL: a radiologist logs in, opens a
patient, reads the visit beside an earlier one scanned with another gain (each panel readable in its own
window, checked on the WebGL canvases' pixels), scrolls the viewer, drops a false-positive lesion, sees the assessment change from PD to SD,
adds a missed lesion by clicking its seed (PD again: a new lesion), both edits without a reload and
keeping the slice and window, overrides the response with a reason
and a password signature, and finds the events in the visit's audit trail.
Screenshots go to test-artifacts/."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.dashboard.world import CENTRE_L1, CENTRE_MISSED, build_world
from tests.e2e.conftest import ARTIFACTS
from trials.models import Assessment, AuditEvent, Lesion

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


def _wait_attr(page: Any, selector: str, name: str, value: str) -> None:
    page.wait_for_function(
        "([s, n, v]) => document.querySelector(s).getAttribute(n) === v", arg=[selector, name, value]
    )


#: Luminance statistics of a viewer panel's WebGL canvas, read right after a draw.
PIXEL_STATS = """prefix => {
  const d = MetTrackViewer.pixels(prefix);
  let n = 0, sum = 0, sum2 = 0, white = 0, bright = 0;
  for (let i = 0; i < d.length; i += 4) {
    const y = 0.299 * d[i] + 0.587 * d[i + 1] + 0.114 * d[i + 2];
    n += 1; sum += y; sum2 += y * y;
    if (y >= 250) white += 1;
    if (y >= 180) bright += 1;
  }
  const mean = sum / n;
  return {mean: mean, std: Math.sqrt(sum2 / n - mean * mean), white: white / n, bright: bright / n};
}"""


def _pixel_stats(page: Any, prefix: str) -> dict[str, float]:
    return page.evaluate(PIXEL_STATS, prefix)


def _scale_volume(series: Any, factor: float) -> None:
    """Rewrite a stored volume with a factor on its intensities (another scanner gain)."""
    import SimpleITK as sitk

    from trials.views.imaging import clear_cache

    path = series.volume_file.path
    image = sitk.ReadImage(path)
    sitk.WriteImage(sitk.Cast(image * factor, image.GetPixelID()), path, useCompression=True)
    clear_cache()


def test_radiologist_review_flow(live_server: Any, live_world: Any, page: Any) -> None:
    world = live_world
    _scale_volume(world.baseline.series.first(), 8.0)
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

    # Visit FU1: the WebGL viewer (Niivue), FU1 beside BASELINE, whose scanner gain is 8 times higher.
    page.locator("#visits").get_by_role("link", name="FU1").click()
    try:
        # Chromium's software WebGL compiles Niivue's shaders on the CPU: allow it time on a busy machine.
        page.locator("#viewer-root[data-ready]").wait_for(state="attached", timeout=60_000)
    except Exception:
        _shot(page, "viewer-failed")
        status = page.locator("#main-status").inner_text()
        raise AssertionError(f"viewer did not load ({status}); browser errors: {errors}") from None
    assert page.locator("#overall-response").inner_text().startswith("PD")
    assert page.locator("#compare-title").inner_text().startswith("Earlier visit: BASELINE")
    main_window = [float(v) for v in page.locator("#main-canvas").get_attribute("data-window").split(",")]
    prior_window = [float(v) for v in page.locator("#compare-canvas").get_attribute("data-window").split(",")]
    assert prior_window[1] > 5 * main_window[1], (main_window, prior_window)  # each panel its own window
    for prefix in ("main", "compare"):
        stats = _pixel_stats(page, prefix)
        # Readable: the lesions bright, the brain grey, not a white (or black) square.
        assert stats["white"] < 0.2 and stats["bright"] > 0.002 and stats["std"] > 15, (prefix, stats)
    _shot(page, "03-viewer")

    start_k = int(page.locator("#main-canvas").get_attribute("data-k"))
    page.locator("#viewer-root").focus()
    page.keyboard.press("ArrowUp")
    page.keyboard.press("ArrowUp")
    _wait_attr(page, "#main-canvas", "data-k", str(start_k + 2))
    page.keyboard.press("ArrowDown")
    _wait_attr(page, "#main-canvas", "data-k", str(start_k + 1))
    # Outside the viewer the arrows are the page's: the slice stays.
    page.locator("h1").click()
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowDown")
    page.wait_for_timeout(300)
    assert page.locator("#main-canvas").get_attribute("data-k") == str(start_k + 1)
    # The help overlay lists the keys.
    page.locator("#viewer-root").focus()
    page.keyboard.press("?")
    assert page.get_by_role("dialog").get_by_text("next / previous lesion").is_visible()
    page.keyboard.press("Escape")
    # A lesion row opens the lesion at its LD slice, in both panels (the prior at its own L2).
    page.get_by_role("button", name="Show L2 in the viewer").click()
    _wait_attr(page, "#main-canvas", "data-lesions", "L1,L2")
    page.wait_for_function("document.getElementById('compare-canvas').dataset.lesions.includes('L2')")

    # Window/level by dragging in a panel changes that panel's window only.
    prior = page.locator("#compare-canvas").get_attribute("data-window")
    before = page.locator("#main-canvas").get_attribute("data-window")
    page.get_by_label("Left drag").select_option("windowing")
    box = page.locator("#main-canvas").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2 + 120, box["y"] + box["height"] / 2 + 60, steps=6)
    page.mouse.up()
    page.wait_for_function("w => document.getElementById('main-canvas').dataset.window !== w", arg=before)
    assert page.locator("#compare-canvas").get_attribute("data-window") == prior
    page.get_by_label("Left drag").select_option("crosshair")

    # The reader's own window on the current visit; the edit below must keep it, and the slice.
    page.locator("#main-low").fill("60")
    page.locator("#main-low").dispatch_event("change")
    page.locator("#main-high").fill("420")
    page.locator("#main-high").dispatch_event("change")
    _wait_attr(page, "#main-canvas", "data-window", "60,420")
    viewed = page.locator("#main-canvas").get_attribute("data-vox")
    page.evaluate("window.__sameDocument = true")  # gone if the page were reloaded

    # Drop L2 as a false positive (posted by fetch): the assessment is recomputed (PD -> SD) in place.
    page.get_by_label("Reason").and_(page.locator(f"#drop-reason-{world.lesions['L2'].pk}")).fill(
        "vessel, not a metastasis"
    )
    page.get_by_role("button", name="Drop L2 as a false positive").click()
    page.locator(".messages").get_by_text("L2 dropped").wait_for()
    page.wait_for_function("document.getElementById('overall-response').innerText.startsWith('SD')")
    assert page.evaluate("window.__sameDocument === true"), "the edit reloaded the page"
    assert page.locator("#main-canvas").get_attribute("data-vox") == viewed  # the same slice and point
    assert page.locator("#main-canvas").get_attribute("data-window") == "60,420"  # the same window
    assert "dropped" in page.locator("#lesion-L2").inner_text()
    assert f"-m60,420-c{world.baseline.pk}-" in page.url  # a reload would come back to this view
    _shot(page, "04-after-drop")

    # Add the lesion the AI missed: a click on its centre in "seed" mode (region growing).
    page.get_by_label("Click on the image to").select_option("add")
    point = page.evaluate("v => MetTrackViewer.canvasPoint('main', v)", list(CENTRE_MISSED))
    page.locator("#main-canvas").click(position={"x": point[0], "y": point[1]})
    # The viewer fills the form just after the mouse-up: wait for it, not for the click to return.
    expect(page.get_by_label("Seed voxel (i,j,k)")).to_have_value(
        ",".join(map(str, CENTRE_MISSED)), timeout=15_000
    )
    page.locator("#add-reason").fill("missed enhancing focus")
    page.get_by_role("button", name="Add lesion").click()
    page.locator(".messages").get_by_text("L3 added").wait_for()
    page.wait_for_function("document.getElementById('overall-response').innerText.startsWith('PD')")
    assert "new" in page.locator("#lesion-L3").inner_text()
    _wait_attr(page, "#main-canvas", "data-k", str(CENTRE_MISSED[2]))  # on the clicked slice
    assert page.evaluate("window.__sameDocument === true")
    # Split and merge take their lesions and points from clicks too.
    l1 = world.lesions["L1"]
    page.get_by_label("Click on the image to").select_option("merge-absorb")
    point = page.evaluate("v => MetTrackViewer.canvasPoint('main', v)", list(CENTRE_L1))
    page.locator("#main-canvas").click(position={"x": point[0], "y": point[1]})
    expect(page.locator("#merge-absorb")).to_have_value(str(l1.pk), timeout=15_000)
    page.get_by_label("Click on the image to").select_option("split-keep")
    point = page.evaluate("v => MetTrackViewer.canvasPoint('main', v)", list(CENTRE_MISSED))
    page.locator("#main-canvas").click(position={"x": point[0], "y": point[1]})
    l3 = Lesion.objects.get(patient=world.patient, label="L3")
    expect(page.locator("#split-lesion")).to_have_value(
        str(l3.pk), timeout=15_000
    )  # the lesion under the click
    expect(page.locator("#split-keep")).to_have_value(",".join(map(str, CENTRE_MISSED)), timeout=15_000)
    # A reload (the address keeps the view) comes back to the same point, window and comparison.
    viewed = page.locator("#main-canvas").get_attribute("data-vox")
    page.reload()
    page.locator("#viewer-root[data-ready]").wait_for(state="attached", timeout=60_000)
    assert page.locator("#main-canvas").get_attribute("data-vox") == viewed
    assert page.locator("#main-canvas").get_attribute("data-window") == "60,420"
    assert page.locator("#compare-select").input_value() == str(world.baseline.pk)

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
