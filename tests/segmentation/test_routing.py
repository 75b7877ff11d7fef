"""Routing rules of received series and studies (segmentation.routing): one row per rule."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import pytest

from segmentation.routing import (
    ReceivedSeries,
    SeriesRules,
    Visit,
    choose_series,
    choose_visit,
    series_verdict,
)

POST = ReceivedSeries(
    series_instance_uid="1.2.3",
    series_description="T1 MPRAGE post Gd",
    modality="MR",
    instances=176,
    series_number=5,
    contrast_bolus_agent="GADOBUTROL",
    mr_acquisition_type="3D",
    slice_thickness_mm=1.0,
)

#: (change to the post-contrast 3D T1, the reason expected) - each breaks one rule of the module docstring.
FAILURES = [
    ({"modality": "CT"}, "not MR"),
    ({"series_description": "DWI b1000"}, "matches no include pattern"),
    ({"series_description": "T1 pre"}, "exclude pattern"),
    ({"series_description": "T1 FLAIR post"}, "exclude pattern"),
    ({"contrast_bolus_agent": None}, "no contrast agent"),
    ({"mr_acquisition_type": "2D"}, "not 3D"),
    ({"slice_thickness_mm": 3.0}, "exceeds 1.5 mm"),
    ({"slice_thickness_mm": None}, "slice thickness missing"),
    ({"instances": 1}, "fewer than 3"),
]


def test_the_post_contrast_3d_t1_passes_every_rule() -> None:
    verdict = series_verdict(POST, SeriesRules())
    assert verdict.passed and "contrast agent recorded" in verdict.reasons


@pytest.mark.parametrize(("change", "reason"), FAILURES)
def test_each_rule_refuses_with_its_reason(change: dict, reason: str) -> None:
    verdict = series_verdict(replace(POST, **change), SeriesRules())
    assert not verdict.passed
    assert any(reason in r for r in verdict.reasons), verdict.reasons


def test_priority_prefers_the_described_post_contrast_then_thinner_slices() -> None:
    plain = replace(POST, series_instance_uid="1.2.4", series_description="T1 MPRAGE", series_number=7)
    thick = replace(POST, series_instance_uid="1.2.5", slice_thickness_mm=1.2, series_number=9)
    choice = choose_series([plain, thick, POST], SeriesRules())
    assert choice.selected == POST
    assert "chosen over" in choice.reason and "priority" in choice.reason
    none = choose_series([replace(POST, contrast_bolus_agent=None)], SeriesRules())
    assert none.selected is None and none.reason == "no series passes the trial's series rules"


def test_rules_from_a_trial_setting_are_validated() -> None:
    assert SeriesRules.from_dict({"max_slice_thickness_mm": 2.0}).max_slice_thickness_mm == 2.0
    with pytest.raises(ValueError, match="Unknown series rule"):
        SeriesRules.from_dict({"max_slice": 2.0})
    with pytest.raises(ValueError, match="Invalid series description pattern"):
        SeriesRules.from_dict({"include_patterns": ["("]})


VISITS = [Visit(1, "BASELINE", dt.date(2025, 1, 6)), Visit(2, "FU1", dt.date(2025, 3, 3))]


@pytest.mark.parametrize(
    ("time_point_id", "study_date", "expected", "reason"),
    [
        ("fu1", dt.date(2025, 1, 6), "FU1", "Time Point ID 'fu1' names this visit"),
        (None, dt.date(2025, 3, 10), "FU1", "7 day(s) from the scan date of FU1"),
        ("FU9", dt.date(2025, 1, 1), "BASELINE", "5 day(s)"),
        (None, dt.date(2025, 6, 1), None, "proposed: a new unscheduled visit UNSCHED-20250601"),
        (None, None, None, "no Study Date"),
    ],
)
def test_visit_by_time_point_then_study_date_window(
    time_point_id: str | None, study_date: dt.date | None, expected: str | None, reason: str
) -> None:
    choice = choose_visit(VISITS, time_point_id=time_point_id, study_date=study_date, window_days=14)
    assert (choice.visit.visit_label if choice.visit else None) == expected
    assert reason in choice.reason
