"""Reading rules the service applies in more than one place (assessment inputs and exports), kept here
so the two can never disagree."""

from __future__ import annotations


def too_small_flag_applies(
    flagged: bool,
    *,
    present: bool,
    at_baseline: bool,
    longest_diameter_mm: float | None,
    measurable_min_ld_mm: float,
) -> bool:
    """Whether a reader's "too small to measure" flag makes a target count ``too_small_mm`` at a visit.

    The flag is stored on the lesion (set at the visit where the reader judged it), but it describes the
    lesion's size there: at a visit where the lesion is measured at or above the measurable minimum LD
    (rano-bm.md section 2; 10 mm by default) it is measurable, so its measured LD counts (rano-bm.md
    section 3: "otherwise its measured LD counts"). A lesion marked too small at one follow-up that
    regrows is therefore measured again, and its growth can show as progression. At baseline a target
    is measurable by definition, so the flag never applies there.

    Args:
        flagged: the lesion's "too small to measure" flag.
        present: the lesion is present at the visit.
        at_baseline: the visit is the baseline.
        longest_diameter_mm: the LD measured at the visit (None: not measured).
        measurable_min_ld_mm: the trial's minimum LD of a measurable lesion.
    """
    if not (flagged and present) or at_baseline:
        return False
    return longest_diameter_mm is None or longest_diameter_mm < measurable_min_ld_mm
