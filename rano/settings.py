"""Response-criteria settings (rano-bm.md section 9) as one frozen, validated dataclass.

Every assessment stores ``ResponseSettings.to_dict()`` next to its result, so that the exact protocol
parameters used can always be shown and re-applied. Percentages are stored as percent numbers
(``pr_threshold=-30.0`` means "30% below baseline"), because that is how trial protocols write them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rano.errors import SettingsError

#: Above this slice spacing the minimum measurable LD depends on the spacing (rano-bm.md section 2), mm.
THICK_SLICE_SPACING_MM = 5.0
#: ... and is this many slice spacings (section 2: "the minimum LD becomes 2 x slice spacing").
THICK_SLICE_LD_FACTOR = 2.0


@dataclass(frozen=True)
class ResponseSettings:
    """Protocol settings of the RANO-BM engine, with the defaults of rano-bm.md section 9.

    Attributes:
        max_targets: Maximum number of target lesions chosen at baseline.
        measurable_min_ld_mm: Minimum longest diameter of a measurable lesion (mm); becomes twice the
            slice spacing when that exceeds 5 mm.
        min_lesion_volume_mm3: Connected components smaller than this are dropped as noise (mm^3).
        too_small_mm: LD counted for a target a reader marks "too small to measure" (mm).
        new_lesion_min_ld_mm: Minimum LD of an unequivocal new lesion (mm).
        confirmation_days: Minimum days between a CR/PR and the visit that confirms it.
        min_sd_days: Minimum days after baseline for an SD to count in the best overall response.
        pr_threshold: Change of the target sum from baseline that makes PR, in percent (negative).
        pd_threshold: Change of the target sum from nadir that makes PD, in percent (positive).
        pd_min_lesion_increase_mm: Absolute LD increase of at least one target over its nadir-visit LD
            that PD also needs (mm).
        vol_pr_threshold: Volumetric PR threshold on the sum of target volumes, percent from baseline.
        vol_pd_threshold: Volumetric PD threshold on the sum of target volumes, percent from nadir.
        immunotherapy: When true, new lesions alone do not define progression.
    """

    max_targets: int = 5
    measurable_min_ld_mm: float = 10.0
    min_lesion_volume_mm3: float = 5.0
    too_small_mm: float = 5.0
    new_lesion_min_ld_mm: float = 5.0
    confirmation_days: int = 28
    min_sd_days: int = 42
    pr_threshold: float = -30.0
    pd_threshold: float = 20.0
    pd_min_lesion_increase_mm: float = 5.0
    vol_pr_threshold: float = -65.0
    vol_pd_threshold: float = 73.0
    immunotherapy: bool = False

    def __post_init__(self) -> None:
        # Validate on construction so an invalid protocol can never reach the rules.
        for f in dataclasses.fields(self):
            _check_type(f, getattr(self, f.name))
        self._check_ranges()

    def _check_ranges(self) -> None:
        """Every setting within its range (types already checked).

        Raises:
            SettingsError: Naming the first setting out of range.
        """
        if self.max_targets < 1:
            raise SettingsError(f"setting 'max_targets' must be at least 1, got {self.max_targets}")
        for name in (
            "measurable_min_ld_mm",
            "too_small_mm",
            "new_lesion_min_ld_mm",
            "pd_min_lesion_increase_mm",
        ):
            if getattr(self, name) <= 0:
                raise SettingsError(f"setting {name!r} must be > 0 mm, got {getattr(self, name)}")
        for name in ("min_lesion_volume_mm3", "confirmation_days", "min_sd_days"):
            if getattr(self, name) < 0:
                raise SettingsError(f"setting {name!r} must be >= 0, got {getattr(self, name)}")
        for name in ("pr_threshold", "vol_pr_threshold"):
            if not -100.0 < getattr(self, name) < 0.0:
                raise SettingsError(
                    f"setting {name!r} is a percent change from baseline and must lie in (-100, 0), "
                    f"got {getattr(self, name)}"
                )
        for name in ("pd_threshold", "vol_pd_threshold"):
            if getattr(self, name) <= 0.0:
                raise SettingsError(
                    f"setting {name!r} is a percent increase from nadir and must be > 0, got {getattr(self, name)}"
                )

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Names of every setting, in section-9 order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> ResponseSettings:
        """Build settings from a mapping (e.g. a trial's JSON field); missing keys take defaults.

        Percent settings may be numbers (``-30``) or strings with a percent sign (``"-30%"``).

        Raises:
            SettingsError: On an unknown key, a value of the wrong type or out of range.
        """
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise SettingsError(f"settings must be a JSON object, got {type(data).__name__}")
        known = set(cls.field_names())
        unknown = sorted(set(data) - known)
        if unknown:
            raise SettingsError(
                f"unknown setting(s) {', '.join(map(repr, unknown))}; known: {', '.join(sorted(known))}"
            )
        values: dict[str, Any] = {}
        for key, value in data.items():
            if isinstance(value, str) and key.endswith("threshold"):
                text = value.strip().removesuffix("%").replace("\u2212", "-")
                try:
                    value = float(text)
                except ValueError:
                    raise SettingsError(f"setting {key!r} must be a percentage, got {value!r}") from None
            values[key] = value
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping of every setting (round-trips through :meth:`from_dict`)."""
        return dataclasses.asdict(self)

    def min_measurable_ld_mm(self, slice_spacing_mm: float | None) -> float:
        """Minimum LD of a measurable lesion for images with this slice spacing (rano-bm.md section 2).

        Args:
            slice_spacing_mm: Distance between axial slices; ``None`` when unknown.
        """
        if slice_spacing_mm is not None and slice_spacing_mm > THICK_SLICE_SPACING_MM:
            return max(self.measurable_min_ld_mm, THICK_SLICE_LD_FACTOR * slice_spacing_mm)
        return self.measurable_min_ld_mm


def _check_type(f: dataclasses.Field[Any], value: Any) -> None:
    """One setting of the right type: true/false for a flag, a finite number (whole for an int).

    Raises:
        SettingsError: Naming the setting and the value it got.
    """
    if f.type in ("bool", bool):
        if not isinstance(value, bool):
            raise SettingsError(f"setting {f.name!r} must be true or false, got {value!r}")
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SettingsError(f"setting {f.name!r} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise SettingsError(f"setting {f.name!r} must be finite, got {value!r}")
    if f.type in ("int", int) and not float(value).is_integer():
        raise SettingsError(f"setting {f.name!r} must be a whole number, got {value!r}")
