"""Per-patient export: backdated progression, censoring, responders (values read from stored assessments)."""

from __future__ import annotations

import csv
import datetime as dt
import io

import pytest

from tests import factories as f
from trials.exports import open_export

pytestmark = pytest.mark.django_db


def patient_rows(trial) -> dict[str, dict[str, str]]:
    return {r["subject_id"]: r for r in csv.DictReader(io.StringIO("".join(open_export("patients", trial))))}


def visit(patient, label: str, day: int, **assessment):
    tp = f.make_timepoint(
        patient,
        visit_label=label,
        scan_date=dt.date(2024, 1, 1) + dt.timedelta(days=day),
        is_baseline=label == "BL",
    )
    f.make_assessment(tp, **assessment)
    return tp


def test_backdated_progression_and_pfs() -> None:
    trial = f.make_trial("PAT-BM")
    p = f.make_patient(trial, subject_id="B1", treatment_start_date=dt.date(2024, 1, 1))
    visit(p, "BL", 0, overall_response="")
    visit(p, "FU1", 56, overall_response="SD", new_lesion_status="equivocal", best_overall_response="SD")
    # FU2 confirms the equivocal lesion: PD at FU2, progression backdated to FU1's scan (rano-bm.md 5).
    visit(
        p,
        "FU2",
        112,
        overall_response="PD",
        best_overall_response="SD",
        progression_date=dt.date(2024, 2, 26),
    )
    row = patient_rows(trial)["B1"]
    assert row["progression_date"] == "2024-02-26"
    assert row["progression_visit"] == "FU2"
    assert row["progression_backdated"] == "Y"
    assert row["best_overall_response"] == "SD"
    assert row["first_response_date"] == "" and row["duration_of_response_days"] == ""
    # 2024-01-01 (day 1) to 2024-02-26 (day 57).
    assert row["cns_pfs_days"] == "57" and row["cns_pfs_event"] == "Y"


def test_confirmed_responder_censored_without_progression() -> None:
    trial = f.make_trial("PAT-CR")
    p = f.make_patient(trial, subject_id="R1", enrolment_date=dt.date(2023, 12, 20))
    visit(p, "BL", 0, overall_response="")
    visit(p, "FU1", 60, overall_response="PR", confirmed=True, best_overall_response="PR")
    visit(p, "FU2", 120, overall_response="CR", confirmed=False, best_overall_response="PR")
    visit(p, "FU3", 180, overall_response="NE", best_overall_response="PR")  # not an adequate assessment
    row = patient_rows(trial)["R1"]
    assert row["first_response_date"] == "2024-03-01"  # FU1: 2024-01-01 + 60 days
    assert row["last_assessment_date"] == "2024-04-30"  # FU2; the NE visit does not count
    # Censored at the last adequate assessment: 2024-03-01 .. 2024-04-30 = 60 days apart, + 1.
    assert row["duration_of_response_days"] == "61" and row["duration_of_response_censored"] == "Y"
    assert row["progression_date"] == "" and row["progression_backdated"] == ""
    # Reference is the enrolment date (no treatment start): 2023-12-20 .. 2024-04-30.
    assert row["cns_pfs_days"] == str((dt.date(2024, 4, 30) - dt.date(2023, 12, 20)).days + 1)
    assert row["cns_pfs_event"] == "N"


def test_reader_pd_without_stored_date_uses_first_pd_scan() -> None:
    trial = f.make_trial("PAT-PD")
    p = f.make_patient(trial, subject_id="P1")
    visit(p, "BL", 0, overall_response="")
    visit(p, "FU1", 56, overall_response="PD", best_overall_response="PD")
    row = patient_rows(trial)["P1"]
    assert (row["progression_date"], row["progression_visit"], row["progression_backdated"]) == (
        "2024-02-26",
        "FU1",
        "N",
    )
    assert row["cns_pfs_days"] == "57"  # reference falls back to the baseline scan date
