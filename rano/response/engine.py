"""The RANO-BM response engine (rano-bm.md sections 2-8): frozen dataclasses in, frozen dataclasses out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from rano.errors import ResponseInputError
from rano.response import reasons as words
from rano.response.confirmation import confirm, course_outcome
from rano.response.new_lesions import new_lesions
from rano.response.non_targets import non_target_response
from rano.response.targets import (
    SumRecord,
    flags_by_id,
    nadir,
    select_targets,
    target_response,
    target_sums,
)
from rano.response.types import (
    Assessment,
    ClinicalStatus,
    Criteria,
    NewLesions,
    ReaderInputs,
    Response,
    Role,
    Steroids,
    VisitAssessment,
    VisitInput,
    lesion_order,
)
from rano.settings import ResponseSettings


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
    try:
        criteria = Criteria(criteria)
    except ValueError:
        raise ResponseInputError(f"unknown criteria {criteria!r}; use rano-bm or volumetric") from None
    _validate_visits(visits)
    flags = flags_by_id(reader)
    seen_ids = {o.lesion_id for v in visits for o in v.observations}
    unknown = sorted(set(flags) - seen_ids)
    if unknown:
        raise ResponseInputError(f"flags given for unknown lesion(s): {', '.join(unknown)}")
    selection = select_targets(visits[0], reader, settings)
    volumetric = criteria is Criteria.VOLUMETRIC
    targets, non_targets = selection.target_ids, selection.non_target_ids
    sum_name = words.sum_words(volumetric=volumetric)

    obs_by_visit = [{o.lesion_id: o for o in v.observations} for v in visits]
    first_seen: dict[str, str] = {}
    roles: dict[str, Role] = {i: Role.TARGET for i in targets}
    roles.update({i: Role.NON_TARGET for i in non_targets})

    results: list[VisitAssessment] = []
    history: list[SumRecord] = []  # assessable visits
    nt_history: dict[str, list[float]] = {i: [] for i in non_targets}
    pending_equivocal: dict[str, VisitInput] = {}  # equivocal new lesion id -> visit first showing it
    baseline_sum = 0.0

    for index, visit in enumerate(visits):
        obs = obs_by_visit[index]
        present_ids = [i for i, o in obs.items() if o.counts_as_present]
        sums = target_sums(obs, targets, criteria, settings)
        sum_ld, sum_vol, current = sums.sum_ld_mm, sums.sum_volume_mm3, sums.current
        if index == 0:
            for i in present_ids:
                first_seen[i] = visit.visit
            baseline_sum = current
            history.append(
                SumRecord(visit_index=0, visit=visit.visit, total=current, per_target=sums.per_target)
            )
            for i in non_targets:
                nt_history[i].append(obs[i].longest_diameter_mm)
            results.append(
                VisitAssessment(
                    visit.visit,
                    visit.date,
                    True,
                    criteria,
                    sum_ld,
                    sum_vol,
                    current,
                    None,
                    None,
                    None,
                    None,
                    None,
                    None,
                    None,
                    (),
                    (),
                    (),
                    None,
                    None,
                    None,
                    None,
                    (*selection.reasons, words.baseline_sum(sum_name, current)),
                )  # fmt: skip
            )
            continue
        if not visit.imaging_available:
            # Clinical deterioration is a PD criterion of its own (section 6: "any"); without imaging
            # the lesion categories are not evaluable, but the visit is PD, not NE.
            clinical_pd = visit.clinical_status == ClinicalStatus.WORSE
            results.append(
                VisitAssessment(
                    visit.visit,
                    visit.date,
                    False,
                    criteria,
                    None,
                    None,
                    baseline_sum,
                    None,
                    None,
                    None,
                    None,
                    Response.NE,
                    Response.NE if non_targets else None,
                    None,
                    (),
                    (),
                    (),
                    Response.PD if clinical_pd else Response.NE,
                    None,
                    None,
                    None,
                    ((words.IMAGING_MISSING_CLINICAL_PD,) if clinical_pd else (words.IMAGING_MISSING,)),
                )  # fmt: skip
            )
            continue

        reasons: list[str] = []
        nadir_sums = nadir(history)
        nadir_sum, nadir_label = nadir_sums.total, nadir_sums.visit
        target = target_response(obs, targets, sums, baseline_sum, nadir_sums, criteria, settings)
        reasons.extend(target.reasons)
        pct_base, pct_nadir = target.pct_change_from_baseline, target.pct_change_from_nadir

        non_target = non_target_response(visit, obs, non_targets, nt_history)
        reasons.extend(non_target.reasons)
        non_target_response_ = non_target.response
        growth_flags = non_target.growth_flags

        new = new_lesions(visit, obs, first_seen, pending_equivocal, settings)
        reasons.extend(new.reasons)
        for i in new.new_ids:
            first_seen[i] = visit.visit
            roles[i] = Role.NEW
        pending_equivocal = dict(new.pending)
        new_status, new_ids, equivocal_new = new.status, new.new_ids, new.equivocal_ids
        backdate = new.backdated_progression_date

        # --- overall response (section 6) ---
        pd_causes: list[str] = []
        if target.response is Response.PD:
            pd_causes.append(words.PD_BY_TARGETS)
        if non_target_response_ is Response.PD:
            pd_causes.append(words.PD_BY_NON_TARGETS)
        if new_status is NewLesions.UNEQUIVOCAL:
            if settings.immunotherapy:
                reasons.append(words.IMMUNOTHERAPY_NEW_LESIONS)
            else:
                pd_causes.append(words.PD_BY_NEW_LESION)
        if visit.clinical_status == ClinicalStatus.WORSE:
            pd_causes.append(words.PD_BY_CLINICAL_STATUS)
        steroids = Steroids(visit.steroids)
        if pd_causes:
            overall = Response.PD
            reasons.append(words.overall_pd(pd_causes))
        elif targets:
            if target.response in (Response.CR, Response.PR) and steroids is Steroids.INCREASED:
                overall = Response.SD
                reasons.append(words.steroids_increased(str(target.response)))
            elif target.response is Response.CR:
                if non_target_response_ is Response.NON_CR_NON_PD:
                    overall = Response.PR
                    reasons.append(words.TARGETS_CR_NON_TARGETS_PRESENT)
                elif steroids in (Steroids.STABLE, Steroids.DECREASED):
                    overall = Response.PR
                    reasons.append(words.targets_cr_steroids_in_use(steroids))
                else:
                    overall = Response.CR
                    reasons.append(words.OVERALL_CR)
            elif target.response is Response.PR:
                overall = Response.PR
                reasons.append(words.OVERALL_PR)
            else:
                overall = Response.SD
                reasons.append(words.OVERALL_SD)
        else:
            if non_targets and non_target_response_ is Response.CR and steroids is Steroids.NONE:
                overall = Response.CR
                reasons.append(words.NO_MEASURABLE_DISEASE_CR)
            else:
                overall = Response.NON_CR_NON_PD
                reasons.append(words.no_measurable_disease_non_cr_non_pd(has_non_targets=bool(non_targets)))
        if new_status is NewLesions.EQUIVOCAL:
            reasons.append(words.POSSIBLE_NEW_LESION_FLAG)

        results.append(
            VisitAssessment(
                visit=visit.visit,
                date=visit.date,
                is_baseline=False,
                criteria=criteria,
                sum_ld_mm=sum_ld,
                sum_volume_mm3=sum_vol,
                baseline_sum=baseline_sum if targets else None,
                nadir_sum=nadir_sum if targets else None,
                nadir_visit=nadir_label if targets else None,
                pct_change_from_baseline=pct_base,
                pct_change_from_nadir=pct_nadir,
                target_response=target.response,
                non_target_response=non_target_response_,
                new_lesions=new_status,
                new_lesion_ids=tuple(new_ids),
                possible_new_lesion_ids=tuple(equivocal_new),
                non_target_growth_flags=tuple(growth_flags),
                overall_response=overall,
                confirmed=None,
                confirmed_by=None,
                backdated_progression_date=backdate if overall is Response.PD else None,
                reasons=tuple(reasons),
            )
        )
        history.append(
            SumRecord(visit_index=index, visit=visit.visit, total=current, per_target=sums.per_target)
        )
        for i in non_targets:
            o = obs.get(i)
            if o is not None and o.merged_into is not None:
                continue  # inside a merged mass: no LD of its own, and not 0 mm either
            nt_history[i].append(o.longest_diameter_mm if o is not None and o.counts_as_present else 0.0)

    if overall_overrides:
        results = [_overridden(v, overall_overrides.get(v.visit)) for v in results]
    # Each visit's result carries the protocol settings it was assessed under.
    visits_out = [replace(v, settings=settings.to_dict()) for v in confirm(results, settings)]
    outcome = course_outcome(visits_out, settings, has_targets=bool(targets))
    return Assessment(
        criteria=criteria,
        selection=selection,
        visits=tuple(visits_out),
        best_overall_response=outcome.best_overall_response,
        progression_date=outcome.progression_date,
        progression_visit=outcome.progression_visit,
        roles=dict(sorted(roles.items(), key=lambda kv: lesion_order(kv[0]))),
        first_seen=first_seen,
        settings=settings.to_dict(),
    )


def _overridden(v: VisitAssessment, response: Response | str | None) -> VisitAssessment:
    """A follow-up visit with the radiologist's overall response in place of the rules' one."""
    if response is None or v.is_baseline:
        return v
    try:
        reader = Response(response)
    except ValueError:
        raise ResponseInputError(f"visit {v.visit}: unknown overridden response {response!r}") from None
    if reader is v.overall_response:
        return v
    return replace(
        v,
        overall_response=reader,
        # A backdated progression date belongs to the rules' PD; a reader's PD dates from this scan.
        backdated_progression_date=v.backdated_progression_date if reader is Response.PD else None,
        reasons=(
            *v.reasons,
            words.overridden(reader, v.overall_response),
        ),
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
