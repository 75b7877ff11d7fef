"""The RANO-BM response engine: one patient's visits through the parts of rano-bm.md, in order.

:func:`assess` selects the targets at baseline (section 2), then at each follow-up decides the target
response (section 3, or section 8 for volumes), the non-target response (section 4), the new lesions
(section 5) and the overall response (section 6), and finally confirmation, best overall response and
progression date (section 7). Each part is a function of its own module returning its result and its
reasons; this module only carries what the parts remember from visit to visit (:class:`Course`) and
puts their results into a :class:`VisitAssessment`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from rano.errors import ResponseInputError
from rano.response import reasons as words
from rano.response.confirmation import confirm, course_outcome
from rano.response.new_lesions import new_lesions
from rano.response.non_targets import non_target_response, own_ld
from rano.response.overall import missing_imaging, overall_response, overridden
from rano.response.targets import (
    SumRecord,
    TargetSums,
    flags_by_id,
    nadir,
    select_targets,
    target_response,
    target_sums,
)
from rano.response.types import (
    Assessment,
    Criteria,
    LesionObservation,
    ReaderInputs,
    Response,
    Role,
    TargetSelection,
    VisitAssessment,
    VisitInput,
    lesion_order,
)
from rano.settings import ResponseSettings


@dataclass(frozen=True)
class Course:
    """What the rules remember of a patient's assessable visits so far, baseline included.

    Attributes:
        baseline_sum: The criteria's target sum at baseline (mm or mm^3; 0 without targets).
        sums: The target sums of each assessable visit, to find the nadir (section 3).
        non_target_lds: Non-target id -> its own LDs at those visits (mm), for the growth flag
            (section 4); a visit where it is inside a merged mass adds none.
        first_seen: Lesion id -> label of the first visit that showed it, in the order first seen; a
            present lesion not in it is new (section 5).
        pending: Equivocal new lesions the next visit with imaging must confirm, with the visit that
            first showed each (section 5).
    """

    baseline_sum: float
    sums: tuple[SumRecord, ...]
    non_target_lds: Mapping[str, tuple[float, ...]]
    first_seen: Mapping[str, str]
    pending: Mapping[str, VisitInput] = field(default_factory=dict)

    @classmethod
    def at_baseline(cls, baseline: VisitInput, selection: TargetSelection, sums: TargetSums) -> Course:
        """The course after the baseline visit."""
        observations = _by_id(baseline.observations)
        return cls(
            baseline_sum=sums.current,
            sums=(
                SumRecord(
                    visit_index=0, visit=baseline.visit, total=sums.current, per_target=sums.per_target
                ),
            ),
            non_target_lds={i: (observations[i].longest_diameter_mm,) for i in selection.non_target_ids},
            first_seen={i: baseline.visit for i, o in observations.items() if o.counts_as_present},
        )

    def after(
        self,
        visit_index: int,
        visit: VisitInput,
        sums: TargetSums,
        observations: Mapping[str, LesionObservation],
        new_ids: Sequence[str],
        pending: Mapping[str, VisitInput],
    ) -> Course:
        """The course once a follow-up visit with imaging has been assessed.

        Args:
            visit_index: Position of the visit in the patient's visits.
            visit: The visit.
            sums: Its target sums.
            observations: Lesion id -> observation at the visit.
            new_ids: Lesions first seen at the visit.
            pending: Its equivocal new lesions, for the next visit with imaging to confirm.
        """
        lds = dict(self.non_target_lds)
        for lesion_id, history in self.non_target_lds.items():
            ld = own_ld(observations.get(lesion_id))
            if ld is not None:
                lds[lesion_id] = (*history, ld)
        record = SumRecord(
            visit_index=visit_index, visit=visit.visit, total=sums.current, per_target=sums.per_target
        )
        return replace(
            self,
            sums=(*self.sums, record),
            non_target_lds=lds,
            first_seen={**self.first_seen, **dict.fromkeys(new_ids, visit.visit)},
            pending=pending,
        )


def _by_id(observations: Sequence[LesionObservation]) -> dict[str, LesionObservation]:
    return {o.lesion_id: o for o in observations}


def _criteria(criteria: Criteria | str) -> Criteria:
    try:
        return Criteria(criteria)
    except ValueError:
        raise ResponseInputError(f"unknown criteria {criteria!r}; use rano-bm or volumetric") from None


def _validate_visits(visits: Sequence[VisitInput]) -> None:
    if not visits:
        raise ResponseInputError("at least one visit (the baseline) is needed")
    labels = [v.visit for v in visits]
    if len(set(labels)) != len(labels):
        raise ResponseInputError("visit labels must be unique")
    for prev, cur in zip(visits, visits[1:], strict=False):
        if cur.date <= prev.date:
            raise ResponseInputError(
                f"visit dates must increase: {cur.visit} ({cur.date}) is not after {prev.visit} ({prev.date})"
            )
    if not visits[0].imaging_available:
        raise ResponseInputError(f"baseline visit {visits[0].visit} has no imaging; nothing can be assessed")


def _validate_flags(reader: ReaderInputs, visits: Sequence[VisitInput]) -> None:
    flags = flags_by_id(reader)
    seen_ids = {o.lesion_id for v in visits for o in v.observations}
    unknown = sorted(set(flags) - seen_ids)
    if unknown:
        raise ResponseInputError(f"flags given for unknown lesion(s): {', '.join(unknown)}")


def _baseline(
    visit: VisitInput, selection: TargetSelection, sums: TargetSums, criteria: Criteria
) -> VisitAssessment:
    """The baseline visit: its target sum, and no response (section 6)."""
    sum_name = words.sum_words(volumetric=criteria is Criteria.VOLUMETRIC)
    return VisitAssessment(
        visit=visit.visit,
        date=visit.date,
        is_baseline=True,
        criteria=criteria,
        sum_ld_mm=sums.sum_ld_mm,
        sum_volume_mm3=sums.sum_volume_mm3,
        baseline_sum=sums.current,
        nadir_sum=None,
        nadir_visit=None,
        pct_change_from_baseline=None,
        pct_change_from_nadir=None,
        target_response=None,
        non_target_response=None,
        new_lesions=None,
        new_lesion_ids=(),
        possible_new_lesion_ids=(),
        non_target_growth_flags=(),
        overall_response=None,
        confirmed=None,
        confirmed_by=None,
        backdated_progression_date=None,
        reasons=(*selection.reasons, words.baseline_sum(sum_name, sums.current)),
    )


def _without_imaging(
    visit: VisitInput, selection: TargetSelection, course: Course, criteria: Criteria
) -> VisitAssessment:
    """A follow-up visit without readable imaging: lesion categories NE, overall NE or PD (section 6)."""
    overall = missing_imaging(visit)
    return VisitAssessment(
        visit=visit.visit,
        date=visit.date,
        is_baseline=False,
        criteria=criteria,
        sum_ld_mm=None,
        sum_volume_mm3=None,
        baseline_sum=course.baseline_sum,
        nadir_sum=None,
        nadir_visit=None,
        pct_change_from_baseline=None,
        pct_change_from_nadir=None,
        target_response=Response.NE,
        non_target_response=Response.NE if selection.non_target_ids else None,
        new_lesions=None,
        new_lesion_ids=(),
        possible_new_lesion_ids=(),
        non_target_growth_flags=(),
        overall_response=overall.response,
        confirmed=None,
        confirmed_by=None,
        backdated_progression_date=None,
        reasons=overall.reasons,
    )


def _follow_up(
    visit_index: int,
    visit: VisitInput,
    selection: TargetSelection,
    course: Course,
    criteria: Criteria,
    settings: ResponseSettings,
) -> tuple[VisitAssessment, Course]:
    """One follow-up visit through sections 3 to 6, and the course after it (unchanged without imaging)."""
    if not visit.imaging_available:
        return _without_imaging(visit, selection, course, criteria), course
    targets, non_targets = selection.target_ids, selection.non_target_ids
    observations = _by_id(visit.observations)
    sums = target_sums(observations, targets, criteria, settings)
    nadir_sums = nadir(course.sums)
    target = target_response(observations, targets, sums, course.baseline_sum, nadir_sums, criteria, settings)
    non_target = non_target_response(visit, observations, non_targets, course.non_target_lds)
    new = new_lesions(visit, observations, course.first_seen, course.pending, settings)
    overall = overall_response(
        visit,
        target=target.response,
        non_target=non_target.response,
        new_lesions=new.status,
        has_targets=bool(targets),
        has_non_targets=bool(non_targets),
        settings=settings,
    )
    assessment = VisitAssessment(
        visit=visit.visit,
        date=visit.date,
        is_baseline=False,
        criteria=criteria,
        sum_ld_mm=sums.sum_ld_mm,
        sum_volume_mm3=sums.sum_volume_mm3,
        baseline_sum=course.baseline_sum if targets else None,
        nadir_sum=nadir_sums.total if targets else None,
        nadir_visit=nadir_sums.visit if targets else None,
        pct_change_from_baseline=target.pct_change_from_baseline,
        pct_change_from_nadir=target.pct_change_from_nadir,
        target_response=target.response,
        non_target_response=non_target.response,
        new_lesions=new.status,
        new_lesion_ids=new.new_ids,
        possible_new_lesion_ids=new.equivocal_ids,
        non_target_growth_flags=non_target.growth_flags,
        overall_response=overall.response,
        confirmed=None,
        confirmed_by=None,
        # Only a PD is dated back to the scan that first showed an equivocal new lesion (section 5).
        backdated_progression_date=new.backdated_progression_date
        if overall.response is Response.PD
        else None,
        reasons=(*target.reasons, *non_target.reasons, *new.reasons, *overall.reasons),
    )
    return assessment, course.after(visit_index, visit, sums, observations, new.new_ids, new.pending)


def _roles(selection: TargetSelection, first_seen: Mapping[str, str]) -> dict[str, Role]:
    """Every lesion's role, in lesion order: baseline targets and non-targets, and new lesions."""
    roles = {i: Role.TARGET for i in selection.target_ids}
    roles.update({i: Role.NON_TARGET for i in selection.non_target_ids})
    for lesion_id in first_seen:
        roles.setdefault(lesion_id, Role.NEW)
    return dict(sorted(roles.items(), key=lambda kv: lesion_order(kv[0])))


def assess(
    visits: Sequence[VisitInput],
    reader: ReaderInputs = ReaderInputs(),  # noqa: B008 - frozen
    settings: ResponseSettings = ResponseSettings(),  # noqa: B008 - frozen
    criteria: Criteria | str = Criteria.RANO_BM,
    overall_overrides: Mapping[str, Response | str] | None = None,
) -> Assessment:
    """Assess one patient's visits under RANO-BM (diameters) or its volumetric variant.

    Args:
        visits: Visits in date order; the first is the baseline.
        reader: Reader inputs (flags, target selection override).
        settings: Protocol settings (rano-bm.md section 9).
        criteria: ``"rano-bm"`` (sum of LDs) or ``"volumetric"`` (sum of volumes, section 8).
        overall_overrides: Visit label -> the overall response a radiologist set in place of the
            rules' one. Confirmation, best overall response and progression date (section 7) are
            derived from the responses as overridden; the visit's reasons keep the rules' answer.

    Returns:
        The per-visit responses, confirmation, best overall response and progression date.

    Raises:
        ResponseInputError: On out-of-order dates, duplicate labels, a baseline without imaging,
            unknown lesion ids in reader inputs, or non-target progression without non-targets.
    """
    criteria = _criteria(criteria)
    _validate_visits(visits)
    _validate_flags(reader, visits)
    selection = select_targets(visits[0], reader, settings)
    baseline_sums = target_sums(_by_id(visits[0].observations), selection.target_ids, criteria, settings)
    course = Course.at_baseline(visits[0], selection, baseline_sums)
    results = [_baseline(visits[0], selection, baseline_sums, criteria)]
    for index in range(1, len(visits)):
        result, course = _follow_up(index, visits[index], selection, course, criteria, settings)
        results.append(result)
    if overall_overrides:
        results = [overridden(v, overall_overrides.get(v.visit)) for v in results]
    # Each visit's result carries the protocol settings it was assessed under.
    visits_out = [replace(v, settings=settings.to_dict()) for v in confirm(results, settings)]
    outcome = course_outcome(visits_out, settings, has_targets=bool(selection.target_ids))
    return Assessment(
        criteria=criteria,
        selection=selection,
        visits=tuple(visits_out),
        best_overall_response=outcome.best_overall_response,
        progression_date=outcome.progression_date,
        progression_visit=outcome.progression_visit,
        roles=_roles(selection, course.first_seen),
        first_seen=dict(course.first_seen),
        settings=settings.to_dict(),
    )


def compare_criteria(diameter: Assessment, volumetric: Assessment) -> tuple[str, ...]:
    """Visits where the diameter-based and volumetric overall responses disagree (section 8)."""
    out = []
    for d, v in zip(diameter.visits, volumetric.visits, strict=True):
        if not d.is_baseline and d.overall_response != v.overall_response:
            out.append(words.visit_disagreement(d.visit, d.overall_response, v.overall_response))
    if diameter.best_overall_response != volumetric.best_overall_response:
        out.append(
            words.best_overall_response_disagreement(
                diameter.best_overall_response, volumetric.best_overall_response
            )
        )
    return tuple(out)
