"""Data-quality checks (trials.quality) and the data-management pages (trials.views_quality)."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from trials.quality import QualityInputError, agreement, quality_report

pytestmark = pytest.mark.django_db

TODAY = dt.date(2024, 7, 11)


def test_visits_missing_images_and_failed_jobs(world) -> None:
    report = quality_report(world.trial, today=TODAY)
    assert [(v.subject_id, v.visit_label) for v in report.missing_images.rows] == [("002", "FU1")]
    assert report.missing_images.total == 1
    [job] = report.failed_jobs.rows
    assert (job.job_id, job.kind, job.error) == (world.objects["job"].pk, "segment", "CUDA out of memory")


def test_assessments_awaiting_review(world) -> None:
    report = quality_report(world.trial, today=TODAY)
    pending = {(p.visit.subject_id, p.visit.visit_label): p for p in report.awaiting_review.rows}
    assert set(pending) == {("001", "BASELINE"), ("001", "FU3"), ("002", "BASELINE"), ("002", "FU1")}
    assert pending[("001", "FU3")].ai_response == "PD"
    assert pending[("001", "FU3")].waiting_days == 10  # created 2024-07-01 (pinned), today 2024-07-11


@pytest.mark.parametrize(
    ("today", "status_002"),
    [(dt.date(2024, 4, 10), "due"), (dt.date(2024, 4, 29), "overdue"), (TODAY, "overdue")],
)
def test_unconfirmed_responses_with_confirmation_due_dates(world, today: dt.date, status_002: str) -> None:
    rows = {
        u.visit.subject_id: u for u in quality_report(world.trial, today=today).unconfirmed_responses.rows
    }
    # 001 FU1 is confirmed; 001 FU2 (PR) is not, but 001 progressed at FU3 (PD): no confirmation is due
    # for it. 002 FU1 (PR) is unconfirmed: due at scan date + confirmation_days (28), 2024-04-01 + 28 d.
    assert set(rows) == {"002"}
    assert rows["002"].confirmation_due == dt.date(2024, 4, 29)
    assert rows["002"].status == status_002


def test_overrides_by_reader(world) -> None:
    [activity] = quality_report(world.trial, today=TODAY).overrides_by_reader
    assert (activity.reader, activity.confirmations, activity.overrides) == ("rad1", 1, 1)
    assert activity.override_rate == 0.5


def test_ai_vs_reader_kappa_against_hand_computation(world) -> None:
    result = agreement(world.trial)
    # Reviewed visits: FU1 AI PR / reader PR, FU2 AI SD / reader PR.
    # p_o = 1/2; marginals AI (PR 1, SD 1), reader (PR 2, SD 0): p_e = (1*2 + 1*0) / 4 = 1/2; kappa 0.
    assert result.pairs == 2
    assert result.percent_agreement == pytest.approx(50.0)
    assert result.kappa == pytest.approx(0.0, abs=1e-12)
    assert result.confusion == {("PR", "PR"): 1, ("SD", "PR"): 1}
    assert result.matrix() == (["PR", "SD"], [[1, 0], [1, 0]])


def test_limit_must_be_positive(world) -> None:
    with pytest.raises(QualityInputError, match="limit must be at least 1, got 0"):
        quality_report(world.trial, limit=0)


def test_sections_are_truncated_to_limit_with_full_totals(world) -> None:
    report = quality_report(world.trial, today=TODAY, limit=1)
    assert len(report.awaiting_review.rows) == 1 and report.awaiting_review.total == 4
    assert report.awaiting_review.truncated


def test_report_query_count_is_fixed(world) -> None:
    from bench.bench_exports import build_bulk_trial

    with CaptureQueriesContext(connection) as small:
        quality_report(world.trial, today=TODAY)
    bulk = build_bulk_trial("QUAL", 6)
    with CaptureQueriesContext(connection) as large:
        quality_report(bulk, today=TODAY)
    assert len(small) == len(large) <= 12


def page_client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_quality_page_for_data_manager(world) -> None:
    response = page_client(world.data_manager).get(f"/trials/{world.trial.pk}/quality/")
    assert response.status_code == 200
    html = response.content.decode()
    for text in ("CUDA out of memory", "2024-04-29", "overdue", "rad1", 'id="kappa">0.00<'):
        assert text in html, text


def test_exports_page_lists_every_download(world) -> None:
    response = page_client(world.admin).get(f"/trials/{world.trial.pk}/exports/")
    assert response.status_code == 200
    html = response.content.decode()
    for kind in ("visits", "lesions", "tu", "tr", "rs", "patients"):
        assert f'formaction="/trials/{world.trial.pk}/exports/{kind}.csv"' in html
    assert f'href="/trials/{world.trial.pk}/exports/dictionary.md"' in html


def test_the_export_page_downloads_and_shows_errors_on_the_page(world) -> None:
    client = page_client(world.data_manager)
    response = client.get(
        f"/trials/{world.trial.pk}/exports/visits.csv", {"site": "S01", "only_confirmed": "on"}
    )
    assert response.status_code == 200 and response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"] == 'attachment; filename="GOLD-BM_visits_site-S01_signed.csv"'
    bad = client.get(
        f"/trials/{world.trial.pk}/exports/visits.csv",
        {"site": "S01", "date_from": "2024-05-01", "date_to": "2024-01-01"},
    )
    html = bad.content.decode()
    assert bad.status_code == 400 and 'id="export-error"' in html and "is after date_to" in html
    assert 'value="2024-05-01"' in html and '<option value="S01" selected>' in html  # the filters kept
    unknown_site = client.get(f"/trials/{world.trial.pk}/exports/visits.csv", {"site": "NOPE"})
    assert unknown_site.status_code == 400 and "NOPE" in unknown_site.content.decode()
    dictionary = client.get(f"/trials/{world.trial.pk}/exports/dictionary.md")
    assert dictionary.status_code == 200 and "`ai_response`" in dictionary.content.decode()
    assert (
        page_client(world.investigator).get(f"/trials/{world.trial.pk}/exports/visits.csv").status_code == 403
    )


@pytest.mark.parametrize("page", ["quality", "exports"])
def test_pages_refuse_other_roles_and_non_members(world, page: str) -> None:
    from tests.factories import make_member, make_trial

    url = f"/trials/{world.trial.pk}/{page}/"
    assert page_client(world.reader).get(url).status_code == 403
    assert page_client(world.investigator).get(url).status_code == 403
    outsider = make_member(make_trial("ELSEWHERE"), "data_manager")
    assert page_client(outsider).get(url).status_code == 404
    assert Client().get(url).status_code == 302  # to the login page


@pytest.mark.django_db
def test_no_confirmation_is_due_for_a_response_the_patient_has_progressed_from() -> None:
    """20 -> 12 mm is a PR at FU1 (40 % decrease); 30 mm at FU2 is PD from the nadir: FU1's PR is never
    confirmed, and no confirmation scan is due for it (rano-bm.md section 7)."""
    from tests.trials.test_api_edits_reassess import patient_with
    from trials.quality import unconfirmed_responses

    patient, visits = patient_with({"L1": [20.0, 12.0, 30.0]}, [0, 60, 120])
    current = {
        v.visit_label: v.assessments.get(criteria="rano_bm", is_current=True).overall_response for v in visits
    }
    assert current == {"BASELINE": "", "FU1": "PR", "FU2": "PD"}
    assert unconfirmed_responses(patient.trial, today=dt.date(2030, 1, 1)).rows == []

    still_responding, _ = patient_with({"L1": [20.0, 12.0]}, [0, 60])
    rows = unconfirmed_responses(still_responding.trial, today=dt.date(2030, 1, 1)).rows
    assert [(r.visit.visit_label, r.response, r.status) for r in rows] == [("FU1", "PR", "overdue")]
