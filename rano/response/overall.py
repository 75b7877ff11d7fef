"""Overall response at a visit: the RANO-BM table and its consequences (rano-bm.md section 6).

The parts (targets, non-targets, new lesions) are decided first; this module combines them with
corticosteroids and clinical status. A radiologist may set another overall response, recorded with the
rules' one in the reasons.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from rano.errors import ResponseInputError
from rano.response import reasons as words
from rano.response.types import ClinicalStatus, NewLesions, Response, Steroids, VisitAssessment, VisitInput
from rano.settings import ResponseSettings


@dataclass(frozen=True)
class OverallResult:
    """The overall response at one follow-up visit (section 6) and why.

    Attributes:
        response: CR, PR, SD, PD, NON-CR/NON-PD (no measurable disease at baseline) or NE.
        reasons: The rule outcome, with the immunotherapy note before it and the possible-new-lesion
            flag after it when they apply.
    """

    response: Response
    reasons: tuple[str, ...]


def missing_imaging(visit: VisitInput) -> OverallResult:
    """A follow-up without readable imaging is NE, unless its clinical status is worse: clinical
    deterioration is a PD criterion of its own (section 6: "any"), which needs no image."""
    if visit.clinical_status == ClinicalStatus.WORSE:
        return OverallResult(response=Response.PD, reasons=(words.IMAGING_MISSING_CLINICAL_PD,))
    return OverallResult(response=Response.NE, reasons=(words.IMAGING_MISSING,))


def pd_causes(
    visit: VisitInput,
    target: Response | None,
    non_target: Response | None,
    new_lesions: NewLesions,
    settings: ResponseSettings,
) -> list[str]:
    """The PD criteria met (section 6: any one makes PD): target PD, non-target PD, an unequivocal new
    lesion (unless the ``immunotherapy`` setting is on), clinical status worse."""
    causes = []
    if target is Response.PD:
        causes.append(words.PD_BY_TARGETS)
    if non_target is Response.PD:
        causes.append(words.PD_BY_NON_TARGETS)
    if new_lesions is NewLesions.UNEQUIVOCAL and not settings.immunotherapy:
        causes.append(words.PD_BY_NEW_LESION)
    if visit.clinical_status == ClinicalStatus.WORSE:
        causes.append(words.PD_BY_CLINICAL_STATUS)
    return causes


def _with_targets(target: Response | None, non_target: Response | None, steroids: Steroids) -> OverallResult:
    """No PD criterion met, measurable disease at baseline (section 6)."""
    if target in (Response.CR, Response.PR) and steroids is Steroids.INCREASED:
        # A steroid increase takes CR or PR down to SD, and never makes PD on its own.
        return OverallResult(response=Response.SD, reasons=(words.steroids_increased(str(target)),))
    if target is Response.CR:
        if non_target is Response.NON_CR_NON_PD:
            return OverallResult(response=Response.PR, reasons=(words.TARGETS_CR_NON_TARGETS_PRESENT,))
        if steroids in (Steroids.STABLE, Steroids.DECREASED):
            return OverallResult(response=Response.PR, reasons=(words.targets_cr_steroids_in_use(steroids),))
        return OverallResult(response=Response.CR, reasons=(words.OVERALL_CR,))
    if target is Response.PR:
        return OverallResult(response=Response.PR, reasons=(words.OVERALL_PR,))
    return OverallResult(response=Response.SD, reasons=(words.OVERALL_SD,))


def _without_targets(
    non_target: Response | None, steroids: Steroids, *, has_non_targets: bool
) -> OverallResult:
    """No PD criterion met, no measurable disease at baseline: CR or NON-CR/NON-PD (section 6)."""
    if has_non_targets and non_target is Response.CR and steroids is Steroids.NONE:
        return OverallResult(response=Response.CR, reasons=(words.NO_MEASURABLE_DISEASE_CR,))
    return OverallResult(
        response=Response.NON_CR_NON_PD,
        reasons=(words.no_measurable_disease_non_cr_non_pd(has_non_targets=has_non_targets),),
    )


def overall_response(
    visit: VisitInput,
    *,
    target: Response | None,
    non_target: Response | None,
    new_lesions: NewLesions,
    has_targets: bool,
    has_non_targets: bool,
    settings: ResponseSettings,
) -> OverallResult:
    """The overall response at one follow-up visit with imaging (section 6).

    Any PD criterion makes PD. Otherwise, with targets: target CR is CR only with no non-target left
    and no corticosteroids (PR if either), target CR or PR with corticosteroids increased is SD,
    target PR is PR and target SD is SD. Without targets: CR when every non-target is gone and no
    corticosteroids are taken, else NON-CR/NON-PD.

    Args:
        visit: The visit (corticosteroids, clinical status).
        target: The target response (None without targets).
        non_target: The non-target response (None without non-targets).
        new_lesions: The new-lesion status.
        has_targets: Whether there was measurable disease at baseline.
        has_non_targets: Whether there were non-targets at baseline.
        settings: Protocol settings (``immunotherapy``).
    """
    notes: tuple[str, ...] = ()
    if new_lesions is NewLesions.UNEQUIVOCAL and settings.immunotherapy:
        notes = (words.IMMUNOTHERAPY_NEW_LESIONS,)
    causes = pd_causes(visit, target, non_target, new_lesions, settings)
    steroids = Steroids(visit.steroids)
    if causes:
        result = OverallResult(response=Response.PD, reasons=(words.overall_pd(causes),))
    elif has_targets:
        result = _with_targets(target, non_target, steroids)
    else:
        result = _without_targets(non_target, steroids, has_non_targets=has_non_targets)
    flags = (words.POSSIBLE_NEW_LESION_FLAG,) if new_lesions is NewLesions.EQUIVOCAL else ()
    return OverallResult(response=result.response, reasons=(*notes, *result.reasons, *flags))


def overridden(visit: VisitAssessment, response: Response | str | None) -> VisitAssessment:
    """A follow-up visit with the radiologist's overall response in place of the rules' one.

    Raises:
        ResponseInputError: When ``response`` is not a response category.
    """
    if response is None or visit.is_baseline:
        return visit
    try:
        reader = Response(response)
    except ValueError:
        raise ResponseInputError(f"visit {visit.visit}: unknown overridden response {response!r}") from None
    if reader is visit.overall_response:
        return visit
    return replace(
        visit,
        overall_response=reader,
        # A backdated progression date belongs to the rules' PD; a reader's PD dates from this scan.
        backdated_progression_date=visit.backdated_progression_date if reader is Response.PD else None,
        reasons=(*visit.reasons, words.overridden(reader, visit.overall_response)),
    )
