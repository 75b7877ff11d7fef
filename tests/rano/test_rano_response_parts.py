"""Each part of the engine called on its own (rano/response/*), one table row per rule, citing the
section of rano-bm.md. test_rano_response.py checks the same rules through ``assess``."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from rano.errors import ResponseInputError
from rano.response import reasons as words
from rano.response.confirmation import best_overall_response, confirmation, course_outcome
from rano.response.new_lesions import new_lesions
from rano.response.non_targets import non_target_response, own_ld
from rano.response.overall import missing_imaging, overall_response, overridden
from rano.response.targets import SumRecord, nadir, target_response, target_sums
from rano.response.types import (
    ClinicalStatus,
    Criteria,
    LesionObservation,
    NewLesions,
    Response,
    Steroids,
    VisitAssessment,
    VisitInput,
    lesion_order,
)
from rano.settings import ResponseSettings

BASE = dt.date(2024, 1, 8)
R = Response
S = ResponseSettings()


def o(lesion_id: str, ld: float, *, slices: int = 6, vol: float | None = None, **kw) -> LesionObservation:
    return LesionObservation(
        lesion_id,
        longest_diameter_mm=ld,
        perpendicular_diameter_mm=0.8 * ld,
        volume_mm3=vol if vol is not None else ld**3 / 2,
        slice_count=slices,
        **kw,
    )


def by_id(*obs: LesionObservation) -> dict[str, LesionObservation]:
    return {x.lesion_id: x for x in obs}


def visit(label: str = "FU1", day: int = 60, *obs: LesionObservation, **kw) -> VisitInput:
    return VisitInput(visit=label, date=BASE + dt.timedelta(days=day), observations=tuple(obs), **kw)


# --- section 3: target sums and response ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "obs", "sum_ld"),
    [
        ("s3: SLD sums the targets' LDs", [o("L1", 20), o("L2", 15)], 35.0),
        ("s3: an absent target counts 0 mm", [o("L2", 15)], 15.0),
        ("s3: a target marked too small counts too_small_mm", [o("L1", 2, too_small_to_measure=True)], 5.0),
        ("s3: a merged target counts 0 mm", [o("L1", 30), LesionObservation("L2", merged_into="L1")], 30.0),
        ("s3: a split target counts the sum of its fragments", [o("L1", 22, fragment_count=2)], 22.0),
    ],
)
def test_target_sums(rule, obs, sum_ld) -> None:
    assert target_sums(by_id(*obs), ("L1", "L2"), Criteria.RANO_BM, S).sum_ld_mm == sum_ld, rule


def test_target_sums_without_targets_are_whole_zeros() -> None:
    """Stored assessments have 0, not 0.0, for a patient without targets (built-in sum of nothing)."""
    sums = target_sums(by_id(o("L1", 8)), (), Criteria.RANO_BM, S)
    assert (repr(sums.sum_ld_mm), repr(sums.sum_volume_mm3), sums.per_target) == ("0", "0", {})


def test_volumetric_sum_is_the_criteria_sum() -> None:
    sums = target_sums(by_id(o("L1", 20, vol=4000)), ("L1",), Criteria.VOLUMETRIC, S)
    assert (sums.current, sums.per_target, sums.sum_ld_mm) == (4000, {"L1": 4000}, 20)


def test_nadir_is_the_smallest_sum_and_the_most_recent_on_a_tie() -> None:
    """Section 3: nadir = smallest sum before this visit, baseline included (ties: the most recent)."""
    history = [
        SumRecord(visit_index=0, visit="BL", total=35.0, per_target={}),
        SumRecord(visit_index=1, visit="FU1", total=22.0, per_target={}),
        SumRecord(visit_index=2, visit="FU2", total=22.0, per_target={}),
        SumRecord(visit_index=3, visit="FU3", total=30.0, per_target={}),
    ]
    assert nadir(history).visit == "FU2"
    assert nadir(history[:1]).visit == "BL"


MERGED_L2 = LesionObservation("L2", present=False, merged_into="L3")


def _targets(obs, nadir_lds=(20.0, 15.0), criteria=Criteria.RANO_BM, settings=S, baseline=35.0):
    targets = ("L1", "L2")
    observations = by_id(*obs)
    sums = target_sums(observations, targets, criteria, settings)
    per_target = dict(zip(targets, nadir_lds, strict=True))
    low = SumRecord(visit_index=1, visit="FU1", total=sum(nadir_lds), per_target=per_target)
    return target_response(observations, targets, sums, baseline, low, criteria, settings)


@pytest.mark.parametrize(
    ("rule", "obs", "nadir_lds", "response"),
    [
        ("s3: CR, every target absent", [], (20.0, 15.0), R.CR),
        ("s3: a target measured 0 mm is present: PR, not CR", [o("L1", 0.0)], (20.0, 15.0), R.PR),
        ("s3: a target merged into a non-target is not absent", [o("L3", 20), MERGED_L2], (20.0, 15.0), R.PR),
        ("s3: PR at exactly -30% of baseline (24.5 of 35)", [o("L1", 14.5), o("L2", 10)], (20.0, 15.0), R.PR),
        ("s3: SD, -20% is neither PR nor PD", [o("L1", 16), o("L2", 12)], (20.0, 15.0), R.SD),
        ("s3: PD, +27% from nadir 22 and L1 +6 mm", [o("L1", 18), o("L2", 10)], (12.0, 10.0), R.PD),
        ("s3: not PD, +20% on the sum, no lesion +5 mm", [o("L1", 23.5), o("L2", 18.5)], (20.0, 15.0), R.SD),
        ("s3: not PD, one lesion +6 mm but the sum +17%", [o("L1", 26), o("L2", 15)], (20.0, 15.0), R.SD),
    ],
)
def test_target_response(rule, obs, nadir_lds, response) -> None:
    result = _targets(obs, nadir_lds)
    assert result.response is response, rule
    assert result.reasons and result.reasons[0].endswith(f"-> target {response}"), result.reasons


def test_target_response_without_targets_is_none() -> None:
    """Section 6: no measurable disease at baseline: no target response, no percentages."""
    sums = target_sums({}, (), Criteria.RANO_BM, S)
    low = SumRecord(visit_index=0, visit="BL", total=0, per_target={})
    result = target_response({}, (), sums, 0, low, Criteria.RANO_BM, S)
    assert (result.response, result.reasons, result.pct_change_from_baseline) == (None, (), None)


def test_target_notes_follow_the_rule_outcome() -> None:
    """Section 3: targets too small, merged or split are counted as the reasons say."""
    result = _targets(
        [o("L1", 30, fragment_count=2), LesionObservation("L2", merged_into="L1")],
        (20.0, 15.0),
    )
    # In target order: L1 split, then L2 merged.
    assert result.reasons[1:] == (words.target_split("L1", 2), words.target_merged("L2", "L1"))
    assert _targets([o("L1", 2, too_small_to_measure=True)]).reasons[-1] == words.target_too_small("L1", 5.0)


def test_not_pd_note_names_the_per_lesion_rule() -> None:
    result = _targets([o("L1", 23.5), o("L2", 18.5)])
    assert result.reasons[-1] == words.sum_above_nadir_without_growth(20.0, 5.0)


@pytest.mark.parametrize(
    ("rule", "volumes", "nadir_volumes", "response"),
    [
        ("s8: PR at <= 35% of the baseline volume sum", (1000.0, 300.0), (4000.0, 3000.0), R.PR),
        ("s8: PD at >= 173% of the nadir volume sum", (7000.0, 3000.0), (3000.0, 2000.0), R.PD),
        ("s8: 0 mm3 after a 0 mm3 nadir is not PD", (0.0, 0.0), (0.0, 0.0), R.PR),
    ],
)
def test_volumetric_target_response(rule, volumes, nadir_volumes, response) -> None:
    obs = [o(f"L{k + 1}", 10, vol=v) for k, v in enumerate(volumes)]
    result = _targets(obs, nadir_volumes, criteria=Criteria.VOLUMETRIC, baseline=7000.0)
    assert result.response is response, rule


# --- section 4: non-targets ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "obs", "history", "flags"),
    [
        ("s4: +6 mm and +75% from its own nadir is flagged", [o("L3", 14)], [8.0], ("L3",)),
        ("s4: +4 mm is not flagged", [o("L3", 12)], [8.0], ()),
        ("s4: +5 mm but +17% is not flagged", [o("L3", 35)], [30.0, 32.0], ()),
        ("s4: the nadir is the smallest earlier LD", [o("L3", 14)], [20.0, 9.0], ("L3",)),
        ("s4: back at 6 mm after being absent (nadir 0) is flagged", [o("L3", 6)], [8.0, 0.0], ("L3",)),
        ("s4: absent is never flagged", [], [8.0], ()),
    ],
)
def test_non_target_growth_flag(rule, obs, history, flags) -> None:
    result = non_target_response(visit("FU1", 60, *obs), by_id(*obs), ("L3",), {"L3": history})
    assert result.growth_flags == flags, rule
    assert len(result.reasons) == len(flags) + 1


MERGED_L3 = LesionObservation("L3", merged_into="L1")


@pytest.mark.parametrize(
    ("rule", "obs", "reader_pd", "response"),
    [
        ("s4: CR, every non-target absent", [], False, R.CR),
        ("s4: NON-CR/NON-PD, one present", [o("L3", 8)], False, R.NON_CR_NON_PD),
        ("s4: merged into another lesion, still there", [MERGED_L3], False, R.NON_CR_NON_PD),
        ("s4: PD only from the reader", [o("L3", 30)], True, R.PD),
    ],
)
def test_non_target_response(rule, obs, reader_pd, response) -> None:
    observations = by_id(o("L1", 20), *obs)
    fu = visit("FU1", 60, *observations.values(), unequivocal_non_target_progression=reader_pd)
    result = non_target_response(fu, observations, ("L3",), {"L3": [8.0]})
    assert result.response is response, rule
    assert result.reasons[-1].endswith(f"-> non-target {response}")


def test_non_target_progression_needs_non_targets() -> None:
    fu = visit("FU1", 60, unequivocal_non_target_progression=True)
    with pytest.raises(ResponseInputError, match="no non-targets"):
        non_target_response(fu, {}, (), {})
    assert non_target_response(visit(), {}, (), {}).response is None


@pytest.mark.parametrize(
    ("obs", "ld"),
    [(None, 0.0), (o("L3", 9), 9.0), (LesionObservation("L3", present=False), 0.0)],
)
def test_own_ld(obs, ld) -> None:
    assert own_ld(obs) == ld
    assert own_ld(LesionObservation("L3", present=False, merged_into="L1")) is None


# --- section 5: new lesions ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "obs", "status", "equivocal"),
    [
        ("s5: LD >= 5 mm on >= 2 slices is unequivocal", o("L4", 5, slices=2), NewLesions.UNEQUIVOCAL, ()),
        ("s5: LD under 5 mm is equivocal", o("L4", 4.9, slices=3), NewLesions.EQUIVOCAL, ("L4",)),
        ("s5: one slice is equivocal", o("L4", 9, slices=1), NewLesions.EQUIVOCAL, ("L4",)),
        (
            "s5: marked too small is equivocal",
            o("L4", 9, too_small_to_measure=True),
            NewLesions.EQUIVOCAL,
            ("L4",),
        ),
    ],
)
def test_new_lesion_status(rule, obs, status, equivocal) -> None:
    fu = visit("FU1", 60, o("L1", 20), obs)
    result = new_lesions(fu, by_id(o("L1", 20), obs), {"L1": "BL"}, {}, S)
    assert (result.status, result.new_ids, result.equivocal_ids) == (status, ("L4",), equivocal), rule
    assert dict(result.pending) == dict.fromkeys(equivocal, fu)


def test_a_lesion_seen_before_is_not_new() -> None:
    result = new_lesions(visit(), by_id(o("L1", 20)), {"L1": "BL"}, {}, S)
    assert (result.status, result.new_ids, result.reasons) == (NewLesions.NONE, (), ())


def test_new_lesions_in_lesion_order() -> None:
    obs = by_id(o("L10", 6), o("L9", 6))
    assert new_lesions(visit(), obs, {}, {}, S).new_ids == ("L9", "L10")
    assert sorted(["L10", "L9", "L1"], key=lesion_order) == ["L1", "L9", "L10"]


@pytest.mark.parametrize(
    ("rule", "present", "status", "backdate"),
    [
        ("s5: still present at the next scan: confirmed, dated back", True, NewLesions.UNEQUIVOCAL, BASE),
        ("s5: no longer seen: the flag is cleared", False, NewLesions.NONE, None),
    ],
)
def test_equivocal_new_lesion_at_the_next_scan(rule, present, status, backdate) -> None:
    first = visit("FU1", 0, o("L4", 4))
    obs = by_id(o("L4", 4)) if present else {}
    result = new_lesions(visit("FU2", 60, *obs.values()), obs, {"L4": "FU1"}, {"L4": first}, S)
    assert (result.status, result.backdated_progression_date) == (status, backdate), rule
    assert result.pending == {}
    if present:
        assert result.reasons == (words.equivocal_new_lesion_confirmed("L4", "FU1", BASE),)
    else:
        assert result.reasons == (words.equivocal_new_lesion_gone("L4"),)


# --- section 6: overall response ---------------------------------------------------------------------------


UNEQUIVOCAL, EQUIVOCAL = NewLesions.UNEQUIVOCAL, NewLesions.EQUIVOCAL


def row(rule, target, non_target, overall, *, new=NewLesions.NONE, steroids="none", clinical="stable"):
    """One row of the section 6 table; no target response means no measurable disease at baseline."""
    return pytest.param(
        target, non_target, new, Steroids(steroids), ClinicalStatus(clinical), overall, id=rule
    )


@pytest.mark.parametrize(
    ("target", "non_target", "new", "steroids", "clinical", "overall"),
    [
        row("s6: target PD -> PD", R.PD, R.NON_CR_NON_PD, R.PD),
        row("s6: non-target PD -> PD", R.PR, R.PD, R.PD),
        row("s6: unequivocal new lesion -> PD", R.PR, None, R.PD, new=UNEQUIVOCAL),
        row("s6: clinical status worse -> PD", R.CR, None, R.PD, clinical="worse"),
        row("s6: an equivocal new lesion is no PD", R.SD, None, R.SD, new=EQUIVOCAL),
        row("s6: CR needs no non-target and no steroids", R.CR, R.CR, R.CR),
        row("s6: targets CR, non-targets present -> PR", R.CR, R.NON_CR_NON_PD, R.PR),
        row("s6: targets CR, steroids stable -> PR", R.CR, None, R.PR, steroids="stable"),
        row("s6: targets CR, steroids decreased -> PR", R.CR, None, R.PR, steroids="decreased"),
        row("s6: targets CR, steroids increased -> SD", R.CR, None, R.SD, steroids="increased"),
        row("s6: targets PR, steroids increased -> SD", R.PR, None, R.SD, steroids="increased"),
        row("s6: a steroid increase alone is never PD", R.SD, None, R.SD, steroids="increased"),
        row("s6: target PR -> PR", R.PR, R.NON_CR_NON_PD, R.PR, steroids="stable", clinical="improved"),
        row("s6: no measurable disease, non-targets gone -> CR", None, R.CR, R.CR),
        row("s6: no measurable disease, steroids", None, R.CR, R.NON_CR_NON_PD, steroids="stable"),
        row("s6: no measurable disease, non-targets present", None, R.NON_CR_NON_PD, R.NON_CR_NON_PD),
        row("s6: no measurable disease, new lesion -> PD", None, R.NON_CR_NON_PD, R.PD, new=UNEQUIVOCAL),
    ],
)
def test_overall_table(target, non_target, new, steroids, clinical, overall) -> None:
    fu = visit("FU1", 60, steroids=steroids, clinical_status=clinical)
    result = overall_response(
        fu,
        target=target,
        non_target=non_target,
        new_lesions=new,
        has_targets=target is not None,
        has_non_targets=non_target is not None,
        settings=S,
    )
    assert result.response is overall
    assert any(r.endswith(f"-> overall {overall}") for r in result.reasons), result.reasons


def _overall(target, new, settings=S, clinical=ClinicalStatus.STABLE):
    return overall_response(
        visit("FU1", 60, clinical_status=clinical),
        target=target,
        non_target=R.PD if clinical is ClinicalStatus.WORSE else None,
        new_lesions=new,
        has_targets=True,
        has_non_targets=clinical is ClinicalStatus.WORSE,
        settings=settings,
    )


def test_overall_pd_names_every_cause() -> None:
    result = _overall(R.PD, UNEQUIVOCAL, clinical=ClinicalStatus.WORSE)
    causes = "target PD + non-target PD + unequivocal new lesion + clinical status worse"
    assert result.reasons == (f"{causes} -> overall PD",)


def test_immunotherapy_note_and_possible_new_lesion_flag() -> None:
    """Section 5: with immunotherapy new lesions alone are no PD (the note comes before the outcome);
    an equivocal new lesion adds the possible-new-lesion flag after it."""
    result = _overall(R.PR, UNEQUIVOCAL, settings=ResponseSettings(immunotherapy=True))
    assert result.response is R.PR and result.reasons == (words.IMMUNOTHERAPY_NEW_LESIONS, words.OVERALL_PR)
    result = _overall(R.SD, EQUIVOCAL)
    assert result.reasons == (words.OVERALL_SD, words.POSSIBLE_NEW_LESION_FLAG)


@pytest.mark.parametrize(
    ("clinical", "response"),
    [(ClinicalStatus.STABLE, R.NE), (ClinicalStatus.WORSE, R.PD)],
)
def test_missing_imaging(clinical, response) -> None:
    """Section 6: missing imaging -> NE, but clinical status worse is PD on its own."""
    fu = visit("FU1", 60, imaging_available=False, clinical_status=clinical)
    assert missing_imaging(fu).response is response


# --- section 7: confirmation, best overall response, progression date -----------------------------------


def va(label: str, day: int, overall: Response | None, **kw) -> VisitAssessment:
    """A visit as section 7 reads it: date, overall response, and what ``kw`` sets; the rest empty."""
    fields = {
        "visit": label,
        "date": BASE + dt.timedelta(days=day),
        "is_baseline": overall is None,
        "criteria": Criteria.RANO_BM,
        "overall_response": overall,
        "new_lesion_ids": (),
        "possible_new_lesion_ids": (),
        "non_target_growth_flags": (),
        "reasons": (),
    }
    empty = [f.name for f in dataclasses.fields(VisitAssessment) if f.name not in fields]
    return VisitAssessment(**(dict.fromkeys(empty) | fields | kw))


@pytest.mark.parametrize(
    ("rule", "course", "confirmed_by"),
    [
        ("s7: same response >= 28 days later confirms", [(60, R.PR), (90, R.PR)], "FU2"),
        ("s7: under confirmation_days does not", [(60, R.PR), (80, R.PR)], None),
        ("s7: a better response confirms a PR", [(60, R.PR), (90, R.CR)], "FU2"),
        ("s7: a PR does not confirm a CR", [(60, R.CR), (90, R.PR)], None),
        ("s7: PD in between ends the search", [(60, R.PR), (70, R.PD), (120, R.PR)], None),
        ("s7: an SD in between does not end it", [(60, R.PR), (70, R.SD), (120, R.PR)], "FU3"),
    ],
)
def test_confirmation(rule, course, confirmed_by) -> None:
    visits = [va("BL", 0, None)] + [va(f"FU{k + 1}", d, r) for k, (d, r) in enumerate(course)]
    found = confirmation(visits, 1, S)
    assert found is not None and found.confirmed_by == confirmed_by, rule
    assert found.confirmed is (confirmed_by is not None) and len(found.reasons) == 1
    assert confirmation(visits, 0, S) is None  # baseline: nothing to confirm


@pytest.mark.parametrize(
    ("rule", "course", "has_targets", "bor"),
    [
        ("s7: confirmed CR beats confirmed PR", [(60, R.PR, True), (120, R.CR, True)], True, R.CR),
        ("s7: unconfirmed PR at >= 42 days counts as SD", [(60, R.PR, False)], True, R.SD),
        ("s7: SD before 42 days is NE", [(30, R.SD, None)], True, R.NE),
        ("s7: SD beats PD", [(50, R.SD, None), (100, R.PD, None)], True, R.SD),
        ("s7: only up to the first PD", [(30, R.PD, None), (90, R.PR, True)], True, R.PD),
        ("s6/7: no targets, SD shows NON-CR/NON-PD", [(60, R.NON_CR_NON_PD, None)], False, R.NON_CR_NON_PD),
    ],
)
def test_best_overall_response(rule, course, has_targets, bor) -> None:
    visits = [va("BL", 0, None)] + [va(f"FU{k + 1}", d, r, confirmed=c) for k, (d, r, c) in enumerate(course)]
    assert best_overall_response(visits, S, has_targets=has_targets) is bor, rule
    assert best_overall_response(visits[:1], S, has_targets=has_targets) is None


def test_progression_date_is_the_first_pd_or_its_backdated_scan() -> None:
    """Section 7: the date of the first PD visit, or the backdated date of section 5."""
    first_scan = BASE + dt.timedelta(days=60)
    visits = [
        va("BL", 0, None),
        va("FU1", 60, R.SD),
        va("FU2", 120, R.PD, backdated_progression_date=first_scan),
        va("FU3", 180, R.PD),
    ]
    outcome = course_outcome(visits, S, has_targets=True)
    assert (outcome.progression_visit, outcome.progression_date) == ("FU2", first_scan)
    outcome = course_outcome(visits[:2], S, has_targets=True)
    assert (outcome.progression_visit, outcome.progression_date) == (None, None)


def test_override_keeps_the_rules_answer_in_the_reasons() -> None:
    """A radiologist's overall response replaces the rules' one; a reader's PD is not backdated."""
    rules = va("FU1", 60, R.SD, reasons=("target SD -> overall SD",))
    read = overridden(rules, "PD")
    assert read.overall_response is R.PD and read.backdated_progression_date is None
    assert read.reasons[-1] == "overall response set by the radiologist: PD (rules: SD)"
    assert overridden(rules, "SD") is rules and overridden(rules, None) is rules
    with pytest.raises(ResponseInputError, match="unknown overridden response"):
        overridden(rules, "XX")


def test_the_package_keeps_its_public_names() -> None:
    """The service layer calls the engine as ``from rano import response as engine``."""
    from rano import response as engine

    names = [
        "Assessment",
        "ClinicalStatus",
        "Criteria",
        "LesionFlags",
        "LesionObservation",
        "NewLesions",
        "ReaderInputs",
        "Response",
        "Role",
        "Steroids",
        "TargetSelection",
        "VisitAssessment",
        "VisitInput",
        "assess",
        "compare_criteria",
        "select_targets",
    ]
    assert sorted(engine.__all__) == sorted(names)
    assert all(getattr(engine, name) is not None for name in names)
