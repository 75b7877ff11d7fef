"""The AI's own answer is kept as delivered: a response the rules engine re-computes after a reader's
edit is a separate result (source ``edited``), and the visit page, the patient timeline, visits.csv's
``ai_response`` and the quality page's AI-vs-reader agreement read the AI's answer, not the re-computed
one.

The course (rano-bm.md sections 3 and 6, by hand): one target of 20 mm at baseline, 12 mm at FU1, a 40 %
decrease, PR. A reader corrects FU1's diameter to 18 mm: a 10 % decrease, SD. The AI said PR; the reader's
final answer is SD.
"""

from __future__ import annotations

import datetime as dt
import importlib
from typing import Any

import pytest
from django.db import connection
from django.db.migrations.loader import MigrationLoader
from django.test import Client
from django.utils import timezone

from tests.factories import (
    DEFAULT_PASSWORD,
    make_job,
    make_member,
    make_model_version,
    make_run,
    make_series,
)
from tests.trials.test_api_edits_reassess import _observe, patient_with
from trials.actions import assessments as assessment_actions
from trials.actions import lesions as lesion_actions
from trials.choices import AssessmentSource, Criteria, MembershipRole
from trials.exports import ExportFilters
from trials.exports.ecrf import visit_rows
from trials.models import Assessment, AuditEvent, LesionObservation
from trials.pipeline import assessment
from trials.quality import agreement, awaiting_review

pytestmark = pytest.mark.django_db


def rano_rows(visit: Any) -> list[Assessment]:
    return list(Assessment.objects.filter(timepoint=visit, criteria=Criteria.RANO_BM).order_by("pk"))


def current(visit: Any) -> Assessment:
    return Assessment.objects.get(timepoint=visit, criteria=Criteria.RANO_BM, is_current=True)


@pytest.fixture
def corrected() -> tuple[Any, list[Any], Any]:
    """The course above, with the reader's correction of FU1 applied through the action."""
    patient, visits = patient_with({"L1": [20.0, 12.0]}, [0, 60])
    assert current(visits[1]).overall_response == "PR"
    reader = make_member(patient.trial, MembershipRole.RADIOLOGIST)
    observation = LesionObservation.objects.get(lesion__label="L1", timepoint=visits[1])
    lesion_actions.edit_observation(
        observation, actor=reader, reason="rim measured to its outer edge", longest_diameter_mm=18.0
    )
    return patient, visits, reader


def test_a_readers_edit_makes_a_separate_result_and_keeps_the_ai_answer(corrected: Any) -> None:
    _, visits, _ = corrected
    ai, edited = rano_rows(visits[1])
    assert (ai.source, ai.overall_response, ai.is_current) == (AssessmentSource.AI, "PR", False)
    assert (edited.source, edited.overall_response, edited.is_current) == (
        AssessmentSource.EDITED,
        "SD",
        True,
    )
    assert edited.supersedes_id == ai.pk
    # The baseline's sum did not change: its AI row stands.
    assert [(r.source, r.is_current) for r in rano_rows(visits[0])] == [(AssessmentSource.AI, True)]


def test_exports_and_quality_read_the_ai_answer_and_the_readers_final_one(corrected: Any) -> None:
    patient, visits, reader = corrected
    trial = patient.trial
    row = next(r for r in visit_rows(trial, ExportFilters()) if r["visit_label"] == "FU1")
    assert (row["ai_response"], row["final_response"]) == ("PR", None)  # not signed yet
    pending = awaiting_review(trial, today=dt.date(2030, 1, 1)).rows
    assert [(p.visit.visit_label, p.ai_response) for p in pending] == [("BASELINE", ""), ("FU1", "PR")]

    assessment_actions.confirm_assessment(current(visits[1]), actor=reader, password=DEFAULT_PASSWORD)

    row = next(r for r in visit_rows(trial, ExportFilters()) if r["visit_label"] == "FU1")
    assert (row["ai_response"], row["final_response"]) == ("PR", "SD")
    found = agreement(trial)
    assert found.pairs == 1 and found.confusion == {("PR", "SD"): 1} and found.percent_agreement == 0.0


def test_the_visit_and_patient_pages_show_the_ai_answer_beside_the_edited_result(corrected: Any) -> None:
    patient, visits, reader = corrected
    client = Client()
    client.force_login(reader)
    page = client.get(f"/visits/{visits[1].pk}/").content.decode()
    assert "Rules engine on edited data; the AI's answer: PR" in page
    timeline = client.get(f"/patients/{patient.pk}/").content.decode()
    assert "after edits, unsigned" in timeline


def test_the_pipeline_and_a_settings_change_keep_edits_as_edits_and_deliver_new_visits_as_ai(
    corrected: Any,
) -> None:
    patient, visits, _ = corrected
    trial = patient.trial
    trial.pr_threshold_pct = -5.0  # now the corrected 10 % decrease is a PR as well
    trial.save()
    assessment.reassess_patient(
        patient, from_timepoint=None, actor=None, reason="trial criteria settings changed", edited=False
    )
    latest = current(visits[1])
    assert (latest.source, latest.overall_response) == (AssessmentSource.EDITED, "PR")  # the edit holds

    fu2 = visits[1].patient.timepoints.create(visit_label="FU2", scan_date=dt.date(2024, 5, 1))
    _observe(patient.lesions.get(label="L1"), fu2, 17.0)
    assessment.reassess_patient(
        patient, from_timepoint=fu2, actor=None, reason="new imaging of FU2 analysed", edited=False
    )
    assert current(fu2).source == AssessmentSource.AI  # the AI's answer at a visit it delivers


def test_an_override_keeps_the_ai_answer_and_the_rows_record_their_model(corrected: Any) -> None:
    patient, visits, reader = corrected
    assessment_actions.override_assessment(
        current(visits[1]), overall_response="PD", actor=reader, password=DEFAULT_PASSWORD,
        reason="new lesion on FLAIR",
    )  # fmt: skip
    row = next(r for r in visit_rows(patient.trial, ExportFilters()) if r["visit_label"] == "FU1")
    assert (row["ai_response"], row["final_response"]) == ("PR", "PD")


def test_the_migration_relabels_rows_computed_after_an_edit(corrected: Any) -> None:
    """Rows stored before: all of source "ai". The migration relabels those whose creating event was no
    processing job's (a person's edit) and gives engine rows their visit's model."""
    _, visits, _ = corrected
    Assessment.objects.filter(source=AssessmentSource.EDITED).update(source=AssessmentSource.AI)
    ai, edited = rano_rows(visits[1])
    # The AI row was made by the pipeline: its creating event shares its correlation id with a job.
    created = AuditEvent.objects.get(object_type="trials.assessment", object_id=str(ai.pk), action="create")
    make_job(visits[1], correlation_id=created.correlation_id)
    baseline_created = AuditEvent.objects.get(
        object_type="trials.assessment", object_id=str(rano_rows(visits[0])[0].pk), action="create"
    )
    make_job(visits[0], correlation_id=baseline_created.correlation_id)
    model = make_model_version()
    make_run(make_series(visits[1]), model, status="succeeded", finished_at=timezone.now())
    migration = importlib.import_module("trials.migrations.0010_assessment_edited_source_model_version")
    state = MigrationLoader(connection).project_state(
        ("trials", "0010_assessment_edited_source_model_version")
    )
    with connection.schema_editor(atomic=False) as editor:
        migration.relabel(state.apps, editor)

    assert [r.source for r in rano_rows(visits[1])] == [AssessmentSource.AI, AssessmentSource.EDITED]
    assert [r.source for r in rano_rows(visits[0])] == [AssessmentSource.AI]
    assert {r.model_version_id for r in rano_rows(visits[1])} == {model.pk}
    assert [r.model_version_id for r in rano_rows(visits[0])] == [None]  # no run: no model to name
