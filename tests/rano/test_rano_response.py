"""Every rule of rano-bm.md sections 2-8 as a row of a parametrised table, citing its section."""

from __future__ import annotations

import datetime as dt

import pytest

from rano import ENGINE_VERSION
from rano.errors import ResponseInputError
from rano.response import (
    ClinicalStatus,
    Criteria,
    LesionFlags,
    LesionObservation,
    NewLesions,
    ReaderInputs,
    Response,
    Steroids,
    VisitInput,
    assess,
    compare_criteria,
    select_targets,
)
from rano.settings import ResponseSettings

BASE = dt.date(2024, 1, 8)


def o(lesion_id: str, ld: float, *, slices: int = 6, vol: float | None = None, **kw) -> LesionObservation:
    """An observation; perpendicular 80% of LD and volume of a sphere of that diameter by default."""
    return LesionObservation(
        lesion_id,
        longest_diameter_mm=ld,
        perpendicular_diameter_mm=kw.pop("perp", 0.8 * ld),
        volume_mm3=vol if vol is not None else 3.14159 / 6 * ld**3,
        slice_count=slices,
        **kw,
    )


def v(label: str, day: int, *obs: LesionObservation, **kw) -> VisitInput:
    return VisitInput(label, BASE + dt.timedelta(days=day), tuple(obs), **kw)


# Baseline used by most rows: targets L1 (20 mm) and L2 (15 mm), SLD 35 mm; L3 (8 mm) is a non-target.
BL = v("BL", 0, o("L1", 20), o("L2", 15), o("L3", 8))
BL_TARGETS_ONLY = v("BL", 0, o("L1", 20), o("L2", 15))

R = Response
# (section, rule, visits, reader, settings, expected (target, non-target, new, overall) at the last visit)
RULES = [
    (
        "3",
        "PR: SLD 22 mm is 37% below baseline 35 mm",
        [BL, v("FU1", 60, o("L1", 12), o("L2", 10), o("L3", 8))],
        None,
        None,
        (R.PR, R.NON_CR_NON_PD, NewLesions.NONE, R.PR),
    ),
    (
        "3",
        "PR at exactly -30% (SLD 24.5 of 35)",
        [BL_TARGETS_ONLY, v("FU1", 60, o("L1", 14.5), o("L2", 10))],
        None,
        None,
        (R.PR, None, NewLesions.NONE, R.PR),
    ),
    (
        "3",
        "SD: -20% from baseline is neither PR nor PD",
        [BL_TARGETS_ONLY, v("FU1", 60, o("L1", 16), o("L2", 12))],
        None,
        None,
        (R.SD, None, NewLesions.NONE, R.SD),
    ),
    (
        "3",
        "PD: SLD 28 >= 120% of nadir 22 (FU1) and L1 +6 mm over its nadir-visit LD",
        [BL_TARGETS_ONLY, v("FU1", 60, o("L1", 12), o("L2", 10)), v("FU2", 120, o("L1", 18), o("L2", 10))],
        None,
        None,
        (R.PD, None, NewLesions.NONE, R.PD),
    ),
    (
        "3",
        "not PD: +20% on the sum but no target grew 5 mm (per-lesion rule, unlike RECIST)",
        [BL_TARGETS_ONLY, v("FU1", 60, o("L1", 23.5), o("L2", 18.5))],
        None,
        None,
        (R.SD, None, NewLesions.NONE, R.SD),
    ),
    (
        "3",
        "not PD: a target grew 6 mm but the sum is only +17% from nadir",
        [BL_TARGETS_ONLY, v("FU1", 60, o("L1", 26), o("L2", 15))],
        None,
        None,
        (R.SD, None, NewLesions.NONE, R.SD),
    ),
    (
        "3",
        "nadir includes baseline: +20% from baseline with +5 mm is PD",
        [BL_TARGETS_ONLY, v("FU1", 60, o("L1", 27), o("L2", 15))],
        None,
        None,
        (R.PD, None, NewLesions.NONE, R.PD),
    ),
    (
        "3",
        "absent target counts 0 mm (SLD 15 -> PR)",
        [BL_TARGETS_ONLY, v("FU1", 60, o("L2", 15))],
        None,
        None,
        (R.PR, None, NewLesions.NONE, R.PR),
    ),
    (
        "3",
        "target marked too small counts too_small_mm, so the targets are not CR",
        [BL_TARGETS_ONLY, v("FU1", 60, o("L1", 2, too_small_to_measure=True))],
        None,
        None,
        (R.PR, None, NewLesions.NONE, R.PR),
    ),
    (
        "3",
        "absent target reappearing keeps its identity and counts again: PD from nadir 15 mm",
        [BL_TARGETS_ONLY, v("FU1", 60, o("L2", 15)), v("FU2", 120, o("L1", 10), o("L2", 15))],
        None,
        None,
        (R.PD, None, NewLesions.NONE, R.PD),
    ),
    (
        "3",
        "CR: every target absent (no non-targets, no steroids)",
        [BL_TARGETS_ONLY, v("FU1", 60)],
        None,
        None,
        (R.CR, None, NewLesions.NONE, R.CR),
    ),
    (
        "3",
        "merged target counts 0 mm, the merged mass counts once",
        [BL_TARGETS_ONLY, v("FU1", 60, o("L1", 30), LesionObservation("L2", merged_into="L1"))],
        None,
        None,
        (R.SD, None, NewLesions.NONE, R.SD),
    ),
    (
        "4",
        "non-target CR: every non-target absent (targets PR)",
        [BL, v("FU1", 60, o("L1", 12), o("L2", 10))],
        None,
        None,
        (R.PR, R.CR, NewLesions.NONE, R.PR),
    ),
    (
        "3/4",
        "a non-target merged into a target is inside the merged mass: present, so not non-target CR",
        [
            BL,
            v("FU1", 60, o("L1", 12), o("L2", 10), LesionObservation("L3", present=False, merged_into="L1")),
        ],
        None,
        None,
        (R.PR, R.NON_CR_NON_PD, NewLesions.NONE, R.PR),
    ),
    (
        "3",
        "a target merged into a non-target counts 0 mm but has not disappeared: no target CR",
        [BL, v("FU1", 60, LesionObservation("L2", present=False, merged_into="L3"), o("L3", 20))],
        None,
        None,
        (R.PR, R.NON_CR_NON_PD, NewLesions.NONE, R.PR),
    ),
    (
        "4",
        "non-target PD only from the reader's unequivocal progression",
        [BL, v("FU1", 60, o("L1", 20), o("L2", 15), o("L3", 20), unequivocal_non_target_progression=True)],
        None,
        None,
        (R.SD, R.PD, NewLesions.NONE, R.PD),
    ),
    (
        "4",
        "non-target growth >= 5 mm and 20% is only flagged, not PD",
        [BL, v("FU1", 60, o("L1", 20), o("L2", 15), o("L3", 14))],
        None,
        None,
        (R.SD, R.NON_CR_NON_PD, NewLesions.NONE, R.SD),
    ),
    (
        "5",
        "unequivocal new lesion (LD >= 5 mm on >= 2 slices) -> PD",
        [BL_TARGETS_ONLY, v("FU1", 60, o("L1", 12), o("L2", 10), o("L4", 6, slices=3))],
        None,
        None,
        (R.PR, None, NewLesions.UNEQUIVOCAL, R.PD),
    ),
    (
        "5",
        "new lesion under 5 mm is equivocal: no PD",
        [BL_TARGETS_ONLY, v("FU1", 60, o("L1", 12), o("L2", 10), o("L4", 4, slices=3))],
        None,
        None,
        (R.PR, None, NewLesions.EQUIVOCAL, R.PR),
    ),
    (
        "5",
        "new lesion on one slice is equivocal",
        [BL_TARGETS_ONLY, v("FU1", 60, o("L1", 20), o("L2", 15), o("L4", 9, slices=1))],
        None,
        None,
        (R.SD, None, NewLesions.EQUIVOCAL, R.SD),
    ),
    (
        "5",
        "equivocal new lesion still present at the next scan -> PD there",
        [
            BL_TARGETS_ONLY,
            v("FU1", 60, o("L1", 20), o("L2", 15), o("L4", 4)),
            v("FU2", 120, o("L1", 20), o("L2", 15), o("L4", 4)),
        ],
        None,
        None,
        (R.SD, None, NewLesions.UNEQUIVOCAL, R.PD),
    ),
    (
        "5",
        "equivocal new lesion gone at the next scan -> no PD",
        [
            BL_TARGETS_ONLY,
            v("FU1", 60, o("L1", 20), o("L2", 15), o("L4", 4)),
            v("FU2", 120, o("L1", 20), o("L2", 15)),
        ],
        None,
        None,
        (R.SD, None, NewLesions.NONE, R.SD),
    ),
    (
        "5",
        "immunotherapy: new lesions alone do not define progression",
        [BL_TARGETS_ONLY, v("FU1", 60, o("L1", 12), o("L2", 10), o("L4", 9))],
        None,
        ResponseSettings(immunotherapy=True),
        (R.PR, None, NewLesions.UNEQUIVOCAL, R.PR),
    ),
    (
        "6",
        "clinical status worse -> PD",
        [BL_TARGETS_ONLY, v("FU1", 60, o("L1", 12), o("L2", 10), clinical_status=ClinicalStatus.WORSE)],
        None,
        None,
        (R.PR, None, NewLesions.NONE, R.PD),
    ),
    (
        "6",
        "targets CR but non-targets present -> PR",
        [BL, v("FU1", 60, o("L3", 8))],
        None,
        None,
        (R.CR, R.NON_CR_NON_PD, NewLesions.NONE, R.PR),
    ),
    (
        "6",
        "targets CR but steroids stable -> PR",
        [BL_TARGETS_ONLY, v("FU1", 60, steroids=Steroids.STABLE)],
        None,
        None,
        (R.CR, None, NewLesions.NONE, R.PR),
    ),
    (
        "6",
        "targets CR but steroids decreased -> PR",
        [BL_TARGETS_ONLY, v("FU1", 60, steroids=Steroids.DECREASED)],
        None,
        None,
        (R.CR, None, NewLesions.NONE, R.PR),
    ),
    (
        "6",
        "targets CR but steroids increased -> SD",
        [BL_TARGETS_ONLY, v("FU1", 60, steroids=Steroids.INCREASED)],
        None,
        None,
        (R.CR, None, NewLesions.NONE, R.SD),
    ),
    (
        "6",
        "targets PR but steroids increased -> SD",
        [BL_TARGETS_ONLY, v("FU1", 60, o("L1", 12), o("L2", 10), steroids=Steroids.INCREASED)],
        None,
        None,
        (R.PR, None, NewLesions.NONE, R.SD),
    ),
    (
        "6",
        "steroid increase alone never makes PD",
        [BL_TARGETS_ONLY, v("FU1", 60, o("L1", 20), o("L2", 15), steroids=Steroids.INCREASED)],
        None,
        None,
        (R.SD, None, NewLesions.NONE, R.SD),
    ),
    (
        "6",
        "missing imaging -> NE",
        [BL, v("FU1", 60, imaging_available=False)],
        None,
        None,
        (R.NE, R.NE, None, R.NE),
    ),
    (
        "6",
        "missing imaging but clinical status worse -> PD (any PD criterion)",
        [BL, v("FU1", 60, imaging_available=False, clinical_status=ClinicalStatus.WORSE)],
        None,
        None,
        (R.NE, R.NE, None, R.PD),
    ),
    (
        "6",
        "no measurable disease: non-targets present -> NON-CR/NON-PD",
        [v("BL", 0, o("L3", 8)), v("FU1", 60, o("L3", 8))],
        None,
        None,
        (None, R.NON_CR_NON_PD, NewLesions.NONE, R.NON_CR_NON_PD),
    ),
    (
        "6",
        "no measurable disease: non-targets gone, no steroids -> CR",
        [v("BL", 0, o("L3", 8)), v("FU1", 60)],
        None,
        None,
        (None, R.CR, NewLesions.NONE, R.CR),
    ),
    (
        "6",
        "no measurable disease: unequivocal new lesion -> PD",
        [v("BL", 0, o("L3", 8)), v("FU1", 60, o("L3", 8), o("L4", 7))],
        None,
        None,
        (None, R.NON_CR_NON_PD, NewLesions.UNEQUIVOCAL, R.PD),
    ),
    (
        "2",
        "a cystic lesion is non-measurable, so the patient has only L2 as target",
        [BL_TARGETS_ONLY, v("FU1", 60, o("L1", 40), o("L2", 15))],
        ReaderInputs((LesionFlags("L1", cystic=True),)),
        None,
        (R.SD, R.NON_CR_NON_PD, NewLesions.NONE, R.SD),
    ),
    (
        "2",
        "reader target override: L2 alone as target",
        [BL_TARGETS_ONLY, v("FU1", 60, o("L1", 30), o("L2", 9))],
        ReaderInputs(target_ids=("L2",)),
        None,
        (R.PR, R.NON_CR_NON_PD, NewLesions.NONE, R.PR),
    ),
    (
        "8",
        "volumetric PR: volume sum <= 35% of baseline while the diameter sum is SD",
        [v("BL", 0, o("L1", 20, vol=4000)), v("FU1", 60, o("L1", 16, vol=1300))],
        None,
        "volumetric",
        (R.PR, None, NewLesions.NONE, R.PR),
    ),
    (
        "8",
        "volumetric PD: volume sum >= 173% of nadir",
        [v("BL", 0, o("L1", 20, vol=4000)), v("FU1", 60, o("L1", 21, vol=7000))],
        None,
        "volumetric",
        (R.PD, None, NewLesions.NONE, R.PD),
    ),
    (
        "8",
        "volumetric SD: +70% of nadir is below the 73% threshold",
        [v("BL", 0, o("L1", 20, vol=4000)), v("FU1", 60, o("L1", 21, vol=6800))],
        None,
        "volumetric",
        (R.SD, None, NewLesions.NONE, R.SD),
    ),
]


@pytest.mark.parametrize(
    ("section", "rule", "visits", "reader", "settings", "expected"),
    RULES,
    ids=[f"s{r[0]}-{r[1][:60]}" for r in RULES],
)
def test_rule_table(section, rule, visits, reader, settings, expected) -> None:
    criteria = Criteria.RANO_BM
    if settings == "volumetric":
        criteria, settings = Criteria.VOLUMETRIC, None
    result = assess(visits, reader or ReaderInputs(), settings or ResponseSettings(), criteria)
    last = result.visits[-1]
    assert (
        last.target_response,
        last.non_target_response,
        last.new_lesions,
        last.overall_response,
    ) == expected
    assert last.reasons, "every result carries its reasons"
    first = result.visits[0]
    assert first.is_baseline and first.overall_response is None and first.target_response is None


def test_reason_words_for_target_pd() -> None:
    res = assess(
        [BL_TARGETS_ONLY, v("FU1", 60, o("L1", 12), o("L2", 10)), v("FU2", 120, o("L1", 18), o("L2", 10))]
    )
    text = " ".join(res.visits[-1].reasons)
    assert "SLD 28.0 mm is 27% above nadir 22.0 mm (FU1)" in text and "L1 grew 6.0 mm" in text
    assert res.visits[-1].nadir_sum == 22.0 and res.visits[-1].nadir_visit == "FU1"
    assert res.visits[-1].pct_change_from_baseline == pytest.approx(-20.0)
    assert res.visits[-1].pct_change_from_nadir == pytest.approx(100 * 6 / 22)


@pytest.mark.parametrize(
    ("rule", "visits", "settings", "criteria", "response", "words", "not_words"),
    [
        (
            "section 6: -29.97% is not PR; '-30%' would say it is",
            [v("BL", 0, o("L1", 30)), v("FU1", 60, o("L1", 21.01))],
            None,
            Criteria.RANO_BM,
            R.SD,
            "SLD 21.0 mm (-29.97% from baseline, -29.97% from nadir (BL)) -> target SD",
            "-30%",
        ),
        (
            "section 6: +19.99% from nadir is not PD; '+20%' would say it is",
            [v("BL", 0, o("L1", 20)), v("FU1", 60, o("L1", 14)), v("FU2", 120, o("L1", 16.799))],
            None,
            Criteria.RANO_BM,
            R.SD,
            "(-16% from baseline, +19.99% from nadir (FU1)) -> target SD",
            "+20%",
        ),
        (
            "usual values keep whole percents",
            [v("BL", 0, o("L1", 20)), v("FU1", 60, o("L1", 16))],
            None,
            Criteria.RANO_BM,
            R.SD,
            "SLD 16.0 mm (-20% from baseline, -20% from nadir (BL)) -> target SD",
            "-20.0",
        ),
        (
            "section 8: -64.99% of the volume sum is not volumetric PR",
            [v("BL", 0, o("L1", 20, vol=1000)), v("FU1", 60, o("L1", 15, vol=350.1))],
            None,
            Criteria.VOLUMETRIC,
            R.SD,
            "(-64.99% from baseline, -64.99% from nadir (BL)) -> target SD",
            "-65%",
        ),
        (
            "a fractional PD threshold met exactly prints as met: 20.4%, not 20%",
            [v("BL", 0, o("L1", 20)), v("FU1", 60, o("L1", 24.08))],
            ResponseSettings(pd_threshold=20.4, pd_min_lesion_increase_mm=4),
            Criteria.RANO_BM,
            R.PD,
            "SLD 24.1 mm is 20.4% above nadir 20.0 mm (BL); L1 grew 4.1 mm -> target PD",
            "is 20% above",
        ),
        (
            "a fractional PD threshold in the not-PD note",
            [v("BL", 0, o("L1", 20)), v("FU1", 60, o("L1", 24.2))],
            ResponseSettings(pd_threshold=20.5),
            Criteria.RANO_BM,
            R.SD,
            "sum is >= 20.5% above nadir but no target grew 5 mm -> not PD",
            "sum is >= 20%",
        ),
    ],
    ids=lambda x: x if isinstance(x, str) and " " in x and len(x) > 30 else None,
)
def test_reason_percentages_agree_with_the_result(
    rule, visits, settings, criteria, response, words, not_words
) -> None:
    """rano-bm.md section 6: reasons are "in words a reader can check". A percentage rounded onto a
    threshold the value did not meet (or off one it met) contradicts the result: print more decimals."""
    last = assess(visits, settings=settings or ResponseSettings(), criteria=criteria).visits[-1]
    text = " ".join(last.reasons)
    assert last.target_response is response
    assert words in text and not_words not in text, text


@pytest.mark.parametrize(
    ("rule", "visits", "reader", "criteria", "response", "words"),
    [
        (
            "PD after a CR nadir (0 mm): no percentage above nadir",
            [BL_TARGETS_ONLY, v("FU1", 60), v("FU2", 120, o("L1", 12.9), o("L2", 20))],
            None,
            Criteria.RANO_BM,
            R.PD,
            "SLD 32.9 mm > nadir 0.0 mm (FU1); L2 grew 20.0 mm -> target PD",
        ),
        (
            "volumetric PD after a CR nadir",
            [BL_TARGETS_ONLY, v("FU1", 60), v("FU2", 120, o("L1", 10, vol=500))],
            None,
            Criteria.VOLUMETRIC,
            R.PD,
            "target volume sum 500.0 mm3 > nadir 0.0 mm3 (FU1) -> target PD",
        ),
        (
            "SD after a CR nadir (a protocol asking for a 20 mm increase of one lesion)",
            [v("BL", 0, o("L1", 20)), v("FU1", 60), v("FU2", 120, o("L1", 15))],
            None,
            Criteria.RANO_BM,
            R.SD,
            "SLD 15.0 mm (-25% from baseline, nadir 0.0 mm (FU1)) -> target SD",
        ),
        (
            "SD on a reader-selected target of 0 mm at baseline",
            [v("BL", 0, o("L1", 0)), v("FU1", 60, o("L1", 3))],
            ReaderInputs(target_ids=("L1",)),
            Criteria.RANO_BM,
            R.SD,
            "SLD 3.0 mm (baseline 0.0 mm, nadir 0.0 mm (BL)) -> target SD",
        ),
        (
            "PR on a reader-selected target of 0 mm at baseline",
            [v("BL", 0, o("L1", 0)), v("FU1", 60, o("L1", 0))],
            ReaderInputs(target_ids=("L1",)),
            Criteria.RANO_BM,
            R.PR,
            "SLD 0.0 mm <= 70% of baseline 0.0 mm -> target PR",
        ),
    ],
    ids=lambda x: x if isinstance(x, str) and " " in x else None,
)
def test_reasons_without_a_percentage(rule, visits, reader, criteria, response, words) -> None:
    """A change from a sum of 0 (a CR nadir, or a 0 mm baseline) has no percentage; the reason says
    what the rule compared instead of leaving a gap. (Settings: a 20 mm increase of one lesion for PD.)"""
    settings = ResponseSettings(pd_min_lesion_increase_mm=20)
    last = assess(visits, reader or ReaderInputs(), settings, criteria=criteria).visits[-1]
    text = " ".join(last.reasons)
    assert last.target_response is response
    assert words in text, text
    assert ", )" not in text and "(, " not in text and "mm 0.0" not in text, text


def test_growth_flag_names_the_non_target() -> None:
    res = assess([BL, v("FU1", 60, o("L1", 20), o("L2", 15), o("L3", 14))])
    assert res.visits[-1].non_target_growth_flags == ("L3",)
    res = assess([BL, v("FU1", 60, o("L1", 20), o("L2", 15), o("L3", 12))])  # +4 mm: no flag
    assert res.visits[-1].non_target_growth_flags == ()


def test_merged_non_target_keeps_its_own_nadir() -> None:
    """Section 4: a non-target inside a merged mass has no LD of its own, it is not 0 mm. When it
    separates again at 10 mm it grew 2 mm from its 8 mm nadir: no growth flag."""
    merged = LesionObservation("L3", present=False, merged_into="L1")
    res = assess(
        [
            BL,
            v("FU1", 60, o("L1", 20), o("L2", 15), merged),
            v("FU2", 120, o("L1", 20), o("L2", 15), o("L3", 10)),
        ]
    )
    assert res.visits[1].non_target_response is R.NON_CR_NON_PD
    assert "L3 (merged into L1)" in " ".join(res.visits[1].reasons)
    assert res.visits[2].non_target_growth_flags == ()


def test_equivocal_new_lesion_backdates_progression() -> None:
    """Section 5 / 7: PD declared at the confirming scan, progression dated to the first scan."""
    visits = [
        BL_TARGETS_ONLY,
        v("FU1", 60, o("L1", 20), o("L2", 15), o("L4", 4)),
        v("FU2", 120, o("L1", 20), o("L2", 15), o("L4", 6)),
    ]
    res = assess(visits)
    assert res.visits[1].overall_response is R.SD and res.visits[1].possible_new_lesion_ids == ("L4",)
    assert res.visits[2].overall_response is R.PD
    assert res.progression_visit == "FU2" and res.progression_date == visits[1].date
    assert res.first_seen["L4"] == "FU1"


@pytest.mark.parametrize(
    ("days", "responses", "confirmed"),
    [
        ((60, 90), (R.PR, R.PR), [True, False]),  # section 7: 30 days later, same response
        ((60, 80), (R.PR, R.PR), [False, False]),  # under confirmation_days (28)
        ((60, 90), (R.PR, R.CR), [True, False]),  # a better response confirms a PR
        ((60, 90, 120), (R.PR, R.PD, R.PR), [False, None, False]),  # PD in between
        ((60, 70, 100), (R.CR, R.CR, R.CR), [True, True, False]),  # the 10-day CR is too early to confirm
    ],
)
def test_confirmation(days, responses, confirmed) -> None:
    lds = {R.PR: (12, 10), R.CR: None, R.PD: (30, 15)}
    visits = [BL_TARGETS_ONLY]
    for i, (day, resp) in enumerate(zip(days, responses, strict=True)):
        pair = lds[resp]
        obs = () if pair is None else (o("L1", pair[0]), o("L2", pair[1]))
        visits.append(v(f"FU{i + 1}", day, *obs))
    res = assess(visits)
    assert [x.overall_response for x in res.visits[1:]] == list(responses)
    assert [x.confirmed for x in res.visits[1:]] == confirmed
    for x in res.visits:
        if x.confirmed_by is not None:
            by = next(y for y in res.visits if y.visit == x.confirmed_by)
            assert (by.date - x.date).days >= 28


PR_OBS = (o("L1", 12), o("L2", 10))
SD_OBS = (o("L1", 20), o("L2", 15))
PD_OBS = (o("L1", 30), o("L2", 15))


@pytest.mark.parametrize(
    ("rule", "schedule", "bor", "progression"),
    [
        ("confirmed PR", [(60, PR_OBS), (120, PR_OBS)], R.PR, None),
        ("confirmed CR beats confirmed PR", [(60, PR_OBS), (120, ()), (160, ())], R.CR, None),
        ("unconfirmed PR at >= 42 days counts as SD", [(60, PR_OBS)], R.SD, None),
        ("SD before 42 days then PD -> PD", [(30, SD_OBS), (60, PD_OBS)], R.PD, 60),
        ("SD before 42 days alone -> NE", [(30, SD_OBS)], R.NE, None),
        ("only up to the first PD", [(60, PD_OBS), (120, PR_OBS), (180, PR_OBS)], R.PD, 60),
        ("SD at >= 42 days then PD -> SD", [(50, SD_OBS), (100, PD_OBS)], R.SD, 100),
    ],
)
def test_best_overall_response_and_progression_date(rule, schedule, bor, progression) -> None:
    """Section 7: confirmed CR > confirmed PR > SD (>= min_sd_days) > PD > NE."""
    visits = [BL_TARGETS_ONLY] + [v(f"FU{i + 1}", d, *obs) for i, (d, obs) in enumerate(schedule)]
    res = assess(visits)
    assert res.best_overall_response is bor, rule
    expected_date = None if progression is None else BASE + dt.timedelta(days=progression)
    assert res.progression_date == expected_date


def test_baseline_only_has_no_bor() -> None:
    res = assess([BL])
    assert res.best_overall_response is None and res.progression_date is None


@pytest.mark.parametrize(
    ("rule", "baseline", "reader", "settings", "targets"),
    [
        (
            "s2: largest LD first, at most max_targets",
            [o(f"L{i}", 10 + i) for i in range(1, 8)],
            None,
            None,
            ("L7", "L6", "L5", "L4", "L3"),
        ),
        (
            "s2: max_targets setting",
            [o("L1", 11), o("L2", 12), o("L3", 13)],
            None,
            ResponseSettings(max_targets=2),
            ("L3", "L2"),
        ),
        (
            "s2: ties broken by larger volume",
            [o("L1", 12, vol=100), o("L2", 12, vol=300)],
            None,
            ResponseSettings(max_targets=1),
            ("L2",),
        ),
        ("s2: LD < 10 mm is not measurable", [o("L1", 9.9), o("L2", 10)], None, None, ("L2",)),
        (
            "s2: perpendicular < 5 mm is not measurable",
            [o("L1", 20, perp=4), o("L2", 11)],
            None,
            None,
            ("L2",),
        ),
        ("s2: one slice is not measurable", [o("L1", 20, slices=1), o("L2", 11)], None, None, ("L2",)),
        (
            "s2: slice spacing 6 mm needs LD >= 12 mm",
            [o("L1", 11, slice_spacing_mm=6.0), o("L2", 13, slice_spacing_mm=6.0)],
            None,
            None,
            ("L2",),
        ),
        (
            "s2: dural, bony, leptomeningeal, cystic are non-measurable",
            [o("L1", 30), o("L2", 29), o("L3", 28), o("L4", 27), o("L5", 11)],
            ReaderInputs(
                (
                    LesionFlags("L1", dural=True),
                    LesionFlags("L2", bony=True),
                    LesionFlags("L3", leptomeningeal=True),
                    LesionFlags("L4", cystic=True),
                )
            ),
            None,
            ("L5",),
        ),
        (
            "s2: radiosurgery-treated lesion needs the progressing flag",
            [o("L1", 30), o("L2", 25), o("L3", 11)],
            ReaderInputs(
                (
                    LesionFlags("L1", previously_irradiated=True),
                    LesionFlags("L2", previously_irradiated=True, progressing_since_treatment=True),
                )
            ),
            None,
            ("L2", "L3"),
        ),
        ("s2: reader override", [o("L1", 30), o("L2", 25)], ReaderInputs(target_ids=("L2",)), None, ("L2",)),
        (
            "s2: a lesion absent at baseline is never a target",
            [o("L1", 30), LesionObservation("L2", present=False)],
            None,
            None,
            ("L1",),
        ),
    ],
)
def test_target_selection(rule, baseline, reader, settings, targets) -> None:
    sel = select_targets(v("BL", 0, *baseline), reader or ReaderInputs(), settings or ResponseSettings())
    assert sel.target_ids == targets, rule
    present = {x.lesion_id for x in baseline if x.present}
    assert set(sel.non_target_ids) == present - set(targets)


def test_volumetric_disagreement_is_reported() -> None:
    visits = [v("BL", 0, o("L1", 20, vol=4000)), v("FU1", 60, o("L1", 16, vol=1300))]
    diam, vol = assess(visits), assess(visits, criteria="volumetric")
    assert diam.visits[1].overall_response is R.SD and vol.visits[1].overall_response is R.PR
    assert compare_criteria(diam, vol)[0] == "FU1: RANO-BM SD, volumetric PR"
    assert vol.visits[1].baseline_sum == 4000 and vol.visits[1].pct_change_from_baseline == pytest.approx(
        -67.5
    )


def test_settings_and_engine_version_are_stored() -> None:
    s = ResponseSettings(pr_threshold=-25.0)
    res = assess([BL_TARGETS_ONLY, v("FU1", 60, o("L1", 16), o("L2", 10))], settings=s)
    assert res.settings == s.to_dict() and res.engine_version == ENGINE_VERSION
    assert all(v.settings == s.to_dict() and v.engine_version == ENGINE_VERSION for v in res.visits)
    assert res.visits[1].overall_response is R.PR  # -25.7% is PR under a -25% protocol


@pytest.mark.parametrize(
    ("visits", "reader", "message"),
    [
        ([], None, "at least one visit"),
        ([BL, v("FU1", 0)], None, "dates must increase"),
        ([BL, v("BL", 30)], None, "unique"),
        ([v("BL", 0, imaging_available=False)], None, "baseline"),
        ([BL], ReaderInputs((LesionFlags("L9", cystic=True),)), "unknown lesion"),
        ([BL], ReaderInputs(target_ids=("L9",)), "not present at baseline"),
        ([BL], ReaderInputs(target_ids=("L1", "L1")), "twice"),
        ([BL], ReaderInputs(target_ids=tuple(f"L{i}" for i in range(6))), "at most 5"),
        ([BL_TARGETS_ONLY, v("FU1", 30, unequivocal_non_target_progression=True)], None, "no non-targets"),
    ],
)
def test_bad_input_raises(visits, reader, message) -> None:
    with pytest.raises(ResponseInputError, match=message):
        assess(visits, reader or ReaderInputs())


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: VisitInput("FU1", BASE, (o("L1", 10), o("L1", 11))), "more than once"),
        (lambda: VisitInput("FU1", "2024-01-01"), "date"),  # type: ignore[arg-type]
        (lambda: VisitInput("FU1", BASE, steroids="lots"), "steroids|Steroids|valid"),  # type: ignore[arg-type]
        (lambda: LesionObservation("L1", longest_diameter_mm=-1), ">= 0"),
        (lambda: LesionObservation("L1", merged_into="L1"), "merged into itself"),
        (
            lambda: VisitInput("FU1", BASE, (LesionObservation("L2", present=False, merged_into="L1"),)),
            "L2 is merged into L1, which is not present",
        ),
        (lambda: assess([BL], criteria="recist"), "unknown criteria"),
    ],
)
def test_bad_dataclass_input_raises(build, message) -> None:
    with pytest.raises(ResponseInputError, match=message):
        build()


def test_clinical_progression_without_imaging_dates_the_progression() -> None:
    """A visit with no readable imaging but clinical status worse is the first PD: it sets the
    progression date and ends the best-overall-response window."""
    fu1 = v("FU1", 60, imaging_available=False, clinical_status=ClinicalStatus.WORSE)
    visits = [BL, fu1, v("FU2", 120, o("L1", 20), o("L2", 15), o("L3", 8))]
    res = assess(visits)
    assert [r.overall_response for r in res.visits] == [None, R.PD, R.SD]
    assert res.progression_visit == "FU1" and res.progression_date == visits[1].date
    assert res.best_overall_response == R.PD
    assert "clinical status worse" in " ".join(res.visits[1].reasons)


def test_radiologist_overrides_drive_confirmation_bor_and_progression() -> None:
    """Rules: FU1 PD (sum +23 %, L1 +8 mm), FU2 PD. The radiologist calls FU1 SD: the best overall
    response becomes SD (FU1 is day 60 >= 42) and progression dates from FU2, not FU1."""
    visits = [
        BL_TARGETS_ONLY,
        v("FU1", 60, o("L1", 28), o("L2", 15)),
        v("FU2", 120, o("L1", 30), o("L2", 15)),
    ]
    rules = assess(visits)
    assert [r.overall_response for r in rules.visits[1:]] == [R.PD, R.PD]
    assert rules.progression_visit == "FU1" and rules.best_overall_response == R.PD
    read = assess(visits, overall_overrides={"FU1": "SD"})
    assert [r.overall_response for r in read.visits[1:]] == [R.SD, R.PD]
    assert read.progression_visit == "FU2" and read.progression_date == visits[2].date
    assert read.best_overall_response == R.SD
    assert "set by the radiologist: SD (rules: PD)" in " ".join(read.visits[1].reasons)
    # A reader's PR is confirmed by a later PR like the rules' own.
    shrinking = [
        BL_TARGETS_ONLY,
        v("FU1", 60, o("L1", 16), o("L2", 12)),
        v("FU2", 120, o("L1", 12), o("L2", 10)),
    ]
    assert [r.overall_response for r in assess(shrinking).visits[1:]] == [R.SD, R.PR]
    confirmed = assess(shrinking, overall_overrides={"FU1": "PR"})
    assert confirmed.visits[1].confirmed and confirmed.visits[1].confirmed_by == "FU2"
    assert confirmed.best_overall_response == R.PR
