"""Non-target response (rano-bm.md section 4).

Unequivocal progression of non-targets is a reader's judgement: the engine never calls non-target PD on
its own. It only flags a non-target that grew enough from its own nadir for a reader to look at it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rano.errors import ResponseInputError
from rano.response import reasons as words
from rano.response.types import TOLERANCE, LesionObservation, Response, VisitInput

#: The growth flag needs the LD to have grown by at least this much over the lesion's own nadir
#: (section 4), mm.
GROWTH_FLAG_MIN_INCREASE_MM = 5.0
#: ... and to at least this multiple of its nadir LD (section 4: +20%).
GROWTH_FLAG_MIN_FACTOR = 1.2


@dataclass(frozen=True)
class NonTargetResult:
    """The non-target response at one follow-up visit (section 4) and why.

    Attributes:
        response: CR (every non-target absent), NON-CR/NON-PD (one or more still there) or PD (the
            reader's unequivocal progression); None when there are no non-targets.
        reasons: The growth flags in words, then the response.
        growth_flags: Ids of the non-targets flagged for the reader (see :func:`growth_flags`).
    """

    response: Response | None
    reasons: tuple[str, ...]
    growth_flags: tuple[str, ...] = ()


def own_ld(obs: LesionObservation | None) -> float | None:
    """The LD a non-target's own nadir is taken over: 0 mm when absent, None when it is inside another
    lesion's merged mass (it has no LD of its own there, and it is not 0 mm either)."""
    if obs is not None and obs.merged_into is not None:
        return None
    return obs.longest_diameter_mm if obs is not None and obs.counts_as_present else 0.0


def growth_flags(
    observations: Mapping[str, LesionObservation],
    non_target_ids: Sequence[str],
    ld_history: Mapping[str, Sequence[float]],
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Non-targets whose LD grew by >= 5 mm and >= 20% from their own nadir (section 4), and why.

    Args:
        observations: Lesion id -> observation at this visit (a missing id is absent).
        non_target_ids: The baseline non-targets.
        ld_history: Lesion id -> its own LDs (mm) at the earlier assessable visits (see :func:`own_ld`).

    Returns:
        The flagged ids, and one reason per flag.
    """
    flagged: list[str] = []
    reasons: list[str] = []
    for lesion_id in non_target_ids:
        o = observations.get(lesion_id)
        ld_now = o.longest_diameter_mm if o is not None and o.counts_as_present else 0.0
        history = ld_history.get(lesion_id, ())
        nadir_ld = min(history) if history else 0.0
        if (
            ld_now - nadir_ld >= GROWTH_FLAG_MIN_INCREASE_MM - TOLERANCE
            and ld_now >= GROWTH_FLAG_MIN_FACTOR * nadir_ld - TOLERANCE
            and ld_now > 0
        ):
            flagged.append(lesion_id)
            reasons.append(words.non_target_growth(lesion_id, ld_now, nadir_ld))
    return tuple(flagged), tuple(reasons)


def _response(
    visit: VisitInput, observations: Mapping[str, LesionObservation], non_target_ids: Sequence[str]
) -> tuple[Response, str]:
    """PD (reader), CR or NON-CR/NON-PD of a patient with non-targets, and why."""
    if visit.unequivocal_non_target_progression:
        return Response.PD, words.NON_TARGET_PD_BY_READER
    still = [
        # A non-target merged into another lesion is still there, inside the merged mass.
        (i, None if observations[i].counts_as_present else observations[i].merged_into)
        for i in non_target_ids
        if observations.get(i) is not None and observations[i].seen
    ]
    if not still:
        return Response.CR, words.NON_TARGETS_ABSENT
    return Response.NON_CR_NON_PD, words.non_targets_present(still)


def non_target_response(
    visit: VisitInput,
    observations: Mapping[str, LesionObservation],
    non_target_ids: Sequence[str],
    ld_history: Mapping[str, Sequence[float]],
) -> NonTargetResult:
    """The non-target response at one follow-up visit with imaging (section 4).

    Args:
        visit: The visit (for the reader's unequivocal non-target progression).
        observations: Lesion id -> observation at this visit (a missing id is absent).
        non_target_ids: The baseline non-targets.
        ld_history: Lesion id -> its own LDs (mm) at the earlier assessable visits.

    Raises:
        ResponseInputError: When the reader set non-target progression but there are no non-targets.
    """
    flagged, flag_reasons = growth_flags(observations, non_target_ids, ld_history)
    if not non_target_ids:
        if visit.unequivocal_non_target_progression:
            raise ResponseInputError(
                f"visit {visit.visit}: non-target progression set but there are no non-targets"
            )
        return NonTargetResult(response=None, reasons=flag_reasons, growth_flags=flagged)
    response, reason = _response(visit, observations, non_target_ids)
    return NonTargetResult(response=response, reasons=(*flag_reasons, reason), growth_flags=flagged)
