"""New lesions (rano-bm.md section 5).

A new lesion is a follow-up lesion matched to no lesion seen at an earlier visit. It is unequivocal when
large enough on enough slices, otherwise equivocal: then the next visit with imaging decides, and when
it still shows the lesion, the progression is dated back to the scan that first showed it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from rano.response import reasons as words
from rano.response.types import TOLERANCE, LesionObservation, NewLesions, VisitInput, lesion_order
from rano.settings import ResponseSettings

#: An unequivocal new lesion is visible on at least this many slices (section 5).
NEW_LESION_MIN_SLICES = 2


@dataclass(frozen=True)
class NewLesionResult:
    """The new lesions of one follow-up visit with imaging (section 5) and why.

    Attributes:
        status: UNEQUIVOCAL (an unequivocal new lesion, or an equivocal one confirmed now), EQUIVOCAL
            (only possible new lesions) or NONE.
        reasons: Each new lesion in words, then each earlier equivocal one confirmed or cleared.
        new_ids: Lesions first seen at this visit, in lesion order.
        equivocal_ids: Those of them that are equivocal.
        backdated_progression_date: Date of the scan that first showed an equivocal new lesion confirmed
            now (the earliest when several); None when none is.
        pending: Equivocal new lesions the next visit with imaging must confirm: id -> this visit.
    """

    status: NewLesions
    reasons: tuple[str, ...]
    new_ids: tuple[str, ...] = ()
    equivocal_ids: tuple[str, ...] = ()
    backdated_progression_date: dt.date | None = None
    pending: Mapping[str, VisitInput] = field(default_factory=dict)


def is_unequivocal(obs: LesionObservation, settings: ResponseSettings) -> bool:
    """A new lesion is unequivocal with LD >= ``new_lesion_min_ld_mm`` on >= 2 slices (section 5),
    and not marked too small to measure by a reader."""
    return (
        obs.longest_diameter_mm >= settings.new_lesion_min_ld_mm - TOLERANCE
        and obs.slice_count >= NEW_LESION_MIN_SLICES
        and not obs.too_small_to_measure
    )


def _confirm_pending(
    pending: Mapping[str, VisitInput], present_ids: set[str]
) -> tuple[bool, dt.date | None, list[str]]:
    """Equivocal new lesions of the previous visit with imaging, checked at this one (section 5).

    Returns:
        Whether any is confirmed (still present), the earliest date of the scans that first showed a
        confirmed one, and one reason per lesion.
    """
    confirmed = False
    backdate: dt.date | None = None
    reasons = []
    for lesion_id in sorted(pending):
        first = pending[lesion_id]
        if lesion_id in present_ids:
            confirmed = True
            backdate = first.date if backdate is None else min(backdate, first.date)
            reasons.append(words.equivocal_new_lesion_confirmed(lesion_id, first.visit, first.date))
        else:
            reasons.append(words.equivocal_new_lesion_gone(lesion_id))
    return confirmed, backdate, reasons


def new_lesions(
    visit: VisitInput,
    observations: Mapping[str, LesionObservation],
    first_seen: Collection[str],
    pending: Mapping[str, VisitInput],
    settings: ResponseSettings,
) -> NewLesionResult:
    """The new lesions at one follow-up visit with imaging (section 5).

    Args:
        visit: The visit.
        observations: Lesion id -> observation at this visit.
        first_seen: Ids of every lesion seen at an earlier assessable visit.
        pending: Equivocal new lesions of the previous visit with imaging, by id, with that visit.
        settings: Protocol settings (``new_lesion_min_ld_mm``).
    """
    present_ids = {i for i, o in observations.items() if o.counts_as_present}
    new_ids = tuple(sorted((i for i in present_ids if i not in first_seen), key=lesion_order))
    reasons: list[str] = []
    unequivocal: list[str] = []
    equivocal: list[str] = []
    for lesion_id in new_ids:
        o = observations[lesion_id]
        if is_unequivocal(o, settings):
            unequivocal.append(lesion_id)
            reasons.append(words.new_lesion_unequivocal(lesion_id, o.longest_diameter_mm, o.slice_count))
        else:
            equivocal.append(lesion_id)
            reasons.append(words.new_lesion_equivocal(lesion_id, o.longest_diameter_mm, o.slice_count))
    confirmed, backdate, confirm_reasons = _confirm_pending(pending, present_ids)
    if unequivocal or confirmed:
        status = NewLesions.UNEQUIVOCAL
    elif equivocal:
        status = NewLesions.EQUIVOCAL
    else:
        status = NewLesions.NONE
    return NewLesionResult(
        status=status,
        reasons=(*reasons, *confirm_reasons),
        new_ids=new_ids,
        equivocal_ids=tuple(equivocal),
        backdated_progression_date=backdate,
        pending={i: visit for i in equivocal},
    )
