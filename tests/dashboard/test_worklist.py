"""The radiologists' worklist: visits awaiting review across the trials where the user reviews, the
oldest draft first, with the AI's answer and whether signing the visit changes the patient's response."""

from __future__ import annotations

import datetime as dt

import pytest
from django.test import Client

from tests.factories import DEFAULT_PASSWORD, make_member, make_membership, make_trial
from tests.trials.test_api_edits_reassess import _observe, current, patient_with
from trials.actions import assessments as assessment_actions
from trials.choices import MembershipRole
from trials.models import Assessment
from trials.pipeline import assessment
from trials.views.queries import worklist

pytestmark = pytest.mark.django_db

TODAY = dt.date(2030, 1, 1)


def test_the_worklist_lists_drafts_oldest_first_with_what_they_change() -> None:
    trial = make_trial()
    responding, (bl, fu1) = patient_with({"L1": [20.0, 12.0]}, [0, 60], trial=trial)
    progressing, (bl2, fu1b) = patient_with({"L1": [20.0, 30.0]}, [0, 60], trial=trial)
    reader = make_member(trial, MembershipRole.RADIOLOGIST)
    for visit in (bl, bl2):
        assessment_actions.confirm_assessment(current(visit), actor=reader, password=DEFAULT_PASSWORD)

    rows = worklist([trial.pk], today=TODAY)
    assert [
        (r.assessment.timepoint, r.ai_response, r.previous_response, r.changes_response) for r in rows
    ] == [
        (fu1, "PR", "", True),
        (fu1b, "PD", "", True),
    ]
    assert all(r.waiting_days > 0 for r in rows)

    # FU1's PR signed; FU2 keeps it (12 mm again): signing FU2 changes nothing.
    assessment_actions.confirm_assessment(current(fu1), actor=reader, password=DEFAULT_PASSWORD)
    fu2 = responding.timepoints.create(visit_label="FU2", scan_date=fu1.scan_date + dt.timedelta(days=60))
    _observe(responding.lesions.get(label="L1"), fu2, 12.0)
    assessment.reassess_patient(responding, from_timepoint=fu2, actor=None, edited=False)
    listed = worklist([trial.pk], today=TODAY)
    rows = {r.assessment.timepoint: r for r in listed}
    # FU1 is back too: FU2 confirms its PR, a new draft for the reader (rano-bm.md section 7).
    assert set(rows) == {fu1, fu1b, fu2} and rows[fu1].assessment.confirmed
    assert (rows[fu2].assessment.overall_response, rows[fu2].previous_response) == ("PR", "PR")
    assert not rows[fu2].changes_response
    created = [r.assessment.created_at for r in listed]
    assert created == sorted(created) and listed[0].assessment.timepoint == fu1b  # oldest draft first


def test_the_page_shows_only_trials_where_the_user_reviews() -> None:
    reviewed, read_only = make_trial(), make_trial()
    mine, _ = patient_with({"L1": [20.0, 12.0]}, [0, 60], trial=reviewed)
    theirs, _ = patient_with({"L1": [20.0, 30.0]}, [0, 60], trial=read_only)
    reader = make_member(reviewed, MembershipRole.RADIOLOGIST)
    make_membership(reader, read_only, MembershipRole.INVESTIGATOR)
    client = Client()
    client.force_login(reader)
    page = client.get("/worklist/").content.decode()
    assert mine.subject_id in page and theirs.subject_id not in page
    assert (
        page.count("<tr>")
        == 1
        + Assessment.objects.filter(
            timepoint__patient=mine, is_current=True, status="draft", criteria="rano_bm"
        ).count()
    )

    investigator = make_member(read_only, MembershipRole.INVESTIGATOR)
    client.force_login(investigator)
    assert "You review in no trial" in client.get("/worklist/").content.decode()
