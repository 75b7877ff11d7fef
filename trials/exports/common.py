"""Small derivations shared by the exports: subject ids, study days, the diameter a target counts."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from trials.choices import AssessmentStatus, LesionRole

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


def counted_ld_mm(observation: dict[str, Any], too_small_mm: float, *, at_baseline: bool) -> float | None:
    """The diameter a target contributes to the SLD (rano-bm.md 3).

    Absent: 0 mm; present but marked too small to measure by a reader: ``too_small_mm``; else its LD.
    The reader's "too small" flag is stored on the lesion, not per visit; a target was measurable at
    baseline by definition (rano-bm.md 2), so the flag applies to follow-up visits only.
    """
    if not observation["present"]:
        return 0.0
    if observation["too_small_to_measure"] and not at_baseline:
        return too_small_mm
    return observation["longest_diameter_mm"]


def is_reviewed(status: str | None) -> bool:
    """Whether a reader signed the assessment (confirmed or overrode it)."""
    return status in (AssessmentStatus.CONFIRMED, AssessmentStatus.OVERRIDDEN)


def too_small_setting(visit: dict[str, Any], default: float) -> float:
    """``too_small_mm`` stored with the visit's assessment, else the trial's current setting."""
    settings = visit.get("rano_settings") or {}
    value = settings.get("too_small_mm")
    return float(value) if value is not None else default
