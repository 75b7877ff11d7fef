"""ResponseSettings: every rano-bm.md section 9 setting, defaults, round trip and validation."""

from __future__ import annotations

import json

import pytest

from rano.errors import SettingsError
from rano.settings import ResponseSettings

SECTION_9_DEFAULTS = {
    "max_targets": 5,
    "measurable_min_ld_mm": 10,
    "min_lesion_volume_mm3": 5,
    "too_small_mm": 5,
    "new_lesion_min_ld_mm": 5,
    "confirmation_days": 28,
    "min_sd_days": 42,
    "pr_threshold": -30,
    "pd_threshold": 20,
    "pd_min_lesion_increase_mm": 5,
    "vol_pr_threshold": -65,
    "vol_pd_threshold": 73,
    "immunotherapy": False,
}


def test_defaults_are_section_9() -> None:
    assert ResponseSettings().to_dict() == SECTION_9_DEFAULTS


def test_round_trip_through_json() -> None:
    custom = ResponseSettings(max_targets=3, pr_threshold=-25.0, immunotherapy=True)
    assert ResponseSettings.from_dict(json.loads(json.dumps(custom.to_dict()))) == custom


def test_percent_strings_and_missing_keys() -> None:
    s = ResponseSettings.from_dict({"pd_threshold": "+25%", "vol_pr_threshold": "-60 %"})
    assert (s.pd_threshold, s.vol_pr_threshold, s.max_targets) == (25.0, -60.0, 5)
    assert ResponseSettings.from_dict(None) == ResponseSettings()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"max_target": 5}, "unknown setting"),
        ({"max_targets": 0}, "at least 1"),
        ({"max_targets": 2.5}, "whole number"),
        ({"confirmation_days": -1}, ">= 0"),
        ({"pr_threshold": 30}, r"\(-100, 0\)"),
        ({"pd_threshold": -5}, "> 0"),
        ({"pr_threshold": "lots"}, "percentage"),
        ({"immunotherapy": "yes"}, "true or false"),
        ({"too_small_mm": "5"}, "number"),
        ({"measurable_min_ld_mm": float("nan")}, "finite"),
        ([1, 2], "JSON object"),
    ],
)
def test_invalid_settings_raise(data, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        ResponseSettings.from_dict(data)


def test_thick_slices_raise_the_minimum_ld() -> None:
    s = ResponseSettings()
    assert s.min_measurable_ld_mm(1.0) == 10.0
    assert s.min_measurable_ld_mm(5.0) == 10.0
    assert s.min_measurable_ld_mm(6.5) == 13.0
    assert s.min_measurable_ld_mm(None) == 10.0
