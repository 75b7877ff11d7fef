"""Confirmation, best overall response and progression date (rano-bm.md section 7).

These rules read the per-visit overall responses (after any radiologist override), never the lesions.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, replace

from rano.response import reasons as words
from rano.response.types import Response, VisitAssessment
from rano.settings import ResponseSettings

#: The later responses that confirm a CR or PR: "the same or a better response" (section 7).
CONFIRMED_BY: dict[Response, frozenset[Response]] = {
    Response.CR: frozenset({Response.CR}),
    Response.PR: frozenset({Response.CR, Response.PR}),
}

#: Order of the best overall response (section 7): confirmed CR > confirmed PR > SD > PD > NE. A visit
#: counted as SD is shown NON-CR/NON-PD when there was no measurable disease (section 6), same rank.
BOR_RANK: dict[Response, int] = {
    Response.CR: 5,
    Response.PR: 4,
    Response.SD: 3,
    Response.NON_CR_NON_PD: 3,
    Response.PD: 2,
    Response.NE: 1,
}


@dataclass(frozen=True)
class Confirmation:
    """Whether a CR or PR is confirmed, and why.

    Attributes:
        confirmed: True when a later visit confirms it.
        confirmed_by: Label of that visit, or None.
        reasons: The confirmation in words.
    """

    confirmed: bool
    confirmed_by: str | None
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class CourseOutcome:
    """What section 7 concludes from a patient's whole course.

    Attributes:
        best_overall_response: Best overall response; None when there is no follow-up visit.
        progression_visit: Label of the first PD visit, or None.
        progression_date: Date of the first PD visit, or the backdated date of an equivocal new lesion
            it confirmed (section 5); None without PD.
    """

    best_overall_response: Response | None
    progression_visit: str | None
    progression_date: dt.date | None


def confirmation(
    visits: Sequence[VisitAssessment], index: int, settings: ResponseSettings
) -> Confirmation | None:
    """Confirmation of the CR or PR at ``visits[index]``: a later visit at least ``confirmation_days``
    after it shows the same or a better response, with no PD in between (section 7).

    Args:
        visits: The patient's visits in date order, with their overall responses.
        index: The visit to confirm.
        settings: Protocol settings (``confirmation_days``).

    Returns:
        None when that visit is neither CR nor PR; otherwise whether it is confirmed, by which visit.
    """
    visit = visits[index]
    response = visit.overall_response
    if response is None or response not in CONFIRMED_BY:
        return None
    for later in visits[index + 1 :]:
        if later.overall_response is Response.PD:
            break
        days = (later.date - visit.date).days
        if days >= settings.confirmation_days and later.overall_response in CONFIRMED_BY[response]:
            return Confirmation(
                confirmed=True,
                confirmed_by=later.visit,
                reasons=(words.confirmed(response, later.visit, days),),
            )
    return Confirmation(confirmed=False, confirmed_by=None, reasons=(words.not_confirmed(response),))


def confirm(visits: Sequence[VisitAssessment], settings: ResponseSettings) -> list[VisitAssessment]:
    """Every visit, each CR and PR with its confirmation and the reason for it (section 7)."""
    out: list[VisitAssessment] = []
    for index, visit in enumerate(visits):
        found = confirmation(visits, index, settings)
        if found is None:
            out.append(visit)
            continue
        out.append(
            replace(
                visit,
                confirmed=found.confirmed,
                confirmed_by=found.confirmed_by,
                reasons=(*visit.reasons, *found.reasons),
            )
        )
    return out


def _bor_category(
    visit: VisitAssessment, baseline_date: dt.date, settings: ResponseSettings, *, has_targets: bool
) -> Response:
    """What one follow-up visit counts as in the best overall response (section 7)."""
    response = visit.overall_response
    if response in (Response.CR, Response.PR) and visit.confirmed:
        return Response(response)
    if response in (Response.CR, Response.PR, Response.SD, Response.NON_CR_NON_PD):
        # An SD, or an unconfirmed CR/PR, counts only once min_sd_days have passed since baseline.
        if (visit.date - baseline_date).days >= settings.min_sd_days:
            return Response.SD if has_targets else Response.NON_CR_NON_PD
        return Response.NE
    if response is Response.PD:
        return Response.PD
    return Response.NE


def best_overall_response(
    visits: Sequence[VisitAssessment], settings: ResponseSettings, *, has_targets: bool
) -> Response | None:
    """Best overall response over the visits up to and including the first PD (section 7).

    Args:
        visits: The patient's visits in date order, baseline first, confirmed (see :func:`confirm`).
        settings: Protocol settings (``min_sd_days``).
        has_targets: Whether there was measurable disease at baseline; without it an SD is shown as
            NON-CR/NON-PD (section 6).

    Returns:
        None when there is no follow-up visit.
    """
    follow_ups = [v for v in visits if not v.is_baseline]
    if not follow_ups:
        return None
    baseline_date = visits[0].date
    best = Response.NE
    for visit in follow_ups:
        category = _bor_category(visit, baseline_date, settings, has_targets=has_targets)
        if BOR_RANK[category] > BOR_RANK[best]:
            best = category
        if visit.overall_response is Response.PD:
            break
    return best


def course_outcome(
    visits: Sequence[VisitAssessment], settings: ResponseSettings, *, has_targets: bool
) -> CourseOutcome:
    """Best overall response and progression date of a patient's course (section 7).

    The progression date is the date of the first PD visit, or the date of the scan that first showed
    an equivocal new lesion that this PD confirmed (section 5).
    """
    bor = best_overall_response(visits, settings, has_targets=has_targets)
    for visit in visits:
        if visit.overall_response is Response.PD:
            return CourseOutcome(
                best_overall_response=bor,
                progression_visit=visit.visit,
                progression_date=visit.backdated_progression_date or visit.date,
            )
    return CourseOutcome(best_overall_response=bor, progression_visit=None, progression_date=None)
