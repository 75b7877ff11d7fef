"""Golden-file tests: the synthetic trial of tests/exports/world.py exported cell by cell, parsed back
with the csv module and pandas, with independent checks of the derived numbers."""

from __future__ import annotations

import csv
import datetime as dt
import io
import os
from pathlib import Path

import pandas as pd
import pytest

from trials.exports import EXPORT_KINDS, ExportFilters, get_dataset, open_export
from trials.exports.columns import EXP, REQ

GOLDEN = Path(__file__).parent / "golden"
#: Set to 1 to rewrite the golden files from the current exports (then review the diff by hand).
UPDATE = os.environ.get("METTRACK_UPDATE_GOLDEN") == "1"

pytestmark = pytest.mark.django_db


def export_text(kind: str, trial, filters: ExportFilters | None = None) -> str:
    return "".join(open_export(kind, trial, filters))


def frame(kind: str, trial, filters: ExportFilters | None = None) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(export_text(kind, trial, filters)), dtype=str, keep_default_na=False)


@pytest.mark.parametrize("kind", EXPORT_KINDS)
def test_export_equals_golden_file_cell_by_cell(world, kind: str) -> None:
    text = export_text(kind, world.trial)
    path = GOLDEN / f"{kind}.csv"
    if UPDATE:
        path.write_text(text, encoding="utf-8", newline="")
    expected = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))
    actual = list(csv.reader(io.StringIO(text)))
    assert actual[0] == expected[0], "header differs"
    assert len(actual) == len(expected), f"{kind}: {len(actual) - 1} rows, expected {len(expected) - 1}"
    for line, (got, want) in enumerate(zip(actual, expected, strict=True), start=1):
        for name, g, w in zip(expected[0], got, want, strict=True):
            assert g == w, f"{kind}.csv line {line} column {name}: {g!r} != {w!r}"


@pytest.mark.parametrize("kind", EXPORT_KINDS)
def test_export_parses_back_with_csv_and_pandas(world, kind: str) -> None:
    text = export_text(kind, world.trial)
    assert text.endswith("\r\n") and "\r\n" in text.splitlines(keepends=True)[0]
    rows = list(csv.DictReader(io.StringIO(text)))
    data = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    assert list(data.columns) == get_dataset(kind).header
    assert len(data) == len(rows) > 0
    assert data.to_dict("records") == rows


def test_row_counts_match_the_synthetic_trial(world) -> None:
    # 001: 4 visits, 002: 2 visits; 003 has none.
    assert len(frame("visits", world.trial)) == 6
    # 001: L1-L3 at 4 visits + L4 at FU3 = 13; 002: 2 + 3 = 5. The false positive is left out.
    lesions = frame("lesions", world.trial)
    assert len(lesions) == 18
    assert set(lesions["lesion_label"]) == {"L1", "L2", "L3", "L4"}
    assert len(frame("patients", world.trial)) == 3


def test_target_columns_add_up_to_the_stored_sld(world) -> None:
    """Independent check: the TL columns, read back as numbers, sum to the SLD the engine stored."""
    visits = frame("visits", world.trial)
    for _, row in visits.iterrows():
        lds = [float(row[f"tl{n}_ld_mm"]) for n in range(1, 6) if row[f"tl{n}_ld_mm"]]
        assert sum(lds) == pytest.approx(float(row["sld_mm"]), abs=0.05), row["visit_label"]


def test_study_days_and_durations_against_hand_computed_dates(world) -> None:
    visits = frame("visits", world.trial).set_index(["subject_id", "visit_label"])
    start = dt.date(2024, 1, 5)  # 001 treatment start
    for label, scan in (("BASELINE", dt.date(2024, 1, 3)), ("FU3", dt.date(2024, 6, 1))):
        days = (scan - start).days
        assert int(visits.loc[("001", label), "study_day"]) == (days + 1 if days >= 0 else days)
    assert visits.loc[("001", "BASELINE"), "study_day"] == "-2"  # no day 0: two days before day 1
    assert visits.loc[("002", "BASELINE"), "study_day"] == "1"  # enrolment date is the reference
    patients = frame("patients", world.trial).set_index("subject_id")
    # Response first seen 2024-03-01, progression 2024-06-01: 92 days apart, DoR counts both ends.
    assert patients.loc["001", "duration_of_response_days"] == str(
        (dt.date(2024, 6, 1) - dt.date(2024, 3, 1)).days + 1
    )
    assert patients.loc["001", "cns_pfs_days"] == str((dt.date(2024, 6, 1) - start).days + 1)
    assert patients.loc["001", "cns_pfs_event"] == "Y"
    assert patients.loc["002", "cns_pfs_event"] == "N"  # censored at the last assessment
    assert patients.loc["002", "first_response_date"] == ""  # unconfirmed PR: BOR SD, not a responder
    assert patients.loc["003", "visits_assessed"] == "0"


def test_ai_and_final_responses_follow_reader_review(world) -> None:
    visits = frame("visits", world.trial).set_index(["subject_id", "visit_label"])
    fu2 = visits.loc[("001", "FU2")]
    assert (fu2["ai_response"], fu2["final_response"], fu2["review_status"]) == ("SD", "PR", "overridden")
    assert fu2["assessor"] == "rad1" and fu2["esignature_meaning"] == "reviewed_overridden"
    fu3 = visits.loc[("001", "FU3")]
    assert (fu3["ai_response"], fu3["final_response"], fu3["assessor"]) == ("PD", "", "engine")


SDTM_ORDER = {
    # Relative order of the variables in SDTMIG 3.3 (the exports use a subset, in this order).
    "tu": "STUDYID DOMAIN USUBJID TUSEQ TUGRPID TUREFID TUSPID TULNKID TULNKGRP TUTESTCD TUTEST TUORRES "
    "TUSTRESC TUNAM TULOC TULAT TUDIR TUPORTOT TUMETHOD TULOBXFL TUBLFL TUEVAL TUEVALID TUACPTFL VISITNUM "
    "VISIT VISITDY TAETORD EPOCH TUDTC TUENDTC TUDY TUENDY",
    "tr": "STUDYID DOMAIN USUBJID TRSEQ TRGRPID TRREFID TRSPID TRLNKID TRLNKGRP TRTESTCD TRTEST TRORRES "
    "TRORRESU TRSTRESC TRSTRESN TRSTRESU TRSTAT TRREASND TRNAM TRMETHOD TRLOBXFL TRBLFL TREVAL TREVALID "
    "TRACPTFL VISITNUM VISIT VISITDY TAETORD EPOCH TRDTC TRDY",
    "rs": "STUDYID DOMAIN USUBJID RSSEQ RSGRPID RSREFID RSSPID RSLNKID RSLNKGRP RSTESTCD RSTEST RSCAT RSSCAT "
    "RSORRES RSORRESU RSSTRESC RSSTRESN RSSTRESU RSSTAT RSREASND RSNAM RSLOBXFL RSBLFL RSDRVFL RSEVAL "
    "RSEVALID RSACPTFL VISITNUM VISIT VISITDY TAETORD EPOCH RSDTC RSDY",
}
REQUIRED = {
    "tu": {"STUDYID", "DOMAIN", "USUBJID", "TUSEQ", "TUTESTCD", "TUTEST"},
    "tr": {"STUDYID", "DOMAIN", "USUBJID", "TRSEQ", "TRTESTCD", "TRTEST"},
    "rs": {"STUDYID", "DOMAIN", "USUBJID", "RSSEQ", "RSTESTCD", "RSTEST"},
}


@pytest.mark.parametrize("kind", ["tu", "tr", "rs"])
def test_sdtm_column_order_and_required_variables(world, kind: str) -> None:
    header = get_dataset(kind).header
    ig_order = SDTM_ORDER[kind].split()
    assert all(name in ig_order for name in header), set(header) - set(ig_order)
    assert header == sorted(header, key=ig_order.index)
    assert REQUIRED[kind] <= set(header)
    core = {c.name: c.core for c in get_dataset(kind).columns}
    assert {name for name, c in core.items() if c == REQ} == REQUIRED[kind]
    data = frame(kind, world.trial)
    for name in REQUIRED[kind]:
        assert (data[name] != "").all(), f"required {name} has empty cells"
    assert set(data["DOMAIN"]) == {kind.upper()}
    for name in header:
        if core[name] in (REQ, EXP) and name not in ("VISITNUM", f"{kind.upper()}DTC", "TRLNKID"):
            assert name in data.columns
    # Sequence numbers: 1..n within each subject.
    seq = f"{kind.upper()}SEQ"
    for _, group in data.groupby("USUBJID"):
        assert [int(v) for v in group[seq]] == list(range(1, len(group) + 1))


def test_sdtm_controlled_terms(world) -> None:
    tu = frame("tu", world.trial)
    assert set(tu["TUTESTCD"]) == {"TUMIDENT"} and set(tu["TUORRES"]) == {"TARGET", "NON-TARGET", "NEW"}
    assert set(tu["TUMETHOD"]) == {"MRI"}
    tr = frame("tr", world.trial)
    assert set(tr["TRTESTCD"]) == {"LDIAM", "LPERP", "SUMDIAM", "VOLUME", "TUMSTATE"}
    numeric = tr[tr["TRTESTCD"] != "TUMSTATE"]
    assert (numeric["TRSTRESN"].astype(float) == numeric["TRORRES"].astype(float)).all()
    assert set(numeric["TRORRESU"]) == {"mm", "mm3"}
    assert set(tr.loc[tr["TRTESTCD"] == "TUMSTATE", "TRORRES"]) == {"PRESENT", "ABSENT"}
    rs = frame("rs", world.trial)
    assert set(rs["RSCAT"]) == {"RANO-BM", "VOLUMETRIC RANO-BM"}
    assert set(rs["RSTESTCD"]) == {"TRGRESP", "NTRGRESP", "NEWLIND", "NEWLPROG", "OVRLRESP", "BESTRESP"}
    best = rs[rs["RSTESTCD"] == "BESTRESP"].set_index("USUBJID")["RSORRES"].to_dict()
    assert best == {"GOLD-BM-S01-001": "PR", "GOLD-BM-S02-002": "SD"}
    # TU and TR link through the lesion label.
    assert set(tr["TRLNKID"]) - {""} == set(tu["TULNKID"])
