"""Small derivations shared by the exports: subject ids, study days, the diameter a target counts."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, NamedTuple

from trials.choices import AssessmentStatus, LesionRole
from trials.rules import too_small_flag_applies

#: Number of target-lesion column groups in the visit CSV (RANO-BM allows at most 5 targets).
MAX_TARGET_COLUMNS = 5

_LABEL_NUMBER = re.compile(r"(\d+)$")


def usubjid(trial_code: str, site_code: str, subject_id: str) -> str:
    """Unique subject id across studies: ``STUDYID-SITEID-SUBJID`` (SDTMIG 3.3 DM convention)."""
    return f"{trial_code}-{site_code}-{subject_id}"


def reference_date(row: dict[str, Any]) -> dt.date | None:
    """Study-day reference (SDTM RFSTDTC): treatment start, else enrolment date, else unknown."""
    return row.get("treatment_start_date") or row.get("enrolment_date")


def study_day(date: dt.date | None, reference: dt.date | None) -> int | None:
    """SDTM study day (--DY): day 1 is the reference date and there is no day 0.

    ``date - reference + 1`` on or after the reference, ``date - reference`` before it.
    """
    if date is None or reference is None:
        return None
    days = (date - reference).days
    return days + 1 if days >= 0 else days


def label_sort_key(label: str) -> tuple[int, str]:
    """Order lesion labels by number (L2 before L10), unnumbered labels last."""
    match = _LABEL_NUMBER.search(label)
    return (int(match.group(1)) if match else 1_000_000, label)


def is_new_lesion(observation: dict[str, Any], first_visit_is_baseline: bool) -> bool:
    """A lesion first seen after baseline is a new lesion (rano-bm.md 5).

    ``first_seen_is_baseline`` recorded on the lesion wins; without it, the first visit in the export.
    """
    recorded = observation.get("first_seen_is_baseline")
    if recorded is not None:
        return not recorded
    return not first_visit_is_baseline


def lesion_category(observation: dict[str, Any], new: bool) -> str:
    """SDTM TU category: ``TARGET``, ``NON-TARGET`` or ``NEW``."""
    if new:
        return "NEW"
    return "TARGET" if observation["role"] == LesionRole.TARGET else "NON-TARGET"


def counted_ld_mm(observation: dict[str, Any], rule: TooSmallRule, *, at_baseline: bool) -> float | None:
    """The diameter a target contributes to the SLD (rano-bm.md 3).

    Absent: 0 mm; present, marked too small to measure by a reader and measured under the measurable
    minimum LD at this visit: ``too_small_mm`` (see :func:`trials.rules.too_small_flag_applies`, which
    the assessment applies too); else its LD.
    """
    if not observation["present"]:
        return 0.0
    if too_small_flag_applies(
        observation["too_small_to_measure"],
        present=True,
        at_baseline=at_baseline,
        longest_diameter_mm=observation["longest_diameter_mm"],
        measurable_min_ld_mm=rule.measurable_min_ld_mm,
    ):
        return rule.too_small_mm
    return observation["longest_diameter_mm"]


def is_reviewed(status: str | None) -> bool:
    """Whether a reader signed the assessment (confirmed or overrode it)."""
    return status in (AssessmentStatus.CONFIRMED, AssessmentStatus.OVERRIDDEN)


class TooSmallRule(NamedTuple):
    """The settings the "too small to measure" rule needs, as the visit's assessment used them."""

    too_small_mm: float
    measurable_min_ld_mm: float


def too_small_setting(visit: dict[str, Any], trial: Any) -> TooSmallRule:
    """``too_small_mm`` and ``measurable_min_ld_mm`` stored with the visit's assessment, else the trial's
    current settings."""
    settings = visit.get("rano_settings") or {}

    def value(name: str) -> float:
        stored = settings.get(name)
        return float(stored) if stored is not None else float(getattr(trial, name))

    return TooSmallRule(value("too_small_mm"), value("measurable_min_ld_mm"))
