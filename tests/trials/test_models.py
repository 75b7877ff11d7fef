"""Data model: criteria defaults (rano-bm.md section 9) and database-level uniqueness constraints.

The constraint tests insert with ``objects.create`` (bypassing services) to prove the database itself
refuses duplicates, whatever code path writes.
"""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import IntegrityError, transaction

from rano.settings import ResponseSettings
from tests.factories import (
    make_lesion,
    make_model_version,
    make_patient,
    make_series,
    make_timepoint,
    make_trial,
)
from trials.exceptions import InvalidInputError
from trials.models import ImagingSeries, Lesion, LesionObservation, Patient, SegmentationRun, Timepoint, Trial

pytestmark = pytest.mark.django_db

# rano-bm.md section 9, transcribed by hand (the oracle): percentages as signed percent of change,
# keys as the spec names them.
SECTION_9_DEFAULTS = {
    "max_targets": 5,
    "measurable_min_ld_mm": 10.0,
    "min_lesion_volume_mm3": 5.0,
    "too_small_mm": 5.0,
    "new_lesion_min_ld_mm": 5.0,
    "confirmation_days": 28,
    "min_sd_days": 42,
    "pr_threshold": -30.0,
    "pd_threshold": 20.0,
    "pd_min_lesion_increase_mm": 5.0,
    "vol_pr_threshold": -65.0,
    "vol_pd_threshold": 73.0,
    "immunotherapy": False,
}


def test_trial_criteria_settings_default_to_rano_bm_section_9() -> None:
    trial = Trial.objects.create(code="X", title="x")
    assert trial.criteria_settings() == SECTION_9_DEFAULTS


def test_trial_criteria_settings_reflect_protocol_changes() -> None:
    trial = make_trial(max_targets=3, immunotherapy=True, pr_threshold_pct=-50.0)
    settings = trial.criteria_settings()
    assert settings["max_targets"] == 3
    assert settings["immunotherapy"] is True
    assert settings["pr_threshold"] == -50.0
    assert settings["min_sd_days"] == 42


def test_trial_criteria_settings_build_the_rules_engine_settings() -> None:
    trial = make_trial(max_targets=3, pd_threshold_pct=25.0)
    engine = ResponseSettings.from_dict(trial.criteria_settings())
    assert (engine.max_targets, engine.pd_threshold, engine.pr_threshold) == (3, 25.0, -30.0)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"pr_threshold_pct": 10.0}, "pr_threshold"),
        ({"pd_threshold_pct": 0.0}, "pd_threshold"),
        ({"measurable_min_ld_mm": 0.0}, "measurable_min_ld_mm"),
    ],
)
def test_settings_the_engine_rejects_are_invalid_input(settings: dict, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        make_trial(**settings)


def _raises_integrity(create) -> None:
    with pytest.raises(IntegrityError), transaction.atomic():
        create()


def test_subject_id_unique_per_trial_but_reusable_in_another_trial() -> None:
    patient = make_patient(subject_id="001")
    _raises_integrity(
        lambda: Patient.objects.create(trial=patient.trial, site=patient.site, subject_id="001")
    )
    other = make_patient(subject_id="001")  # another trial: allowed
    assert other.trial_id != patient.trial_id


def test_visit_label_unique_per_patient() -> None:
    tp = make_timepoint(visit_label="FU1")
    _raises_integrity(
        lambda: Timepoint.objects.create(patient=tp.patient, visit_label="FU1", scan_date=dt.date(2024, 5, 1))
    )
    make_timepoint(visit_label="FU1")  # another patient: allowed


def test_one_baseline_per_patient_but_many_follow_ups() -> None:
    tp = make_timepoint(is_baseline=True)
    _raises_integrity(
        lambda: Timepoint.objects.create(
            patient=tp.patient, visit_label="BL2", scan_date=dt.date(2024, 5, 1), is_baseline=True
        )
    )
    Timepoint.objects.create(patient=tp.patient, visit_label="FU1", scan_date=dt.date(2024, 3, 1))
    Timepoint.objects.create(patient=tp.patient, visit_label="FU2", scan_date=dt.date(2024, 5, 1))
    assert tp.patient.timepoints.count() == 3


def test_series_instance_uid_unique_across_database() -> None:
    series = make_series(series_instance_uid="1.2.3.4")
    other_visit = make_timepoint()
    _raises_integrity(
        lambda: ImagingSeries.objects.create(timepoint=other_visit, series_instance_uid="1.2.3.4")
    )
    assert series.pk


def test_lesion_label_unique_per_patient() -> None:
    lesion = make_lesion(label="L1")
    _raises_integrity(lambda: Lesion.objects.create(patient=lesion.patient, label="L1"))


def test_segmentation_run_unique_per_series_and_model_version() -> None:
    series = make_series()
    model = make_model_version()
    SegmentationRun.objects.create(
        series=series, model_version=model, model_weights_sha256=model.weights_sha256
    )
    _raises_integrity(
        lambda: SegmentationRun.objects.create(
            series=series, model_version=model, model_weights_sha256=model.weights_sha256
        )
    )
    # Another model version (other weights, or the same weights with another config) on the same series.
    other = make_model_version()
    SegmentationRun.objects.create(
        series=series, model_version=other, model_weights_sha256=other.weights_sha256
    )


def test_one_observation_per_lesion_and_visit() -> None:
    lesion = make_lesion()
    tp = make_timepoint(lesion.patient)
    LesionObservation.objects.create(lesion=lesion, timepoint=tp)
    _raises_integrity(lambda: LesionObservation.objects.create(lesion=lesion, timepoint=tp))


def test_clinical_tables_keep_row_history() -> None:
    tp = make_timepoint(visit_label="FU1")
    tp.notes = "re-read"
    tp.save()
    assert tp.history.count() == 2
    assert tp.history.earliest().notes == ""
