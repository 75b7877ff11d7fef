"""Inputs and outputs of the RANO-BM engine: response categories and frozen dataclasses.

Inputs (:class:`VisitInput`, :class:`LesionObservation`, :class:`ReaderInputs`, :class:`LesionFlags`)
validate themselves on construction, so the rules never see an inconsistent visit. Outputs
(:class:`TargetSelection`, :class:`VisitAssessment`, :class:`Assessment`) carry their reasons, the
settings and the engine version. Two helpers every part shares live here too: the float tolerance of
the rules' threshold comparisons and the order of lesion ids.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from rano import ENGINE_VERSION
from rano.errors import ResponseInputError

#: The rules compare sums and diameters with their thresholds within this tolerance, so that a value
#: equal to a threshold on paper (SLD 24.5 mm of 35 mm is exactly -30%) is not missed to float rounding.
TOLERANCE = 1e-9


class Response(StrEnum):
    """Response categories (CDISC-style codes used across MetTrack)."""

    CR = "CR"
    PR = "PR"
    SD = "SD"
    PD = "PD"
    NE = "NE"
    NON_CR_NON_PD = "NON-CR/NON-PD"


class Steroids(StrEnum):
    """Corticosteroid use at a visit, compared with the previous assessment."""

    NONE = "none"
    DECREASED = "decreased"
    STABLE = "stable"
    INCREASED = "increased"


class ClinicalStatus(StrEnum):
    """Clinical (neurological) status at a visit."""

    IMPROVED = "improved"
    STABLE = "stable"
    WORSE = "worse"


class NewLesions(StrEnum):
    """New-lesion status of a visit (rano-bm.md section 5)."""

    NONE = "none"
    EQUIVOCAL = "equivocal"
    UNEQUIVOCAL = "unequivocal"


class Criteria(StrEnum):
    """Which sum drives the target response: diameters (RANO-BM) or volumes (section 8)."""

    RANO_BM = "rano-bm"
    VOLUMETRIC = "volumetric"


class Role(StrEnum):
    """Role of a lesion in the assessment."""

    TARGET = "target"
    NON_TARGET = "non_target"
    NEW = "new"


@dataclass(frozen=True)
class LesionObservation:
    """One lesion at one visit.

    Attributes:
        lesion_id: Stable label (L1, L2, ...) that never changes across visits.
        present: False when the lesion has no component of its own at this visit: absent, or (with
            ``merged_into``) inside another lesion's mass. Either way it counts 0 mm.
        longest_diameter_mm: LD; for a split lesion the sum of its fragments' LDs.
        perpendicular_diameter_mm: Perpendicular diameter on the LD slice.
        volume_mm3: Volume (sum over fragments).
        slice_count: Number of axial slices showing the lesion.
        slice_spacing_mm: Slice spacing of the image it was measured on (for measurability).
        too_small_to_measure: Reader flag: present but too small; counts ``too_small_mm``.
        fragment_count: Number of follow-up components matched to this lesion (split when > 1).
        merged_into: Lesion id that absorbed this lesion in a merge. This one then counts 0 mm in the
            sums (the mass is measured once, as that lesion) but has not disappeared: it is still
            there, inside the mass, so it never counts as absent for a CR (rano-bm.md sections 3-4).
    """

    lesion_id: str
    present: bool = True
    longest_diameter_mm: float = 0.0
    perpendicular_diameter_mm: float = 0.0
    volume_mm3: float = 0.0
    slice_count: int = 0
    slice_spacing_mm: float | None = None
    too_small_to_measure: bool = False
    fragment_count: int = 1
    merged_into: str | None = None

    def __post_init__(self) -> None:
        if not self.lesion_id:
            raise ResponseInputError("a lesion observation needs a lesion id")
        for name in ("longest_diameter_mm", "perpendicular_diameter_mm", "volume_mm3"):
            if not getattr(self, name) >= 0:
                raise ResponseInputError(f"{self.lesion_id}: {name} must be >= 0, got {getattr(self, name)}")
        if self.slice_count < 0:
            raise ResponseInputError(f"{self.lesion_id}: slice_count must be >= 0")
        if self.merged_into == self.lesion_id:
            raise ResponseInputError(f"{self.lesion_id} cannot be merged into itself")

    @property
    def counts_as_present(self) -> bool:
        """Present at this visit and not absorbed into another lesion."""
        return self.present and self.merged_into is None

    @property
    def seen(self) -> bool:
        """Visible at this visit, measured on its own or inside the mass it merged into."""
        return self.present or self.merged_into is not None


@dataclass(frozen=True)
class VisitInput:
    """One imaging visit with its lesion observations and clinical inputs.

    Attributes:
        visit: Visit label (BL, FU1, ...); the first visit of a patient is the baseline.
        date: Scan date.
        observations: Lesions observed (or recorded absent) at this visit. A lesion with no
            observation is absent.
        steroids: Corticosteroid status.
        clinical_status: Clinical status.
        imaging_available: False when imaging is missing or unreadable: the visit is NE.
        unequivocal_non_target_progression: Reader judgement of unequivocal non-target progression.
    """

    visit: str
    date: dt.date
    observations: tuple[LesionObservation, ...] = ()
    steroids: Steroids = Steroids.NONE
    clinical_status: ClinicalStatus = ClinicalStatus.STABLE
    imaging_available: bool = True
    unequivocal_non_target_progression: bool = False

    def __post_init__(self) -> None:
        if not self.visit:
            raise ResponseInputError("a visit needs a label")
        if not isinstance(self.date, dt.date):
            raise ResponseInputError(f"visit {self.visit}: date must be a date, got {self.date!r}")
        try:
            Steroids(self.steroids)
            ClinicalStatus(self.clinical_status)
        except ValueError as exc:
            raise ResponseInputError(f"visit {self.visit}: {exc}") from None
        ids = [o.lesion_id for o in self.observations]
        if len(ids) != len(set(ids)):
            raise ResponseInputError(f"visit {self.visit}: a lesion id appears more than once")
        present = {o.lesion_id for o in self.observations if o.counts_as_present}
        for o in self.observations:
            if o.merged_into is not None and o.merged_into not in present:
                raise ResponseInputError(
                    f"visit {self.visit}: {o.lesion_id} is merged into {o.merged_into}, "
                    "which is not present at this visit"
                )


@dataclass(frozen=True)
class LesionFlags:
    """Reader flags on one lesion (rano-bm.md section 2)."""

    lesion_id: str
    cystic: bool = False
    dural: bool = False
    bony: bool = False
    leptomeningeal: bool = False
    previously_irradiated: bool = False
    progressing_since_treatment: bool = False


@dataclass(frozen=True)
class ReaderInputs:
    """Reader decisions the engine must respect.

    Attributes:
        lesion_flags: Flags per lesion.
        target_ids: Reader's target selection; None keeps the automatic one.
    """

    lesion_flags: tuple[LesionFlags, ...] = ()
    target_ids: tuple[str, ...] | None = None


@dataclass(frozen=True)
class TargetSelection:
    """Baseline target / non-target roles and why."""

    target_ids: tuple[str, ...]
    non_target_ids: tuple[str, ...]
    reader_selected: bool
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class VisitAssessment:
    """Responses at one visit under one criteria (null fields at baseline and at NE visits).

    Sums, nadir and percentages are in mm for RANO-BM and in mm^3 for the volumetric criteria
    (``sum_ld_mm`` and ``sum_volume_mm3`` are both always given).
    """

    visit: str
    date: dt.date
    is_baseline: bool
    criteria: Criteria
    sum_ld_mm: float | None
    sum_volume_mm3: float | None
    baseline_sum: float | None
    nadir_sum: float | None
    nadir_visit: str | None
    pct_change_from_baseline: float | None
    pct_change_from_nadir: float | None
    target_response: Response | None
    non_target_response: Response | None
    new_lesions: NewLesions | None
    new_lesion_ids: tuple[str, ...]
    possible_new_lesion_ids: tuple[str, ...]
    non_target_growth_flags: tuple[str, ...]
    overall_response: Response | None
    confirmed: bool | None
    confirmed_by: str | None
    backdated_progression_date: dt.date | None
    reasons: tuple[str, ...]
    settings: dict[str, Any] = field(default_factory=dict)
    engine_version: str = ENGINE_VERSION


@dataclass(frozen=True)
class Assessment:
    """A patient's assessment under one criteria."""

    criteria: Criteria
    selection: TargetSelection
    visits: tuple[VisitAssessment, ...]
    best_overall_response: Response | None
    progression_date: dt.date | None
    progression_visit: str | None
    roles: Mapping[str, Role]
    first_seen: Mapping[str, str]
    settings: dict[str, Any] = field(default_factory=dict)
    engine_version: str = ENGINE_VERSION


def lesion_order(lesion_id: str) -> tuple[int, str]:
    """Sort key of lesion ids: by the number they hold (L2 before L10), then by the id itself."""
    digits = "".join(ch for ch in lesion_id if ch.isdigit())
    return (int(digits) if digits else 0, lesion_id)
