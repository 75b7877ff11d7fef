"""The RANO-BM report of a visit: the printable page, and the PDF from the dashboard and the API, read
back by an independent reader (pypdf); key images checked pixel by pixel; downloads audited."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from django.utils.html import escape
from PIL import Image
from pypdf import PdfReader
from rest_framework.test import APIClient

from tests.dashboard.world import World
from tests.factories import make_member, make_trial
from trials.choices import MembershipRole
from trials.models import Assessment, AuditEvent, LesionObservation
from trials.views.report import LD_COLOUR, ZOOM, build_visit_report

pytestmark = pytest.mark.django_db


def test_the_report_page_holds_response_reasons_lesions_images_and_provenance(
    client: Any, world: World
) -> None:
    client.force_login(world.investigator)
    page = client.get(f"/visits/{world.fu1.pk}/report/")
    assert page.status_code == 200
    body = page.content.decode()
    current = Assessment.objects.get(timepoint=world.fu1, criteria="rano_bm", is_current=True)
    assert f"RANO-BM report: {world.patient.subject_id}, FU1" in body
    assert f'title="{current.overall_response}"' in body
    for reason in current.reasons:
        assert escape(reason) in body
    for obs in LesionObservation.objects.filter(
        timepoint=world.fu1, present=True, lesion__is_false_positive=False
    ):
        assert f'<th scope="row">{obs.lesion.label}</th>' in body
        assert f"{obs.longest_diameter_mm:.1f}" in body
    assert body.count('src="data:image/png;base64,') >= 2  # L1 and L2 on their LD slices
    assert "model unetr-demo" in body and "not signed: pending review" in body
    assert client.get(f"/visits/{world.fu1.pk}/").content.decode().count("report/") >= 1  # linked


def test_key_images_show_the_lesion_on_its_ld_slice_with_the_red_caliper(world: World) -> None:
    report = build_visit_report(world.fu1)
    by_label = {image.label: image for image in report.images}
    assert set(by_label) >= {"L1", "L2"}
    obs = LesionObservation.objects.get(timepoint=world.fu1, lesion__label="L1")
    pixels = np.asarray(Image.open(io.BytesIO(by_label["L1"].png)).convert("RGB"))
    red = np.all(pixels == LD_COLOUR, axis=-1)
    # The caliper is drawn along the LD: its red pixels span about LD / pixel size (x ZOOM) in the image.
    ys, xs = np.nonzero(red)
    spacing = world.fu1.series.first().spacing_mm[0]
    extent = np.hypot(xs.max() - xs.min(), ys.max() - ys.min()) / ZOOM * spacing
    assert extent == pytest.approx(obs.longest_diameter_mm, abs=2 * spacing)


def test_the_pdf_from_the_dashboard_and_the_api_reads_back_and_is_audited(client: Any, world: World) -> None:
    client.force_login(world.investigator)
    response = client.get(f"/visits/{world.fu1.pk}/report.pdf")
    assert response.status_code == 200 and response["Content-Type"] == "application/pdf"
    assert f"rano-bm-report-{world.patient.subject_id}-FU1.pdf" in response["Content-Disposition"]
    reader = PdfReader(io.BytesIO(response.content))
    text = " ".join(page.extract_text() for page in reader.pages)
    current = Assessment.objects.get(timepoint=world.fu1, criteria="rano_bm", is_current=True)
    assert f"RANO-BM report: {world.patient.subject_id}, FU1" in text
    assert "Target lesions" in text and current.overall_response in text and "unetr-demo" in text
    images = sum(len(page.images) for page in reader.pages)
    assert images == len(build_visit_report(world.fu1).images) >= 2
    assert AuditEvent.objects.filter(
        action="download",
        object_type="trials.timepoint",
        object_id=str(world.fu1.pk),
        after={"file": "report.pdf"},
    ).exists()

    api = APIClient()
    api.force_authenticate(world.investigator)
    again = api.get(f"/api/v1/timepoints/{world.fu1.pk}/report/")
    assert again.status_code == 200 and again["Content-Type"] == "application/pdf"
    assert "Key images" in " ".join(p.extract_text() for p in PdfReader(io.BytesIO(again.content)).pages)


def test_another_trials_member_gets_no_report(client: Any, world: World) -> None:
    stranger = make_member(make_trial(), MembershipRole.INVESTIGATOR)
    client.force_login(stranger)
    assert client.get(f"/visits/{world.fu1.pk}/report/").status_code == 404
    assert client.get(f"/visits/{world.fu1.pk}/report.pdf").status_code == 404
    api = APIClient()
    api.force_authenticate(stranger)
    assert api.get(f"/api/v1/timepoints/{world.fu1.pk}/report/").status_code == 404
