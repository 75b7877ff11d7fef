"""Accessibility basics of the dashboard pages: every visible form control has a label (a <label for>,
a wrapping <label>, or aria-label), images have alt text, and response categories appear as text."""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any

import pytest

from tests.dashboard.world import World

pytestmark = pytest.mark.django_db


class _Controls(HTMLParser):
    """Collects form controls and the ids that labels point at."""

    def __init__(self) -> None:
        super().__init__()
        self.label_for: set[str] = set()
        self.label_depth = 0
        self.unlabelled: list[str] = []
        self.pending: list[dict[str, str]] = []
        self.images_without_alt: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "label":
            self.label_depth += 1
            if a.get("for"):
                self.label_for.add(a["for"])
        elif tag in ("input", "select", "textarea"):
            if a.get("type") in ("hidden", "submit", "button"):
                return
            if self.label_depth or a.get("aria-label") or a.get("aria-labelledby"):
                return
            self.pending.append(a)
        elif tag == "img" and "alt" not in a:
            self.images_without_alt.append(a.get("id", "?"))

    def handle_endtag(self, tag: str) -> None:
        if tag == "label":
            self.label_depth -= 1

    def finish(self) -> list[str]:
        return [
            f"<{a.get('name') or a.get('id')}>" for a in self.pending if a.get("id") not in self.label_for
        ]


def _check(html: str) -> None:
    parser = _Controls()
    parser.feed(html)
    assert parser.finish() == [], "controls without a label"
    assert parser.images_without_alt == []


@pytest.mark.parametrize("who", ["radiologist", "investigator", "data_manager"])
def test_every_control_is_labelled(client: Any, world: World, who: str) -> None:
    client.force_login(getattr(world, who))
    for url in (
        "/",
        "/worklist/",
        f"/trials/{world.trial.pk}/",
        f"/trials/{world.trial.pk}/plots/",
        f"/patients/{world.patient.pk}/",
        f"/visits/{world.baseline.pk}/",
        f"/visits/{world.fu1.pk}/",
    ):
        response = client.get(url)
        assert response.status_code == 200
        _check(response.content.decode())


def test_the_parser_finds_an_unlabelled_control() -> None:
    with pytest.raises(AssertionError, match="without a label"):
        _check('<form><input type="text" name="reason"></form>')
    _check('<form><label for="r">Reason</label><input id="r" type="text" name="reason"></form>')


def test_viewer_is_keyboard_reachable_and_explained(client: Any, world: World) -> None:
    client.force_login(world.investigator)
    body = client.get(f"/visits/{world.fu1.pk}/").content.decode()
    assert 'id="viewer-root" tabindex="0"' in body
    assert (
        "up and down arrows change slice, j and k jump between lesions, question mark lists the keys" in body
    )
    assert '<dialog id="viewer-help" aria-labelledby="viewer-help-h">' in body  # the keys, listed
    assert 'aria-haspopup="dialog">Keyboard shortcuts' in body
    assert 'class="skip-link" href="#content"' in body
