"""Actions on patients and their visits (data managers; radiologists set the clinical context in review).

A change of a visit that can alter a response (its date, baseline flag, steroid or clinical status;
rano-bm.md section 6) re-assesses the patient in the same transaction.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction

from trials.audit import new_correlation_id
from trials.models import Patient, Site, Timepoint, Trial
from trials.pipeline.assessment import reassess_patient
from trials.records.base import check_same_trial, create_row, update_row
from trials.records.visits import update_timepoint

PATIENT_EDITABLE_FIELDS = ("site", "subject_id", "enrolment_date", "treatment_start_date")


@transaction.atomic
def create_patient(
    trial: Trial,
    *,
    site: Site,
    subject_id: str,
    enrolment_date: Any = None,
    treatment_start_date: Any = None,
    actor: Any | None,
    reason: str = "",
    correlation_id: str = "",
) -> Patient:
    """Enrol a patient under a pseudonymous subject id (never a name).

    Raises:
        DuplicateError: the subject id exists in the trial.
        InvalidInputError: the site belongs to another trial, or a field is invalid.
    """
    check_same_trial(trial, site)
    return create_row(
        Patient,
        actor=actor,
        reason=reason,
        correlation_id=correlation_id,
        trial=trial,
        site=site,
        subject_id=subject_id,
        enrolment_date=enrolment_date,
        treatment_start_date=treatment_start_date,
    )


@transaction.atomic
def update_patient(
    patient: Patient, *, actor: Any | None, reason: str = "", correlation_id: str = "", **changes: Any
) -> Patient:
    """Change a patient's site, subject id or dates."""
    if "site" in changes:
        check_same_trial(patient.trial, changes["site"])
    return update_row(
        patient,
        changes,
        allowed=PATIENT_EDITABLE_FIELDS,
        actor=actor,
        reason=reason,
        correlation_id=correlation_id,
    )


@transaction.atomic
def create_timepoint(
    patient: Patient,
    *,
    visit_label: str,
    scan_date: Any,
    is_baseline: bool = False,
    corticosteroid_status: str = "none",
    clinical_status: str = "stable",
    notes: str = "",
    actor: Any | None,
    reason: str = "",
    correlation_id: str = "",
) -> Timepoint:
    """Add a visit to a patient.

    Raises:
        DuplicateError: the visit label exists for the patient, or a second baseline.
        InvalidInputError: invalid status or date.
    """
    return create_row(
        Timepoint,
        actor=actor,
        reason=reason,
        correlation_id=correlation_id,
        patient=patient,
        visit_label=visit_label,
        scan_date=scan_date,
        is_baseline=is_baseline,
        corticosteroid_status=corticosteroid_status,
        clinical_status=clinical_status,
        notes=notes,
    )


@transaction.atomic
def edit_timepoint(
    timepoint: Timepoint, *, actor: Any, reason: str = "", correlation_id: str = "", **changes: Any
) -> Timepoint:
    """Change a visit's fields; re-assess the patient when the change can alter a response (any field
    but ``notes``).

    Raises:
        InvalidInputError: a field that cannot be set, an invalid value, or a date that breaks the order
            of the baseline and follow-ups.
        DuplicateError: the visit label exists for the patient, or a second baseline.
    """
    correlation_id = correlation_id or new_correlation_id()
    before = {name: getattr(timepoint, name) for name in changes}
    update_timepoint(timepoint, actor=actor, reason=reason, correlation_id=correlation_id, **changes)
    if any(name != "notes" and getattr(timepoint, name) != value for name, value in before.items()):
        reassess_patient(
            timepoint.patient, from_timepoint=timepoint, actor=actor, reason=reason,
            correlation_id=correlation_id, edited=True
        )  # fmt: skip
    return timepoint


__all__ = [
    "PATIENT_EDITABLE_FIELDS",
    "create_patient",
    "create_timepoint",
    "edit_timepoint",
    "update_patient",
]
