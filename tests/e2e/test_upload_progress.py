"""A data manager uploads a new visit's series from the patient timeline and follows the real pipeline
job (embedded mode: the demo UNETR runs in the server's background worker thread) on the progress bar
until it ends; the timeline then lists the new series. Screenshot in test-artifacts/."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk

from tests.dashboard.world import ORIGIN_MM, SIZE_XYZ, SPACING_MM, _sphere, build_world
from tests.e2e.conftest import ARTIFACTS
from tests.factories import make_timepoint
from trials.models import ProcessingJob

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def upload_world(transactional_db: None, settings: Any, tmp_path: Path) -> Any:
    from trials.views.imaging import clear_cache

    settings.MEDIA_ROOT = tmp_path / "media"
    settings.MEDIA_ROOT.mkdir()
    settings.SESSION_COOKIE_SECURE = False
    settings.CSRF_COOKIE_SECURE = False
    settings.CELERY_BROKER_URL = ""
    settings.CELERY_EMBEDDED = True
    clear_cache()
    world = build_world(settings.MEDIA_ROOT)
    world.fu2 = make_timepoint(world.patient, visit_label="FU2", scan_date=dt.date(2024, 5, 10))
    return world


def _nifti(path: Path) -> Path:
    rng = np.random.default_rng(5)
    volume = (100 + rng.normal(0, 4, SIZE_XYZ[::-1])).astype(np.float32)
    volume[_sphere((20, 20, 16), 8.0)] = 300
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing(SPACING_MM)
    image.SetOrigin(ORIGIN_MM)
    sitk.WriteImage(image, str(path))
    return path


def test_upload_shows_live_job_progress(
    live_server: Any, upload_world: Any, page: Any, tmp_path: Path
) -> None:
    world = upload_world
    page.goto(f"{live_server.url}/accounts/login/?next=/patients/{world.patient.pk}/")
    page.get_by_label("User name").fill(world.data_manager.username)
    page.get_by_label("Password").fill(world.password)
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("heading", name=re.compile("Patient SUBJ-0001")).wait_for()
    form = page.locator(f'form.upload[data-timepoint-id="{world.fu2.pk}"]')
    form.get_by_label("Upload series (zip of DICOM or NIfTI)").set_input_files(
        str(_nifti(tmp_path / "fu2.nii.gz"))
    )
    # Every value the bar takes, recorded in the page: it must only move forward (the upload's share,
    # then the job's), not fall back to 0 when the job starts.
    page.evaluate(
        """timepoint => {
          window.barValues = [];
          const bar = document.querySelector(`form.upload[data-timepoint-id="${timepoint}"] progress`);
          new MutationObserver(() => window.barValues.push(Number(bar.value)))
            .observe(bar, {attributes: true, childList: true, characterData: true, subtree: true});
        }""",
        world.fu2.pk,
    )
    form.get_by_role("button", name="Upload", exact=True).click()
    status = form.locator(".upload-status")
    # The bar follows the job until it ends (succeeded: "Done", failed: the job's error message).
    page.wait_for_function(
        "el => /Done|failed|error|refused/i.test(el.textContent)",
        arg=status.element_handle(),
        timeout=150_000,
    )
    page.screenshot(path=str(ARTIFACTS / "06-upload-progress.png"), full_page=True)
    job = ProcessingJob.objects.get(
        kind="pipeline", correlation_id__isnull=False, object_id=world.fu2.series.get().pk
    )
    bar_value = int(form.locator("progress.upload-progress").get_attribute("value") or 0)
    values = page.evaluate("window.barValues")
    assert values and values == sorted(values), values
    if job.state == "succeeded":
        # The visit's row is replaced in place with its new results (no reload): it lists the series.
        row = page.locator(f"#visit-{world.fu2.pk}")
        row.locator(".upload-status", has_text="new results are shown").wait_for(timeout=30_000)
        assert row.locator('a[href$="#viewer"]').count() >= 1
        bar_value = int(form.locator("progress.upload-progress").get_attribute("value") or 0)
        assert "Done" in status.inner_text() and bar_value == 100
    else:  # the page must say why, in the job's words
        assert job.state == "failed" and job.error[:40] in status.inner_text()
