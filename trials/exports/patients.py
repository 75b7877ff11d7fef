"""Per-patient CSV: best overall response, first response, duration of response, progression date and
CNS progression-free time, read from the stored current RANO-BM assessments (the engine computes BOR,
confirmation and the backdated progression date; nothing is re-derived here).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

from trials.choices import ResponseChoices
from trials.exports import queries
from trials.exports.columns import DATE, FLAG, INTEGER, TEXT, Column, Dataset
from trials.exports.common import reference_date, usubjid
from trials.exports.filters import ExportFilters
from trials.models import Trial

_RESPONDER = (ResponseChoices.CR, ResponseChoices.PR)

PATIENT_COLUMNS: tuple[Column, ...] = (
    Column("trial_code", TEXT, "Trial (protocol) code."),
    Column("site_code", TEXT, "Site code within the trial."),
    Column("subject_id", TEXT, "Pseudonymous subject id, unique within the trial."),
    Column("usubjid", TEXT, "SDTM unique subject id (trial code-site code-subject id)."),
    Column("enrolment_date", DATE, "Enrolment date."),
    Column("treatment_start_date", DATE, "Treatment start date."),
    Column("baseline_scan_date", DATE, "Scan date of the baseline visit."),
    Column("visits_assessed", INTEGER, "Number of exported visits with a current RANO-BM assessment."),
    Column(
        "last_assessment_date",
        DATE,
        "Scan date of the last visit with an evaluable response (not NE); baseline when none.",
    ),
    Column(
        "best_overall_response",
        TEXT,
        "Best overall response (rano-bm.md 7) stored with the patient's last assessed visit.",
        allowed=tuple(ResponseChoices.values),
    ),
    Column(
        "first_response_date",
        DATE,
        "For confirmed responders (BOR CR or PR): scan date of the first visit with a CR or PR response.",
    ),
    Column(
        "duration_of_response_days",
        INTEGER,
        "Responders: progression date - first response date + 1; without progression, censored at the last "
        "assessment date.",
        unit="days",
    ),
    Column(
        "duration_of_response_censored",
        FLAG,
        "Y when the duration of response is censored.",
        allowed=("Y", "N"),
    ),
    Column(
        "progression_date",
        DATE,
        "First progression date stored by the engine (backdated to the scan that first showed an equivocal "
        "new lesion later confirmed, rano-bm.md 5); else the scan date of the first visit whose final response "
        "is PD.",
    ),
    Column("progression_visit", TEXT, "Label of the first visit whose response is PD."),
    Column(
        "progression_backdated",
        FLAG,
        "Y when the progression date is earlier than the scan date of the first PD visit.",
        allowed=("Y", "N"),
    ),
    Column(
        "cns_pfs_days",
        INTEGER,
        "CNS progression-free time: from treatment start (else enrolment, else baseline scan) to the "
        "progression date, or to the last assessment date when censored, + 1. Deaths are not recorded in "
        "MetTrack, so this is imaging-based CNS progression only.",
        unit="days",
    ),
    Column(
        "cns_pfs_event",
        FLAG,
        "Y when CNS progression occurred; N when cns_pfs_days is censored.",
        allowed=("Y", "N"),
    ),
)


def _days(start: dt.date | None, end: dt.date | None) -> int | None:
    if start is None or end is None:
        return None
    return (end - start).days + 1


def patient_row(trial: Trial, patient: dict[str, Any], visits: list[dict[str, Any]]) -> dict[str, Any]:
    """Build one ``patients`` row from a patient and its exported visits (in scan-date order)."""
    assessed = [v for v in visits if v["rano_present"]]
    baseline = next((v["scan_date"] for v in visits if v["is_baseline"]), None)
    evaluable = [
        v for v in assessed if v["rano_overall_response"] and v["rano_overall_response"] != ResponseChoices.NE
    ]
    last_date = evaluable[-1]["scan_date"] if evaluable else baseline
    bors = [v["rano_best_overall_response"] for v in assessed if v["rano_best_overall_response"]]
    bor = bors[-1] if bors else None
    first_pd = next((v for v in assessed if v["rano_overall_response"] == ResponseChoices.PD), None)
    stored = next((v["rano_progression_date"] for v in assessed if v["rano_progression_date"]), None)
    progression = stored or (first_pd["scan_date"] if first_pd else None)
    first_response = None
    if bor in _RESPONDER:
        first_response = next(
            (
                v["scan_date"]
                for v in assessed
                if v["rano_overall_response"] in _RESPONDER
                and (first_pd is None or v["scan_date"] < first_pd["scan_date"])
            ),
            None,
        )
    dor_end = progression or last_date
    reference = reference_date(patient) or baseline
    return {
        "trial_code": trial.code,
        "site_code": patient["site_code"],
        "subject_id": patient["subject_id"],
        "usubjid": usubjid(trial.code, patient["site_code"], patient["subject_id"]),
        "enrolment_date": patient["enrolment_date"],
        "treatment_start_date": patient["treatment_start_date"],
        "baseline_scan_date": baseline,
        "visits_assessed": len(assessed),
        "last_assessment_date": last_date,
        "best_overall_response": bor,
        "first_response_date": first_response,
        "duration_of_response_days": _days(first_response, dor_end) if first_response else None,
        "duration_of_response_censored": (progression is None) if first_response else None,
        "progression_date": progression,
        "progression_visit": first_pd["visit_label"] if first_pd else None,
        "progression_backdated": (
            progression < first_pd["scan_date"]
            if progression and first_pd
            else (False if progression else None)
        ),
        "cns_pfs_days": _days(reference, progression or last_date),
        "cns_pfs_event": progression is not None if reference and (progression or last_date) else None,
    }


def patient_rows(trial: Trial, filters: ExportFilters) -> Iterator[dict[str, Any]]:
    """Rows of the ``patients`` CSV, one per patient (record-id order), patients without visits included."""
    visit_pairs = ((visit, list[dict[str, Any]]()) for visit in queries.visits(trial, filters))
    for patient, pairs in queries.group_by_patient(queries.patients(trial, filters), visit_pairs):
        yield patient_row(trial, patient, [visit for visit, _ in pairs])


PATIENTS = Dataset(
    kind="patients",
    title="Patients (best overall response and progression)",
    description="One row per patient: BOR, first response, duration of response, progression date and CNS "
    "progression-free time.",
    columns=PATIENT_COLUMNS,
    rows=patient_rows,
)
