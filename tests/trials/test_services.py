"""Services: each state change writes its AuditEvent in the same transaction; bad input raises a
specific exception with a clear message; follow-up work runs only after commit."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import transaction

from tests.factories import (
    make_assessment,
    make_lesion,
    make_member,
    make_model_version,
    make_observation,
    make_patient,
    make_run,
    make_series,
    make_site,
    make_timepoint,
    make_trial,
    make_user,
)
from trials.actions import patients
from trials.actions import trials as trial_actions
from trials.choices import (
    AssessmentSource,
    AssessmentStatus,
    JobState,
    LesionRole,
    MembershipRole,
    ObservationSource,
    SignatureMeaning,
)
from trials.exceptions import DuplicateError, InvalidInputError, InvalidStateError
from trials.models import Assessment, AuditEvent, Patient, ProcessingJob
from trials.records import assessments as assessment_records
from trials.records import base as records_base
from trials.records import imaging as imaging_records
from trials.records import jobs as job_records
from trials.records import lesions as lesion_records
from trials.records import visits

pytestmark = pytest.mark.django_db


def _events(obj) -> list[AuditEvent]:
    return list(
        AuditEvent.objects.filter(object_type=obj._meta.label_lower, object_id=str(obj.pk)).order_by("id")
    )


def test_create_writes_audit_event_with_actor_name_copy_reason_and_correlation_id() -> None:
    user = make_user("ann")
    trial = make_trial()
    site = make_site(trial)
    patient = patients.create_patient(
        trial, site=site, subject_id="P-1", actor=user, reason="screened", correlation_id="req-42"
    )
    (event,) = _events(patient)
    assert (event.actor, event.actor_name, event.action) == (user, "ann", "create")
    assert (event.reason, event.correlation_id, event.trial) == ("screened", "req-42", trial)
    assert event.before is None
    assert event.after["subject_id"] == "P-1"
    assert event.after["site_id"] == site.pk
    assert event.object_repr == "P-1"


def test_update_records_only_changed_fields_before_and_after() -> None:
    tp = make_timepoint(visit_label="FU1", scan_date=dt.date(2024, 3, 1))
    visits.update_timepoint(tp, scan_date=dt.date(2024, 3, 4), notes="", actor=None, reason="typo")
    update = _events(tp)[-1]
    assert update.action == "update"
    assert update.before == {"scan_date": "2024-03-01"}
    assert update.after == {"scan_date": "2024-03-04"}
    assert update.actor is None and update.actor_name == "system"


def test_update_without_change_writes_no_event() -> None:
    tp = make_timepoint(visit_label="FU1")
    visits.update_timepoint(tp, visit_label="FU1", actor=None)
    assert [e.action for e in _events(tp)] == ["create"]


def test_empty_correlation_id_gets_a_generated_one() -> None:
    trial = make_trial()
    (event,) = _events(trial)
    assert len(event.correlation_id) == 32


def test_change_and_audit_event_roll_back_together() -> None:
    trial = make_trial()
    site = make_site(trial)
    before = AuditEvent.objects.count()
    with pytest.raises(RuntimeError), transaction.atomic():
        patients.create_patient(trial, site=site, subject_id="P-9", actor=None)
        raise RuntimeError("the request fails after the service call")
    assert not Patient.objects.filter(subject_id="P-9").exists()
    assert AuditEvent.objects.count() == before


@pytest.mark.parametrize(
    ("make_duplicate", "message"),
    [
        (
            lambda p: patients.create_patient(p.trial, site=p.site, subject_id=p.subject_id, actor=None),
            "A patient with this subject id already exists in this trial.",
        ),
        (
            lambda p: patients.create_timepoint(
                p, visit_label="FU1", scan_date=dt.date(2024, 9, 1), actor=None
            ),
            "This patient already has a visit with this label.",
        ),
        (
            lambda p: patients.create_timepoint(
                p, visit_label="BL-again", scan_date=dt.date(2024, 9, 1), is_baseline=True, actor=None
            ),
            "This patient already has a baseline visit.",
        ),
        (
            lambda p: lesion_records.create_lesion(p, label="L1", actor=None),
            "This patient already has a lesion with this label.",
        ),
        (
            lambda p: imaging_records.register_series(
                p.timepoints.get(visit_label="FU1"), series_instance_uid="1.2.3", actor=None
            ),
            "A series with this Series Instance UID already exists.",
        ),
    ],
    ids=["subject_id", "visit_label", "baseline", "lesion_label", "series_uid"],
)
def test_duplicates_raise_duplicate_error_with_clear_message(make_duplicate, message: str) -> None:
    patient = make_patient()
    make_timepoint(patient, visit_label="BASELINE", is_baseline=True)
    fu1 = make_timepoint(patient, visit_label="FU1")
    make_lesion(patient, label="L1")
    make_series(fu1, series_instance_uid="1.2.3")
    events_before = AuditEvent.objects.count()
    with pytest.raises(DuplicateError) as info:
        make_duplicate(patient)
    assert message in str(info.value)
    assert AuditEvent.objects.count() == events_before


def test_segmentation_run_duplicate_for_same_model_version() -> None:
    series = make_series()
    model = make_model_version()
    imaging_records.create_segmentation_run(series, model, actor=None)
    with pytest.raises(DuplicateError, match="already been segmented with this model version"):
        imaging_records.create_segmentation_run(series, model, actor=None)


def test_invalid_values_raise_invalid_input_with_field_errors() -> None:
    patient = make_patient()
    with pytest.raises(InvalidInputError) as info:
        patients.create_timepoint(
            patient,
            visit_label="FU1",
            scan_date=dt.date(2024, 1, 1),
            corticosteroid_status="lots",
            actor=None,
        )
    assert "corticosteroid_status" in info.value.field_errors
    with pytest.raises(InvalidInputError, match="cannot be set"):
        patients.update_patient(patient, trial=make_trial(), actor=None)
    with pytest.raises(InvalidInputError, match="cannot be set"):
        trial_actions.create_trial(code="Z", title="z", max_target=3, actor=None)


def test_site_of_another_trial_is_rejected() -> None:
    trial, other = make_trial(), make_trial()
    with pytest.raises(InvalidInputError, match="belongs to another trial"):
        patients.create_patient(trial, site=make_site(other), subject_id="X", actor=None)


def test_observation_must_be_of_the_lesions_patient_and_caliper_must_be_two_points() -> None:
    lesion = make_lesion()
    with pytest.raises(InvalidInputError, match="different patients"):
        lesion_records.record_observation(lesion, make_timepoint(), actor=None)
    tp = make_timepoint(lesion.patient)
    with pytest.raises(InvalidInputError, match="two physical points"):
        lesion_records.record_observation(lesion, tp, caliper_points_mm=[[0, 0, 0]], actor=None)
    obs = lesion_records.record_observation(
        lesion, tp, caliper_points_mm=[[0, 0, 0], [12, 0.5, 3]], actor=None
    )
    assert obs.caliper_points_mm == [[0.0, 0.0, 0.0], [12.0, 0.5, 3.0]]
    foreign_run = make_run(make_series(make_timepoint(lesion.patient)))
    with pytest.raises(InvalidInputError, match="run is of another visit"):
        lesion_records.record_observation(
            make_lesion(lesion.patient), tp, segmentation_run=foreign_run, actor=None
        )
    with pytest.raises(InvalidInputError, match="run is of another visit"):
        lesion_records.update_observation(obs, segmentation_run=foreign_run, actor=None)


def test_lesion_labels_are_allocated_in_order_and_never_reused() -> None:
    patient = make_patient()
    labels = [lesion_records.create_lesion(patient, actor=None).label for _ in range(3)]
    assert labels == ["L1", "L2", "L3"]
    lesion_records.create_lesion(patient, label="L10", actor=None)
    assert lesion_records.create_lesion(patient, actor=None).label == "L11"


def test_reader_role_change_is_marked_and_edit_of_ai_observation_becomes_edited() -> None:
    reader = make_user()
    lesion = make_lesion()
    lesion_records.update_lesion(lesion, role=LesionRole.TARGET, actor=reader, reason="larger than L2")
    lesion.refresh_from_db()
    assert lesion.role == LesionRole.TARGET and lesion.role_set_by_reader
    obs = make_observation(lesion, make_timepoint(lesion.patient), longest_diameter_mm=11.0)
    assert obs.source == ObservationSource.AI
    lesion_records.update_observation(
        obs, longest_diameter_mm=13.5, actor=reader, reason="caliper on true edge"
    )
    obs.refresh_from_db()
    assert (obs.source, obs.longest_diameter_mm) == (ObservationSource.EDITED, 13.5)
    assert obs.history.earliest().longest_diameter_mm == 11.0


def test_new_assessment_supersedes_the_current_one_and_stores_settings() -> None:
    tp = make_timepoint(make_patient(make_trial(max_targets=2)))
    first = make_assessment(tp, overall_response="SD")
    second = make_assessment(tp, overall_response="PR")
    first.refresh_from_db()
    assert not first.is_current and second.is_current and second.supersedes == first
    assert second.settings["max_targets"] == 2
    assert Assessment.objects.filter(timepoint=tp, is_current=True).count() == 1


def test_confirm_signs_and_cannot_be_repeated_or_done_by_the_system() -> None:
    reader = make_user("rad")
    assessment = make_assessment()
    with pytest.raises(InvalidInputError, match="signed-in user"):
        assessment_records.record_confirmation(assessment, actor=None)
    confirmed = assessment_records.record_confirmation(assessment, actor=reader, reason="agree")
    assert confirmed.status == AssessmentStatus.CONFIRMED
    assert confirmed.signed_by == reader and confirmed.signed_at is not None
    assert confirmed.signature_meaning == SignatureMeaning.REVIEWED_AND_CONFIRMED
    assert _events(confirmed)[-1].action == "confirm"
    with pytest.raises(InvalidStateError, match="already confirmed"):
        assessment_records.record_confirmation(confirmed, actor=reader)


def test_override_creates_signed_superseding_assessment_and_needs_a_reason() -> None:
    reader = make_user("rad")
    old = make_assessment(overall_response="SD", target_response="SD")
    with pytest.raises(InvalidInputError, match="needs a reason"):
        assessment_records.record_override(old, overall_response="PD", reason=" ", actor=reader)
    with pytest.raises(InvalidInputError, match="Unknown response"):
        assessment_records.record_override(old, overall_response="MAYBE", reason="x", actor=reader)
    new = assessment_records.record_override(
        old, overall_response="PD", reason="new lesion in cerebellum", actor=reader
    )
    old.refresh_from_db()
    assert (new.overall_response, new.target_response) == ("PD", "SD")
    assert (new.status, new.source) == (AssessmentStatus.OVERRIDDEN, AssessmentSource.RADIOLOGIST)
    assert new.supersedes == old and new.is_current and not old.is_current
    assert new.signed_by == reader
    event = _events(new)[-1]
    assert event.action == "override" and event.before["overall_response"] == "SD"
    assert event.reason == "new lesion in cerebellum"
    with pytest.raises(InvalidStateError, match="superseded"):
        assessment_records.record_confirmation(old, actor=reader)


def test_membership_add_duplicate_and_remove_are_audited() -> None:
    trial = make_trial()
    user = make_member(trial, MembershipRole.RADIOLOGIST)
    with pytest.raises(DuplicateError, match="already has this role"):
        trial_actions.add_membership(trial, user=user, role=MembershipRole.RADIOLOGIST, actor=None)
    membership = trial.memberships.get(user=user)
    pk = membership.pk
    trial_actions.remove_membership(membership, actor=None, reason="left the study")
    assert not trial.memberships.filter(user=user).exists()
    event = AuditEvent.objects.get(object_type="trials.trialmembership", object_id=str(pk), action="delete")
    assert event.before["role"] == "radiologist" and event.reason == "left the study"


def test_job_is_enqueued_only_after_commit(django_capture_on_commit_callbacks) -> None:
    series = make_series()
    enqueued: list[int] = []
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        job = job_records.create_job(
            "segment", obj=series, actor=None, enqueue=lambda j: enqueued.append(j.pk)
        )
        assert enqueued == []  # not before commit
    assert len(callbacks) == 1
    callbacks[0]()
    assert enqueued == [job.pk]
    assert job.trial == series.timepoint.patient.trial
    assert job.content_object == series


def test_job_lifecycle_counts_attempts_and_audits_outcome() -> None:
    job = job_records.create_job("assess", obj=make_patient(), actor=None)
    job_records.record_dispatch(job, "abc")
    job = job_records.start_job(job)
    assert job.celery_task_id == "abc" and job.heartbeat_at is not None
    job_records.update_job_progress(job, progress_pct=40, stage="measuring")
    job.refresh_from_db()
    assert (job.state, job.attempts, job.progress_pct, job.stage) == (JobState.RUNNING, 1, 40, "measuring")
    with pytest.raises(InvalidInputError, match="0-100"):
        job_records.update_job_progress(job, progress_pct=140)
    job_records.fail_job(job, error="Series has no StudyTime (0008,0030)")
    job = job_records.start_job(job)
    assert job.attempts == 2 and job.error == ""
    job = job_records.finish_job(job, result={"lesions": 3})
    assert (job.state, job.progress_pct, job.result) == (JobState.SUCCEEDED, 100, {"lesions": 3})
    assert job.duration_s is not None and job.duration_s >= 0
    actions = [e.action for e in _events(job)]
    assert actions == ["enqueue", "fail", "finish"]
    with pytest.raises(InvalidInputError, match="Unknown job kind"):
        job_records.create_job("dance", actor=None)
    assert ProcessingJob.objects.count() == 1


def _sql(queries) -> list[str]:
    return [q["sql"] for q in queries.captured_queries]


def test_foreign_keys_given_as_loaded_objects_are_not_looked_up_again() -> None:
    """Validation looks a foreign key up only when it is given as a bare id (or an unsaved object)."""
    from django.core.exceptions import ValidationError
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from trials.models import Lesion

    patient = make_patient()
    with CaptureQueriesContext(connection) as loaded:
        records_base.full_clean(Lesion(patient=patient, label="L1"))
    assert not [sql for sql in _sql(loaded) if 'FROM "trials_patient"' in sql]
    with CaptureQueriesContext(connection) as by_id:
        records_base.full_clean(Lesion(patient_id=patient.pk, label="L1"))
    assert [sql for sql in _sql(by_id) if 'FROM "trials_patient"' in sql]
    with pytest.raises(ValidationError) as info:
        records_base.full_clean(Lesion(patient_id=patient.pk + 1000, label="L1"))
    assert "patient" in info.value.error_dict


def test_uniqueness_is_still_validated_before_the_insert_with_loaded_objects() -> None:
    """Skipping the lookups of loaded keys keeps every uniqueness rule: no INSERT is even tried."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    patient = make_patient()
    timepoint = make_timepoint(patient, visit_label="BASELINE", is_baseline=True)
    lesion = make_lesion(patient)
    make_observation(lesion, timepoint)
    with CaptureQueriesContext(connection) as queries, pytest.raises(DuplicateError) as info:
        lesion_records.record_observation(lesion, timepoint, actor=None, longest_diameter_mm=10.0)
    assert info.value.field_errors  # found by validation, named by field
    assert not [sql for sql in _sql(queries) if sql.startswith('INSERT INTO "trials_lesionobservation"')]


def test_update_locks_the_row_once_and_keeps_the_loaded_relations() -> None:
    """An update reads the row again under a lock (one query) and its audit event finds the trial
    through the objects the caller loaded, not by walking the relations again."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from trials.models import Lesion

    patient = make_patient()
    lesion = Lesion.objects.select_related("patient__trial").get(pk=make_lesion(patient).pk)
    with CaptureQueriesContext(connection) as queries:
        lesion_records.update_lesion(lesion, role=LesionRole.TARGET, actor=None, reason="protocol")
    sql = _sql(queries)
    # One lock of the row (the audit chain's head lock is the audit trail's own, trials.audit).
    row_locks = [s for s in sql if s.startswith("SELECT") and "FOR UPDATE" in s and "auditchainhead" not in s]
    assert len(row_locks) == 1
    assert not [s for s in sql if 'FROM "trials_patient"' in s or 'FROM "trials_trial"' in s]
    (event,) = [e for e in _events(lesion) if e.action == "update"]
    assert event.trial == patient.trial
    assert event.after == {"role": LesionRole.TARGET}
    lesion.refresh_from_db()
    assert lesion.role == LesionRole.TARGET


def test_an_update_validates_the_uniqueness_rules_its_change_takes_part_in() -> None:
    """A rule over a changed field, or over a field its condition names, is checked before the UPDATE."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    patient = make_patient()
    make_timepoint(patient, visit_label="BASELINE", is_baseline=True)
    fu1 = make_timepoint(patient, visit_label="FU1")
    for changes, message in (
        ({"visit_label": "BASELINE"}, "visit"),
        ({"is_baseline": True}, "already has a baseline"),  # the field is in the rule's condition only
    ):
        with (
            CaptureQueriesContext(connection) as queries,
            pytest.raises(DuplicateError, match=message) as info,
        ):
            visits.update_timepoint(fu1, actor=None, reason="typo", **changes)
        assert info.value.field_errors
        assert not [sql for sql in _sql(queries) if sql.startswith('UPDATE "trials_timepoint"')]


def test_an_update_does_not_recheck_rules_over_fields_it_leaves_alone() -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    patient = make_patient()
    lesion = make_lesion(patient)
    with CaptureQueriesContext(connection) as queries:
        lesion_records.update_lesion(lesion, role=LesionRole.TARGET, actor=None, reason="protocol")
    # the label uniqueness rule (patient, label) is not queried: neither field changed
    assert not [sql for sql in _sql(queries) if 'AS "a" FROM "trials_lesion"' in sql]
