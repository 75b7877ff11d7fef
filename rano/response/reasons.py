"""Every reason the RANO-BM engine writes, in one place (rano-bm.md section 6: "Every result carries its
reasons: the list of rule outcomes that produced it, in words a reader can check").

The wording is part of the engine's output: assessments store it, the exports and their golden tests
compare it byte for byte, and readers learn to scan it. The rules decide; these functions only put
their outcome into words, so a change of wording is a change to this module alone. Fixed sentences are
constants, sentences with values are functions. Lengths print with one decimal (``20.0 mm``);
percentages print as whole percents unless that would put them on the wrong side of the threshold the
rule compared them with (see :func:`_pct_decimals`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

#: Most decimals a percentage prints with when whole percents would put it on the wrong side of its
#: threshold (see _pct_decimals); a change closer to the threshold than that prints rounded.
MAX_PCT_DECIMALS = 6


@dataclass(frozen=True)
class SumWords:
    """How the target sum of one criteria is named in reasons.

    Attributes:
        name: ``SLD`` (sum of longest diameters, section 3) or ``target volume sum`` (section 8).
        unit: ``mm`` or ``mm3``.
    """

    name: str
    unit: str


DIAMETER_SUM = SumWords(name="SLD", unit="mm")
VOLUME_SUM = SumWords(name="target volume sum", unit="mm3")


def sum_words(*, volumetric: bool) -> SumWords:
    """The name and unit of the target sum under the diameter (section 3) or volumetric (section 8) rules."""
    return VOLUME_SUM if volumetric else DIAMETER_SUM


# --- percentages --------------------------------------------------------------------------------------


def _pct_decimals(pct: float, threshold_pct: float, *, met: bool) -> int:
    """The fewest decimals (whole percents when they do) that print ``pct`` on the side of a threshold
    the rule found it on: -29.97%, not -30%, for a sum that missed the -30% PR threshold (rano-bm.md
    section 6: reasons a reader can check).

    Args:
        pct: The change, in percent.
        threshold_pct: The rule's threshold in percent: met at or above it when positive (PD), at or
            below it when negative (PR).
        met: Whether the rule found the threshold met.
    """
    decimals = 0
    while decimals < MAX_PCT_DECIMALS:
        shown = float(f"{pct:.{decimals}f}")
        on_side = shown >= threshold_pct if threshold_pct > 0 else shown <= threshold_pct
        if on_side == met:
            break
        decimals += 1
    return decimals


def _pct_words(pct: float, threshold_pct: float, *, met: bool, signed: bool = True) -> str:
    """``pct`` as a reason prints it (see :func:`_pct_decimals`): signed (+20%) or as a magnitude (20%)."""
    decimals = _pct_decimals(pct, threshold_pct, met=met)
    return f"{pct:+.{decimals}f}%" if signed else f"{abs(pct):.{decimals}f}%"


# --- section 2: target selection at baseline -------------------------------------------------------------

NO_MEASURABLE_DISEASE = "no measurable disease at baseline"


def flagged_non_measurable(lesion_id: str, flag: str) -> str:
    """A reader flag (dural, bony, leptomeningeal, cystic) makes the lesion non-measurable."""
    return f"{lesion_id} is marked {flag}: non-measurable"


def irradiated_not_progressing(lesion_id: str) -> str:
    """A lesion treated with radiosurgery and not marked progressing cannot be a target."""
    return f"{lesion_id} was treated with radiosurgery and is not marked progressing"


def marked_too_small(lesion_id: str) -> str:
    """A baseline lesion the reader marked too small to measure cannot be a target."""
    return f"{lesion_id} is marked too small to measure"


def not_measurable(lesion_id: str, why: str) -> str:
    """A baseline lesion fails the geometric measurability rule (``why`` from ``rano.measure``)."""
    return f"{lesion_id} not measurable: {why}"


def reader_selected_ineligible(lesion_id: str) -> str:
    """The reader chose a lesion as target that the rules would not have chosen."""
    return f"reader selected {lesion_id} as target although it is not eligible"


def reader_targets(target_ids: Sequence[str]) -> str:
    """The targets the reader selected (possibly none)."""
    return f"targets selected by the reader: {', '.join(target_ids) or 'none'}"


def automatic_targets(targets: Sequence[tuple[str, float]], max_targets: int) -> str:
    """The targets the rules selected.

    Args:
        targets: (lesion id, LD in mm) of each target, in selection order.
        max_targets: The ``max_targets`` setting.
    """
    listed = ", ".join(f"{lesion_id} (LD {ld_mm:.1f} mm)" for lesion_id, ld_mm in targets)
    return f"targets: {listed}; the largest measurable lesions, at most {max_targets}"


def further_measurable_lesions(count: int) -> str:
    """Measurable lesions beyond ``max_targets`` are followed as non-targets."""
    return f"{count} further measurable lesion(s) followed as non-targets"


def baseline_sum(words: SumWords, value: float) -> str:
    """The target sum at baseline."""
    return f"baseline {words.name} {value:.1f} {words.unit}"


# --- section 3 (and section 8): target response ----------------------------------------------------------


def targets_absent(target_ids: Sequence[str]) -> str:
    """Every target absent: target CR."""
    return f"all targets absent ({', '.join(target_ids)}) -> target CR"


def target_pd(
    words: SumWords,
    *,
    current: float,
    nadir: float,
    nadir_visit: str,
    pct_from_nadir: float | None,
    pd_threshold: float,
    grown: Sequence[tuple[str, float]] | None,
) -> str:
    """Target PD: the sum is at or above the PD threshold from nadir (and, for diameters, a target grew).

    Args:
        words: Name and unit of the sum.
        current: The sum at this visit (mm or mm^3).
        nadir: The nadir sum (mm or mm^3).
        nadir_visit: Label of the nadir visit.
        pct_from_nadir: Change from nadir in percent; None when the nadir is 0 (after a CR).
        pd_threshold: The PD threshold in percent.
        grown: (lesion id, growth in mm) of each target that grew enough; None under volumetric rules,
            which have no per-lesion rule.
    """
    # After a CR the nadir is 0: any sum is above it, by no percentage.
    change = (
        ">"
        if pct_from_nadir is None
        else f"is {_pct_words(pct_from_nadir, pd_threshold, met=True, signed=False)} above"
    )
    text = f"{words.name} {current:.1f} {words.unit} {change} nadir {nadir:.1f} {words.unit} ({nadir_visit})"
    if grown is not None:
        text += "; " + ", ".join(f"{lesion_id} grew {growth_mm:.1f} mm" for lesion_id, growth_mm in grown)
    return f"{text} -> target PD"


def target_pr(
    words: SumWords, *, current: float, baseline: float, pct_from_baseline: float | None, pr_threshold: float
) -> str:
    """Target PR: the sum is at or below the PR threshold from baseline.

    Args:
        words: Name and unit of the sum.
        current: The sum at this visit (mm or mm^3).
        baseline: The baseline sum (mm or mm^3).
        pct_from_baseline: Change from baseline in percent; None when the baseline sum is 0.
        pr_threshold: The PR threshold in percent (negative).
    """
    change = (
        f"<= {100 + pr_threshold:g}% of"
        if pct_from_baseline is None
        else f"is {_pct_words(pct_from_baseline, pr_threshold, met=True, signed=False)} below"
    )
    return (
        f"{words.name} {current:.1f} {words.unit} {change} baseline {baseline:.1f} {words.unit} -> target PR"
    )


def target_sd(
    words: SumWords,
    *,
    current: float,
    baseline: float,
    nadir: float,
    nadir_visit: str,
    pct_from_baseline: float | None,
    pct_from_nadir: float | None,
    pr_threshold: float,
    pd_threshold: float,
    above_nadir: bool,
) -> str:
    """Target SD: neither PR nor PD, with the change from baseline and from nadir.

    Args:
        words: Name and unit of the sum.
        current: The sum at this visit (mm or mm^3).
        baseline: The baseline sum (mm or mm^3).
        nadir: The nadir sum (mm or mm^3).
        nadir_visit: Label of the nadir visit.
        pct_from_baseline: Change from baseline in percent; None when the baseline sum is 0.
        pct_from_nadir: Change from nadir in percent; None when the nadir sum is 0.
        pr_threshold: The PR threshold in percent (not met, or the response would be PR).
        pd_threshold: The PD threshold in percent.
        above_nadir: Whether the sum met the PD threshold from nadir (PD then failed on the per-lesion
            rule), so that its percentage prints on that side.
    """
    base_text = None if pct_from_baseline is None else _pct_words(pct_from_baseline, pr_threshold, met=False)
    nadir_text = None if pct_from_nadir is None else _pct_words(pct_from_nadir, pd_threshold, met=above_nadir)
    if pct_from_baseline is not None and pct_from_baseline == pct_from_nadir:
        # Nadir at baseline: one change, printed alike for both thresholds.
        decimals = max(
            _pct_decimals(pct_from_baseline, pr_threshold, met=False),
            _pct_decimals(pct_from_baseline, pd_threshold, met=above_nadir),
        )
        base_text = nadir_text = f"{pct_from_baseline:+.{decimals}f}%"
    base_words = (
        f"baseline {baseline:.1f} {words.unit}" if base_text is None else f"{base_text} from baseline"
    )
    nadir_words = (
        f"nadir {nadir:.1f} {words.unit} ({nadir_visit})"
        if nadir_text is None
        else f"{nadir_text} from nadir ({nadir_visit})"
    )
    return f"{words.name} {current:.1f} {words.unit} ({base_words}, {nadir_words}) -> target SD"


def sum_above_nadir_without_growth(pd_threshold: float, min_lesion_increase_mm: float) -> str:
    """The sum met the PD threshold but no target grew enough: RANO-BM's per-lesion rule says not PD."""
    return (
        f"sum is >= {pd_threshold:g}% above nadir but no target grew {min_lesion_increase_mm:g} mm -> not PD"
    )


def target_too_small(lesion_id: str, too_small_mm: float) -> str:
    """A target marked too small to measure counts ``too_small_mm``."""
    return f"{lesion_id} marked too small to measure: counts {too_small_mm:g} mm"


def target_merged(lesion_id: str, merged_into: str) -> str:
    """A target inside another lesion's mass counts 0 (the mass is measured once)."""
    return f"{lesion_id} merged into {merged_into}: counts 0"


def target_split(lesion_id: str, fragment_count: int) -> str:
    """A target split into fragments counts the sum of their LDs."""
    return f"{lesion_id} split into {fragment_count} fragments: their LDs are summed"


# --- section 4: non-target response ------------------------------------------------------------------------

NON_TARGET_PD_BY_READER = "reader: unequivocal progression of non-target lesions -> non-target PD"
NON_TARGETS_ABSENT = "all non-target lesions absent -> non-target CR"


def non_target_growth(lesion_id: str, ld_mm: float, nadir_ld_mm: float) -> str:
    """The growth flag: a non-target grew enough from its own nadir for a reader to look at it."""
    return (
        f"non-target {lesion_id} grew {ld_mm - nadir_ld_mm:.1f} mm from its nadir {nadir_ld_mm:.1f} mm: "
        "possible progression, for the reader to judge"
    )


def non_targets_present(present: Sequence[tuple[str, str | None]]) -> str:
    """Non-targets still there: non-target NON-CR/NON-PD.

    Args:
        present: (lesion id, id of the lesion it merged into or None) of each non-target still there.
    """
    listed = ", ".join(
        lesion_id if merged_into is None else f"{lesion_id} (merged into {merged_into})"
        for lesion_id, merged_into in present
    )
    return f"non-target lesion(s) present ({listed}) -> non-target NON-CR/NON-PD"


# --- section 5: new lesions -------------------------------------------------------------------------------


def new_lesion_unequivocal(lesion_id: str, ld_mm: float, slice_count: int) -> str:
    """A new lesion large enough, on enough slices, to be unequivocal."""
    return f"new lesion {lesion_id}: LD {ld_mm:.1f} mm on {slice_count} slices -> unequivocal"


def new_lesion_equivocal(lesion_id: str, ld_mm: float, slice_count: int) -> str:
    """A new lesion too small or on too few slices: equivocal, PD only once a later scan confirms it."""
    return (
        f"possible new lesion {lesion_id}: LD {ld_mm:.1f} mm on {slice_count} slice(s) "
        "-> equivocal, PD only if a later scan confirms it"
    )


def equivocal_new_lesion_confirmed(lesion_id: str, first_visit: str, first_date: dt.date) -> str:
    """An equivocal new lesion still present: confirmed, progression backdated to the first scan."""
    return (
        f"equivocal new lesion {lesion_id} first seen at {first_visit} is still present -> "
        f"confirmed; progression dated {first_date.isoformat()}"
    )


def equivocal_new_lesion_gone(lesion_id: str) -> str:
    """An equivocal new lesion not seen again: the flag is cleared."""
    return f"equivocal new lesion {lesion_id} is no longer seen: not progression"


# --- section 6: overall response --------------------------------------------------------------------------

IMAGING_MISSING = "imaging missing or unreadable -> NE"
IMAGING_MISSING_CLINICAL_PD = "imaging missing or unreadable; clinical status worse -> overall PD"
IMMUNOTHERAPY_NEW_LESIONS = "immunotherapy setting: new lesions alone do not define progression"
POSSIBLE_NEW_LESION_FLAG = "flag: possible new lesion"

#: The PD criteria of the section 6 table, as :func:`overall_pd` joins them.
PD_BY_TARGETS = "target PD"
PD_BY_NON_TARGETS = "non-target PD"
PD_BY_NEW_LESION = "unequivocal new lesion"
PD_BY_CLINICAL_STATUS = "clinical status worse"

TARGETS_CR_NON_TARGETS_PRESENT = "targets CR but non-target lesions still present -> overall PR"
OVERALL_CR = "targets CR, no non-target disease, no new lesion, no corticosteroids -> overall CR"
OVERALL_PR = "target PR, no progression elsewhere -> overall PR"
OVERALL_SD = "target SD -> overall SD"
NO_MEASURABLE_DISEASE_CR = "no measurable disease; all non-targets absent, no corticosteroids -> overall CR"


def overall_pd(causes: Sequence[str]) -> str:
    """Overall PD, naming every PD criterion met (the ``PD_BY_*`` constants)."""
    return f"{' + '.join(causes)} -> overall PD"


def steroids_increased(target_response: str) -> str:
    """Targets CR or PR but corticosteroids increased: overall SD."""
    return f"target {target_response} but corticosteroids increased -> overall SD"


def targets_cr_steroids_in_use(steroids: str) -> str:
    """Targets CR but corticosteroids stable or decreased: overall PR."""
    return f"targets CR but corticosteroids in use ({steroids}) -> overall PR"


def no_measurable_disease_non_cr_non_pd(*, has_non_targets: bool) -> str:
    """No measurable disease at baseline and no CR: overall NON-CR/NON-PD."""
    what = (
        "non-target disease present or corticosteroids in use"
        if has_non_targets
        else "no disease at baseline"
    )
    return f"no measurable disease at baseline; {what} -> overall NON-CR/NON-PD"


def overridden(reader_response: str, rules_response: str | None) -> str:
    """A radiologist set the overall response in place of the rules' one."""
    return f"overall response set by the radiologist: {reader_response} (rules: {rules_response})"


# --- section 7: confirmation -------------------------------------------------------------------------------


def confirmed(response: str, by_visit: str, days: int) -> str:
    """A CR or PR confirmed by a later visit."""
    return f"{response} confirmed by {by_visit} ({days} days later)"


def not_confirmed(response: str) -> str:
    """A CR or PR no later visit confirms (yet)."""
    return f"{response} not (yet) confirmed"


# --- section 8: diameters against volumes ------------------------------------------------------------------


def visit_disagreement(visit: str, diameter_response: str | None, volumetric_response: str | None) -> str:
    """A visit whose overall response differs between the diameter and volumetric criteria."""
    return f"{visit}: RANO-BM {diameter_response}, volumetric {volumetric_response}"


def best_overall_response_disagreement(diameter_response: str | None, volumetric_response: str | None) -> str:
    """The best overall response differs between the diameter and volumetric criteria."""
    return f"best overall response: RANO-BM {diameter_response}, volumetric {volumetric_response}"
