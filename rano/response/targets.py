"""Target lesions: selection at baseline (rano-bm.md section 2) and the target response (section 3, and
section 8 for the volumetric criteria).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rano.errors import ResponseInputError
from rano.measure import measurability
from rano.response import reasons as words
from rano.response.types import (
    TOLERANCE,
    Criteria,
    LesionFlags,
    LesionObservation,
    ReaderInputs,
    Response,
    TargetSelection,
    VisitInput,
    lesion_order,
)
from rano.settings import ResponseSettings

#: Reader flags that make a lesion non-measurable (section 2), in the order the reason names the first.
NON_MEASURABLE_FLAGS = ("dural", "bony", "leptomeningeal", "cystic")


@dataclass(frozen=True)
class TargetSums:
    """The target sums at one visit (section 3; section 8 for volumes).

    Attributes:
        sum_ld_mm: Sum of the targets' LDs (absent or merged 0 mm, too small ``too_small_mm``).
        sum_volume_mm3: Sum of the targets' volumes (absent or merged 0 mm^3).
        per_target: Lesion id -> what it contributes to the criteria's sum (mm, or mm^3 when volumetric).
        current: The criteria's sum: ``sum_ld_mm``, or ``sum_volume_mm3`` when volumetric.
    """

    sum_ld_mm: float
    sum_volume_mm3: float
    per_target: Mapping[str, float]
    current: float


@dataclass(frozen=True)
class SumRecord:
    """The target sum of one assessable visit, kept to find the nadir of later visits (section 3).

    Attributes:
        visit_index: Position of the visit in the patient's visits (0 is the baseline).
        visit: Visit label.
        total: The criteria's sum at that visit (mm or mm^3).
        per_target: Lesion id -> its contribution at that visit, for the per-lesion PD rule.
    """

    visit_index: int
    visit: str
    total: float
    per_target: Mapping[str, float]


@dataclass(frozen=True)
class TargetResult:
    """The target response at one follow-up visit (section 3) and why.

    Attributes:
        response: CR, PR, SD or PD; None when there are no targets (no measurable disease).
        reasons: The rule outcome, then notes on targets too small, merged or split.
        pct_change_from_baseline: Change of the sum from baseline in percent; None without targets or
            when the baseline sum is 0.
        pct_change_from_nadir: Change of the sum from nadir in percent; None without targets or when
            the nadir sum is 0.
    """

    response: Response | None
    reasons: tuple[str, ...]
    pct_change_from_baseline: float | None = None
    pct_change_from_nadir: float | None = None


# --- section 2: selection at baseline ------------------------------------------------------------------


def flags_by_id(reader: ReaderInputs) -> dict[str, LesionFlags]:
    """The reader's flags by lesion id.

    Raises:
        ResponseInputError: When one lesion has flags given twice.
    """
    flags: dict[str, LesionFlags] = {}
    for f in reader.lesion_flags:
        if f.lesion_id in flags:
            raise ResponseInputError(f"lesion {f.lesion_id} has flags given twice")
        flags[f.lesion_id] = f
    return flags


def eligibility(obs: LesionObservation, flags: LesionFlags | None, settings: ResponseSettings) -> str | None:
    """Why a baseline lesion cannot be a target (section 2); None when it can."""
    if flags is not None:
        for name in NON_MEASURABLE_FLAGS:
            if getattr(flags, name):
                return words.flagged_non_measurable(obs.lesion_id, name)
        if flags.previously_irradiated and not flags.progressing_since_treatment:
            return words.irradiated_not_progressing(obs.lesion_id)
    if obs.too_small_to_measure:
        return words.marked_too_small(obs.lesion_id)
    ok, reason = measurability(
        obs.longest_diameter_mm,
        obs.perpendicular_diameter_mm,
        obs.slice_count,
        obs.slice_spacing_mm,
        settings,
    )
    return None if ok else words.not_measurable(obs.lesion_id, str(reason))


def _reader_targets(
    chosen: tuple[str, ...],
    present: Mapping[str, LesionObservation],
    eligible: Sequence[LesionObservation],
    settings: ResponseSettings,
) -> list[str]:
    """Checks the reader's selection and says which chosen lesions the rules would not have chosen.

    Raises:
        ResponseInputError: When the selection names a lesion twice, more than ``max_targets``, or a
            lesion not present at baseline.
    """
    if len(set(chosen)) != len(chosen):
        raise ResponseInputError("the reader's target selection names a lesion twice")
    if len(chosen) > settings.max_targets:
        raise ResponseInputError(f"the reader selected {len(chosen)} targets; at most {settings.max_targets}")
    for lesion_id in chosen:
        if lesion_id not in present:
            raise ResponseInputError(f"reader-selected target {lesion_id} is not present at baseline")
    eligible_ids = {o.lesion_id for o in eligible}
    reasons = [words.reader_selected_ineligible(i) for i in chosen if i not in eligible_ids]
    reasons.append(words.reader_targets(chosen))
    return reasons


def _automatic_targets(
    eligible: Sequence[LesionObservation], settings: ResponseSettings
) -> tuple[tuple[str, ...], list[str]]:
    """The ``max_targets`` largest eligible lesions (LD, then volume, then id) and why."""
    ranked = sorted(eligible, key=lambda o: (-o.longest_diameter_mm, -o.volume_mm3, o.lesion_id))
    chosen = ranked[: settings.max_targets]
    if chosen:
        reasons = [
            words.automatic_targets(
                [(o.lesion_id, o.longest_diameter_mm) for o in chosen], settings.max_targets
            )
        ]
    else:
        reasons = [words.NO_MEASURABLE_DISEASE]
    if len(ranked) > settings.max_targets:
        reasons.append(words.further_measurable_lesions(len(ranked) - settings.max_targets))
    return tuple(o.lesion_id for o in chosen), reasons


def select_targets(
    baseline: VisitInput,
    reader: ReaderInputs = ReaderInputs(),  # noqa: B008 - frozen
    settings: ResponseSettings = ResponseSettings(),  # noqa: B008 - frozen
) -> TargetSelection:
    """Targets at baseline (rano-bm.md section 2): up to ``max_targets`` measurable lesions, largest LD
    first (ties: larger volume, then lesion id); every other baseline lesion is a non-target.

    Raises:
        ResponseInputError: When the reader selects an unknown/absent lesion, the same lesion twice,
            or more than ``max_targets``.
    """
    flags = flags_by_id(reader)
    present = {o.lesion_id: o for o in baseline.observations if o.counts_as_present}
    reasons: list[str] = []
    eligible: list[LesionObservation] = []
    for obs in present.values():
        why_not = eligibility(obs, flags.get(obs.lesion_id), settings)
        if why_not is None:
            eligible.append(obs)
        else:
            reasons.append(why_not)
    if reader.target_ids is not None:
        targets = tuple(reader.target_ids)
        reasons += _reader_targets(targets, present, eligible, settings)
    else:
        targets, why = _automatic_targets(eligible, settings)
        reasons += why
    non_targets = tuple(sorted((i for i in present if i not in targets), key=lesion_order))
    return TargetSelection(
        target_ids=targets,
        non_target_ids=non_targets,
        reader_selected=reader.target_ids is not None,
        reasons=tuple(reasons),
    )


# --- section 3: sums and nadir ---------------------------------------------------------------------------


def target_ld(obs: LesionObservation | None, settings: ResponseSettings) -> float:
    """LD a target contributes to the SLD (section 3): 0 mm when absent or merged into another lesion,
    ``too_small_mm`` when marked too small to measure, else its measured LD (fragments summed)."""
    if obs is None or not obs.counts_as_present:
        return 0.0
    if obs.too_small_to_measure:
        return settings.too_small_mm
    return obs.longest_diameter_mm


def target_volume(obs: LesionObservation | None) -> float:
    """Volume a target contributes to the volumetric sum (section 8), mm^3: 0 when absent or merged."""
    if obs is None or not obs.counts_as_present:
        return 0.0
    return obs.volume_mm3


def target_sums(
    observations: Mapping[str, LesionObservation],
    target_ids: Sequence[str],
    criteria: Criteria,
    settings: ResponseSettings,
) -> TargetSums:
    """The target sums at one visit (section 3; section 8 for volumes).

    Args:
        observations: Lesion id -> observation at this visit (a missing id is absent).
        target_ids: The baseline targets.
        criteria: Which sum is the criteria's own.
        settings: Protocol settings (``too_small_mm``).
    """
    # Built-in sum over the targets in selection order: the same float rounding, and 0 (not 0.0) for a
    # patient without targets, as stored assessments have it.
    sum_ld = sum(target_ld(observations.get(i), settings) for i in target_ids)
    sum_volume = sum(target_volume(observations.get(i)) for i in target_ids)
    if criteria is Criteria.VOLUMETRIC:
        per_target = {i: target_volume(observations.get(i)) for i in target_ids}
        current = sum_volume
    else:
        per_target = {i: target_ld(observations.get(i), settings) for i in target_ids}
        current = sum_ld
    return TargetSums(sum_ld_mm=sum_ld, sum_volume_mm3=sum_volume, per_target=per_target, current=current)


def nadir(history: Sequence[SumRecord]) -> SumRecord:
    """The nadir: the smallest sum on study before this visit, baseline included (section 3). On a tie
    the most recent such visit, whose per-lesion LDs the +5 mm rule then compares with."""
    return min(history, key=lambda h: (h.total, -h.visit_index))


def percent_change(value: float, reference: float) -> float | None:
    """Change from ``reference`` in percent; None when the reference is 0 (no percentage of nothing)."""
    return None if reference <= 0 else (value - reference) / reference * 100.0


def percent_factor(threshold_pct: float) -> float:
    """The multiple of a reference sum that a threshold in percent stands for (-30 -> 0.7, +20 -> 1.2)."""
    return 1 + threshold_pct / 100


# --- section 3: target response ----------------------------------------------------------------------------


def _grown_targets(
    sums: TargetSums, nadir_sums: SumRecord, settings: ResponseSettings
) -> list[tuple[str, float]]:
    """Targets whose LD grew by at least ``pd_min_lesion_increase_mm`` over their own LD at the nadir
    visit (section 3, RANO-BM's per-lesion rule), with that growth in mm."""
    grown = []
    for lesion_id, ld_mm in sums.per_target.items():
        growth = ld_mm - nadir_sums.per_target[lesion_id]
        if growth >= settings.pd_min_lesion_increase_mm - TOLERANCE:
            grown.append((lesion_id, growth))
    return grown


def _measured_response(
    sums: TargetSums,
    baseline_sum: float,
    nadir_sums: SumRecord,
    criteria: Criteria,
    settings: ResponseSettings,
) -> tuple[Response, list[str]]:
    """PD, PR or SD of targets not all absent (section 3; section 8 for volumes), and why.

    PD: the sum at or above the PD threshold from nadir, and (diameters) one target grown by
    ``pd_min_lesion_increase_mm`` over its nadir-visit LD or (volumes) a sum above the nadir. PR: the
    sum at or below the PR threshold from baseline. SD: neither.
    """
    volumetric = criteria is Criteria.VOLUMETRIC
    pd_threshold = settings.vol_pd_threshold if volumetric else settings.pd_threshold
    pr_threshold = settings.vol_pr_threshold if volumetric else settings.pr_threshold
    sum_name = words.sum_words(volumetric=volumetric)
    current, nadir_sum = sums.current, nadir_sums.total
    pct_base = percent_change(current, baseline_sum)
    pct_nadir = percent_change(current, nadir_sum)
    above_nadir = current >= nadir_sum * percent_factor(pd_threshold) - TOLERANCE
    grown: list[tuple[str, float]] | None
    if volumetric:
        # No per-lesion rule on volumes; the sum must also exceed the nadir, so that 0 mm3 after a
        # 0 mm3 nadir (a CR) is not PD.
        grown = None
        progressed = above_nadir and current > nadir_sum + TOLERANCE
    else:
        grown = _grown_targets(sums, nadir_sums, settings)
        progressed = above_nadir and bool(grown)
    if progressed:
        text = words.target_pd(
            sum_name,
            current=current,
            nadir=nadir_sum,
            nadir_visit=nadir_sums.visit,
            pct_from_nadir=pct_nadir,
            pd_threshold=pd_threshold,
            grown=grown,
        )
        return Response.PD, [text]
    if current <= baseline_sum * percent_factor(pr_threshold) + TOLERANCE:
        text = words.target_pr(
            sum_name,
            current=current,
            baseline=baseline_sum,
            pct_from_baseline=pct_base,
            pr_threshold=pr_threshold,
        )
        return Response.PR, [text]
    reasons = [
        words.target_sd(
            sum_name,
            current=current,
            baseline=baseline_sum,
            nadir=nadir_sum,
            nadir_visit=nadir_sums.visit,
            pct_from_baseline=pct_base,
            pct_from_nadir=pct_nadir,
            pr_threshold=pr_threshold,
            pd_threshold=pd_threshold,
            above_nadir=above_nadir,
        )
    ]
    if grown is not None and above_nadir and not grown:
        reasons.append(
            words.sum_above_nadir_without_growth(settings.pd_threshold, settings.pd_min_lesion_increase_mm)
        )
    return Response.SD, reasons


def _target_notes(
    observations: Mapping[str, LesionObservation], target_ids: Sequence[str], settings: ResponseSettings
) -> list[str]:
    """How targets too small to measure, merged or split were counted (section 3)."""
    notes = []
    for lesion_id in target_ids:
        o = observations.get(lesion_id)
        if o is None:
            continue
        if o.too_small_to_measure and o.counts_as_present:
            notes.append(words.target_too_small(lesion_id, settings.too_small_mm))
        if o.merged_into is not None:
            notes.append(words.target_merged(lesion_id, o.merged_into))
        if o.fragment_count > 1 and o.counts_as_present:
            notes.append(words.target_split(lesion_id, o.fragment_count))
    return notes


def target_response(
    observations: Mapping[str, LesionObservation],
    target_ids: Sequence[str],
    sums: TargetSums,
    baseline_sum: float,
    nadir_sums: SumRecord,
    criteria: Criteria,
    settings: ResponseSettings,
) -> TargetResult:
    """The target response at one follow-up visit (section 3; section 8 for volumes).

    CR: every target absent (a target merged into another lesion is inside the mass, not absent).
    Otherwise PD, PR or SD on the sum, from baseline and from nadir.

    Args:
        observations: Lesion id -> observation at this visit (a missing id is absent).
        target_ids: The baseline targets; none means no measurable disease (response None).
        sums: The target sums at this visit.
        baseline_sum: The criteria's sum at baseline (mm or mm^3).
        nadir_sums: The nadir visit's sums (see :func:`nadir`).
        criteria: Diameters (RANO-BM) or volumes (section 8).
        settings: Protocol settings (thresholds, ``pd_min_lesion_increase_mm``, ``too_small_mm``).
    """
    if not target_ids:
        return TargetResult(response=None, reasons=())
    if all(observations.get(i) is None or not observations[i].seen for i in target_ids):
        response, reasons = Response.CR, [words.targets_absent(target_ids)]
    else:
        response, reasons = _measured_response(sums, baseline_sum, nadir_sums, criteria, settings)
    return TargetResult(
        response=response,
        reasons=(*reasons, *_target_notes(observations, target_ids, settings)),
        pct_change_from_baseline=percent_change(sums.current, baseline_sum),
        pct_change_from_nadir=percent_change(sums.current, nadir_sums.total),
    )
