"""Every dashboard page checked by axe-core (Deque's accessibility engine, installed from npm by
``make test``) in Debian's Chromium: no serious or critical WCAG 2.1 A/AA violation.

axe runs in the page as a screen-reader user would meet it: after the charts, the viewer and the tables
have rendered. At 1440 px, the patient timeline's scan dates each stay on one line without widening the
page past the window. The context bypasses the Content-Security-Policy only to inject axe itself (its test
``test_csp.py`` checks the policy).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import ARTIFACTS
from tests.e2e.test_csp import _log_in, live_world  # noqa: F401  (fixture)
from tests.factories import make_superuser

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

AXE = Path(__file__).resolve().parents[2] / "node_modules" / "axe-core" / "axe.min.js"
#: What fails the test: axe's two highest impacts, over WCAG 2.0/2.1 levels A and AA.
FAILING_IMPACTS = ("serious", "critical")
WCAG_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]


#: Scan dates of the timeline whose text breaks over several lines, and how far the page is wider than
#: the window (a date kept on one line must not push the table out of the page instead).
TIMELINE_LAYOUT = """() => {
  const cells = [...document.querySelectorAll('#visits td.date')];
  const lines = cell => { const r = document.createRange(); r.selectNodeContents(cell); return r.getClientRects().length; };
  return {
    dates: cells.map(c => c.innerText),
    wrapped: cells.filter(c => lines(c) > 1).map(c => c.innerText),
    overflow: document.documentElement.scrollWidth - document.documentElement.clientWidth,
  };
}"""


#: Pages photographed on the way, for the README (copied to docs/screenshots/ by hand).
SCREENSHOTS = {
    "worklist": "08-worklist.png",
    "visit report": "09-visit-report.png",
    "exports": "10-exports.png",
}


def _axe(page: Any) -> list[dict[str, Any]]:
    page.add_script_tag(path=str(AXE))
    result = page.evaluate(
        "tags => axe.run(document, {runOnly: {type: 'tag', values: tags}, resultTypes: ['violations']})",
        WCAG_TAGS,
    )
    return [v for v in result["violations"] if v["impact"] in FAILING_IMPACTS]


def _shadow_candidate(world: Any) -> None:
    """A candidate in shadow whose runs repeat the active model's masks, its agreement computed by the
    shadow job's own function: the quality page then shows its comparison section too."""
    from tests.factories import make_member, make_model_version
    from trials.actions import governance
    from trials.choices import MembershipRole, RunStatus
    from trials.models import SegmentationRun, TrialModel
    from trials.pipeline.shadow import shadow_agreement
    from trials.records.imaging import create_segmentation_run

    admin = make_member(world.trial, MembershipRole.ADMIN)
    candidate = governance.start_shadow(
        world.trial, make_model_version(name="candidate"), actor=admin, reason="seen on live data"
    )
    for active in SegmentationRun.objects.filter(series__timepoint__patient=world.patient, is_shadow=False):
        run = create_segmentation_run(
            active.series, candidate.model_version, actor=None, status=RunStatus.SUCCEEDED, is_shadow=True
        )
        run.mask_file.name = active.mask_file.name
        run.lesion_table = [
            {"label": o.component_label, "volume_mm3": o.volume_mm3}
            for o in active.observations.filter(present=True)
        ]
        run.save()
    TrialModel.objects.filter(pk=candidate.pk).update(shadow_agreement=shadow_agreement(candidate))


def test_no_dashboard_page_has_a_serious_accessibility_violation(
    live_server: Any,
    live_world: Any,  # noqa: F811
    browser: Any,
) -> None:
    if not AXE.exists():
        pytest.fail(f"{AXE} is missing: make test installs it (npm ci)")
    world = live_world
    ARTIFACTS.mkdir(exist_ok=True)
    _shadow_candidate(world)
    root = make_superuser("axe-root")
    # 1440 px: the width the timeline must fit without wrapping a date (checked on the patient page).
    context = browser.new_context(viewport={"width": 1440, "height": 900}, bypass_csp=True)
    page = context.new_page()
    page.set_default_timeout(15_000)
    base = live_server.url
    _log_in(page, base, root.username, world.password)
    pages = {
        "trials": "/",
        "worklist": "/worklist/",
        "trial home": f"/trials/{world.trial.pk}/",
        "trial plots": f"/trials/{world.trial.pk}/plots/",
        "trial models": f"/trials/{world.trial.pk}/models/",
        "patient": f"/patients/{world.patient.pk}/",
        "baseline visit": f"/visits/{world.baseline.pk}/",
        "follow-up visit": f"/visits/{world.fu1.pk}/",
        "visit report": f"/visits/{world.fu1.pk}/report/",
        "exports": f"/trials/{world.trial.pk}/exports/",
        "quality": f"/trials/{world.trial.pk}/quality/",
        "PACS inbox": "/inbox/",
        "password change": "/accounts/password_change/",
    }
    found: dict[str, list[str]] = {}
    try:
        for name, path in pages.items():
            response = page.goto(f"{base}{path}")
            assert response is not None and response.status == 200, name
            page.wait_for_load_state("networkidle")
            if name in ("patient", "trial plots"):
                page.locator(".chart .main-svg").first.wait_for()
            if name == "patient":
                layout = page.evaluate(TIMELINE_LAYOUT)
                page.screenshot(path=str(ARTIFACTS / "timeline-1440.png"), full_page=True)
                assert layout["dates"] and not layout["wrapped"], layout  # each date on one line
                assert layout["overflow"] <= 0, layout  # and the page needs no sideways scrolling
            if name == "quality":  # the shadow comparison is part of what axe reads there
                assert page.locator("#shadow-summary").count() == 1
            if name.endswith("visit"):  # Niivue on software WebGL: its shaders compile on the CPU
                page.locator("#viewer-root[data-ready]").wait_for(state="attached", timeout=60_000)
            if name in SCREENSHOTS:  # the README's screenshots (docs/screenshots/ holds copies)
                page.screenshot(path=str(ARTIFACTS / SCREENSHOTS[name]), full_page=True)
            for violation in _axe(page):
                targets = [json.dumps(node["target"]) for node in violation["nodes"][:5]]
                found.setdefault(name, []).append(
                    f"{violation['impact']} {violation['id']}: {violation['help']} at {', '.join(targets)}"
                )
    finally:
        context.close()
    assert found == {}, "\n".join(f"{name}: {line}" for name, lines in found.items() for line in lines)
