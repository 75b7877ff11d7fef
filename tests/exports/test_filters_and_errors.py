"""Export filters and every error class of trials.exports."""

from __future__ import annotations

import datetime as dt
import io

import pandas as pd
import pytest
from django.http import QueryDict

from tests import factories as f
from trials.exports import (
    ExportFilters,
    InvalidExportFilterError,
    RowShapeError,
    TooManyTargetsError,
    UnknownExportKindError,
    get_dataset,
    open_export,
)
from trials.exports.columns import TEXT, Column, Dataset, ExportDefinitionError
from trials.exports.common import study_day
from trials.records import lesions as lesion_records


def frame(kind: str, trial, filters: ExportFilters) -> pd.DataFrame:
    text = "".join(open_export(kind, trial, filters))
    return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)


@pytest.mark.django_db
def test_site_filter(world) -> None:
    visits = frame("visits", world.trial, ExportFilters(site_codes=("S02",)))
    assert set(visits["subject_id"]) == {"002"}
    patients = frame("patients", world.trial, ExportFilters(site_codes=("S01",)))
    assert list(patients["subject_id"]) == ["001", "003"]


@pytest.mark.django_db
def test_date_range_filter_keeps_visit_numbers(world) -> None:
    filters = ExportFilters(date_from=dt.date(2024, 3, 1), date_to=dt.date(2024, 4, 5))
    visits = frame("visits", world.trial, filters)
    assert list(zip(visits["subject_id"], visits["visit_label"], visits["visit_number"], strict=True)) == [
        ("001", "FU1", "2"),
        ("001", "FU2", "3"),
        ("002", "FU1", "2"),
    ]
    lesions = frame("lesions", world.trial, filters)
    assert set(lesions["visit_label"]) == {"FU1", "FU2"}


@pytest.mark.django_db
def test_only_confirmed_keeps_reader_signed_visits(world) -> None:
    """Signed follow-ups, with the baseline their responses are measured from (patient 001); patient
    002 has no signed visit, so nothing of it (not even its baseline)."""
    filters = ExportFilters(only_confirmed=True)
    visits = frame("visits", world.trial, filters)
    assert list(zip(visits["subject_id"], visits["visit_label"], strict=True)) == [
        ("001", "BASELINE"), ("001", "FU1"), ("001", "FU2")
    ]  # fmt: skip
    assert list(visits["review_status"])[1:] == ["confirmed", "overridden"]
    assert list(visits["baseline_sld_mm"])[1:] == ["35.0", "35.0"]
    rs = frame("rs", world.trial, filters)
    assert set(rs.loc[(rs["RSCAT"] == "RANO-BM") & (rs["VISIT"] != "BASELINE"), "RSACPTFL"]) == {"Y"}
    tr = frame("tr", world.trial, filters)
    assert set(tr["VISIT"]) == {"BASELINE", "FU1", "FU2"}  # the baseline's target diameters too
    tu = frame("tu", world.trial, filters)
    assert set(tu["VISIT"]) == {"BASELINE"}  # targets identified at the baseline, not at FU1


@pytest.mark.django_db
@pytest.mark.parametrize("kind", ["visits", "lesions", "tu", "tr", "rs", "patients"])
def test_open_export_refuses_a_site_the_trial_does_not_have(world, kind: str) -> None:
    with pytest.raises(
        InvalidExportFilterError, match=r"Unknown site NOPE; trial GOLD-BM has sites S01, S02"
    ):
        open_export(kind, world.trial, ExportFilters(site_codes=("S01", "NOPE")))


def test_filters_from_query_parameters() -> None:
    query = QueryDict("site=S01,S02&site=S03&date_from=2024-01-01&date_to=2024-12-31&only_confirmed=true")
    filters = ExportFilters.from_query(query)
    assert filters.site_codes == ("S01", "S02", "S03")
    assert (filters.date_from, filters.date_to) == (dt.date(2024, 1, 1), dt.date(2024, 12, 31))
    assert filters.only_confirmed is True
    assert ExportFilters.from_query(QueryDict("")) == ExportFilters()
    assert filters.as_dict()["site"] == ["S01", "S02", "S03"]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("date_from=2024-13-01", "date_from must be a date"),
        ("date_to=yesterday", "date_to must be a date"),
        ("only_confirmed=maybe", "only_confirmed must be true or false"),
        ("subject=001", "Unknown filter(s) subject"),
        ("date_from=2024-05-01&date_to=2024-04-01", "is after date_to"),
    ],
)
def test_invalid_filters_raise_invalid_export_filter_error(query: str, message: str) -> None:
    with pytest.raises(InvalidExportFilterError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ExportFilters.from_query(QueryDict(query))


def test_unknown_kind_raises_unknown_export_kind_error() -> None:
    with pytest.raises(UnknownExportKindError, match="Unknown export 'dm'; choose one of visits, lesions"):
        get_dataset("dm")


@pytest.mark.django_db
def test_visits_export_refuses_trials_with_more_targets_than_columns() -> None:
    from tests.factories import make_trial

    trial = make_trial("WIDE", max_targets=6)
    with pytest.raises(TooManyTargetsError, match="allows 6 targets but the visits CSV has 5"):
        open_export("visits", trial)
    assert open_export("lesions", trial) is not None  # other exports have no target columns


def test_row_with_wrong_columns_raises_row_shape_error() -> None:
    dataset = get_dataset("patients")
    with pytest.raises(RowShapeError, match="missing"):
        dataset.format_row({"trial_code": "X"})


def test_inconsistent_definitions_raise_export_definition_error() -> None:
    with pytest.raises(ExportDefinitionError, match="unknown type"):
        Column("x", "number", "bad type")
    with pytest.raises(ExportDefinitionError, match="duplicate columns x"):
        Dataset("k", "t", "d", (Column("x", TEXT, "a"), Column("x", TEXT, "b")), rows=lambda t, f: iter(()))


@pytest.mark.parametrize(
    ("day", "expected"),
    [
        (dt.date(2024, 1, 5), 1),
        (dt.date(2024, 1, 6), 2),
        (dt.date(2024, 1, 4), -1),
        (dt.date(2023, 12, 31), -5),
    ],
)
def test_study_day_has_no_day_zero(day: dt.date, expected: int) -> None:
    assert study_day(day, dt.date(2024, 1, 5)) == expected


@pytest.mark.parametrize(
    ("column_type", "value", "text"),
    [
        ("flag", True, "Y"),
        ("flag", False, "N"),
        ("flag", None, ""),
        ("decimal", 12.345, "12.3"),
        ("decimal", 0.0, "0.0"),
        ("decimal", None, ""),
        ("integer", 7, "7"),
        ("date", dt.date(2024, 2, 29), "2024-02-29"),
        (
            "datetime",
            dt.datetime(2024, 7, 2, 16, 15, 30, tzinfo=dt.timezone(dt.timedelta(hours=2))),
            "2024-07-02T14:15:30Z",
        ),
        ("text", "", ""),
        ("text", "NON-CR/NON-PD", "NON-CR/NON-PD"),
    ],
)
def test_cell_formatting(column_type: str, value, text: str) -> None:
    assert Column("c", column_type, "d").format(value) == text


@pytest.mark.django_db
def test_a_merged_lesion_is_exported_with_the_lesion_that_absorbed_it() -> None:
    """rano-bm.md 3: a lesion inside another's mass is not seen on its own (present N, 0 mm) but has
    not disappeared; the lesions export names the absorbing lesion so the row is not read as a CR."""
    trial = f.make_trial("MERGE-BM")
    patient = f.make_patient(trial, subject_id="M-1")
    baseline = f.make_timepoint(patient, is_baseline=True, scan_date=dt.date(2024, 1, 1))
    follow_up = f.make_timepoint(patient, visit_label="FU1", scan_date=dt.date(2024, 3, 1))
    l1, l2 = f.make_lesion(patient, label="L1"), f.make_lesion(patient, label="L2")
    f.make_observation(l1, baseline, longest_diameter_mm=20.0)
    f.make_observation(l2, baseline, longest_diameter_mm=12.0)
    f.make_observation(l1, follow_up, longest_diameter_mm=30.0)
    lesion_records.record_observation(l2, follow_up, actor=None, present=False, merged_into=l1)
    lesions = frame("lesions", trial, ExportFilters())
    rows = {(r.visit_label, r.lesion_label): r for r in lesions.itertuples()}
    assert (rows[("FU1", "L2")].present, rows[("FU1", "L2")].merged_into) == ("N", "L1")
    assert rows[("FU1", "L1")].merged_into == "" and rows[("BASELINE", "L2")].merged_into == ""
