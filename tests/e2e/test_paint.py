"""In the browser: a radiologist paints a lesion the AI missed with Niivue's pen (an outline, filled when
the pen lifts) and adds it through the "paint" review verb, without a reload. The oracle is where the
outline was drawn: the stored lesion lies on that slice, centred on the drawn circle's centre (a flipped
or shifted voxel mapping between Niivue's grid and the served one would move it)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk

from tests.dashboard.world import CENTRE_MISSED
from tests.e2e.conftest import ARTIFACTS
from tests.e2e.test_csp import _log_in, live_world  # noqa: F401  (fixture)
from trials import storage
from trials.models import LesionObservation

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A page whose Content-Security-Policy is bypassed for Playwright's own string helpers (as in
    test_review_flow.py; the policy itself is test_csp.py's)."""
    ARTIFACTS.mkdir(exist_ok=True)
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, bypass_csp=True)
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()


#: The drawn outline: a circle of this radius (voxels, 1 mm in-plane) around the missed lesion's centre.
RADIUS_VOXELS = 4.0


def test_paint_a_missed_lesion(live_server: Any, live_world: Any, page: Any) -> None:  # noqa: F811
    world = live_world
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    _log_in(page, live_server.url, world.radiologist.username, world.password)
    page.goto(f"{live_server.url}/visits/{world.fu1.pk}/")
    page.locator("#viewer-root[data-ready]").wait_for(state="attached", timeout=60_000)
    assert page.locator("#main-canvas").get_attribute("data-k") == str(CENTRE_MISSED[2])  # L1's slice
    page.evaluate("window.__sameDocument = true")

    page.get_by_label("Click on the image to").select_option("paint")
    i, j, k = CENTRE_MISSED
    outline = [
        (i + RADIUS_VOXELS * math.cos(a), j + RADIUS_VOXELS * math.sin(a), k)
        for a in np.linspace(0, 2 * math.pi, 25)
    ]
    points = [page.evaluate("v => MetTrackViewer.canvasPoint('main', v)", list(p)) for p in outline]
    page.locator("#main-canvas").scroll_into_view_if_needed()
    box = page.locator("#main-canvas").bounding_box()  # viewport coordinates: the canvas in view
    page.mouse.move(box["x"] + points[0][0], box["y"] + points[0][1])
    page.mouse.down()
    for x, y in points[1:]:
        page.mouse.move(box["x"] + x, box["y"] + y, steps=2)
    page.mouse.up()
    page.wait_for_function("!document.getElementById('paint-count').innerText.startsWith('Nothing')")
    page.locator("#paint-reason").fill("missed focus, painted")
    page.screenshot(path=str(ARTIFACTS / "07-paint.png"), full_page=False)
    page.get_by_role("button", name="Add painted lesion").click()
    page.locator(".messages").get_by_text("L3 added from the painted region").wait_for()
    assert page.evaluate("window.__sameDocument === true"), "the edit reloaded the page"
    assert "new" in page.locator("#lesion-L3").inner_text()
    page.wait_for_function("document.getElementById('paint-count').innerText.startsWith('Nothing')")

    obs = LesionObservation.objects.get(lesion__patient=world.patient, lesion__label="L3")
    mask = sitk.GetArrayFromImage(storage.load_observation_mask(obs)) > 0
    zs, ys, xs = np.nonzero(mask)
    assert set(zs.tolist()) == {k}  # drawn on one axial slice
    assert abs(xs.mean() - i) < 1.0 and abs(ys.mean() - j) < 1.0, (xs.mean(), ys.mean())
    area = math.pi * RADIUS_VOXELS**2
    assert 0.6 * area < mask.sum() < 1.6 * area  # the filled circle, not its outline alone
    assert not errors, errors
