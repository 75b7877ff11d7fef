"""Routing of a received DICOM study: which series is the post-contrast 3D T1, which visit it belongs to.

Pure functions over frozen dataclasses: they take the attributes of the received series (read from
their headers by :func:`study_from_folder`) and a trial's rules, and return a decision with its reasons
in words a data manager can check. Nothing here knows about the database; the service layer looks up
the patient and the visits and records the decision.

Rules of the series choice (:func:`choose_series`), each one a reason when it fails:

1. Modality is MR (PS3.3 C.7.3.1 General Series).
2. Series Description matches one of ``include_patterns`` and none of ``exclude_patterns`` (regular
   expressions, case-insensitive).
3. Contrast: Contrast/Bolus Agent (0018,0010, PS3.3 C.7.6.4) present, when ``require_contrast``.
4. 3D acquisition: MR Acquisition Type (0018,0023) is ``3D``, when ``require_3d``.
5. Slice Thickness (0018,0050) at most ``max_slice_thickness_mm`` (when both are set).
6. At least ``min_instances`` images (or one multi-frame image).

Among the series that pass, the priority is: the earliest ``prefer_patterns`` match, then the thinnest
slices, then the most images, then the highest Series Number (a repeat acquisition comes later).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

#: Clinical Trial Subject and Study modules (PS3.3 C.7.1.3, C.7.2.3) keywords read from a study.
TRIAL_KEYWORDS = (
    "ClinicalTrialSponsorName",
    "ClinicalTrialProtocolID",
    "ClinicalTrialSubjectID",
    "ClinicalTrialTimePointID",
)


@dataclass(frozen=True)
class SeriesRules:
    """A trial's rules for the series to segment (the post-contrast 3D T1).

    Attributes:
        include_patterns: Series Description must match one (regular expressions, case-insensitive).
        exclude_patterns: Series Description must match none.
        prefer_patterns: Priority among passing series: the first pattern matched wins.
        require_contrast: Contrast/Bolus Agent must be present.
        require_3d: MR Acquisition Type must be 3D.
        max_slice_thickness_mm: Largest Slice Thickness accepted (None: any).
        min_instances: Fewest single-frame images of a volume.
    """

    include_patterns: tuple[str, ...] = (r"t1", r"mprage", r"bravo", r"spgr", r"tfe", r"vibe")
    exclude_patterns: tuple[str, ...] = (r"\bpre\b", r"pre[-_ ]?contrast", r"native", r"flair", r"t2", r"dwi")
    prefer_patterns: tuple[str, ...] = (r"post|\+c|gd|contrast", r"mprage|bravo|spgr|tfe|vibe")
    require_contrast: bool = True
    require_3d: bool = True
    max_slice_thickness_mm: float | None = 1.5
    min_instances: int = 3

    def __post_init__(self) -> None:
        for pattern in (*self.include_patterns, *self.exclude_patterns, *self.prefer_patterns):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"Invalid series description pattern {pattern!r}: {exc}") from exc
        if self.max_slice_thickness_mm is not None and self.max_slice_thickness_mm <= 0:
            raise ValueError("max_slice_thickness_mm must be positive.")
        if self.min_instances < 1:
            raise ValueError("min_instances must be at least 1.")

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> SeriesRules:
        """Rules from a JSON object (a trial's stored rules); missing keys keep their default.

        Raises:
            ValueError: an unknown key or an invalid value.
        """
        values = dict(values or {})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown series rule(s): {', '.join(unknown)}.")
        for key in ("include_patterns", "exclude_patterns", "prefer_patterns"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe form (stored with each routing decision)."""
        return {name: list(v) if isinstance(v, tuple) else v for name, v in self.__dict__.items()}


@dataclass(frozen=True)
class ReceivedSeries:
    """What routing needs of one received series (first instance's header, and the instance count).

    No patient-identifying value is kept: the Patient ID only as ``patient_key``, given by the caller's
    keyed hash (:func:`study_from_folder`).
    """

    series_instance_uid: str
    series_description: str
    modality: str
    instances: int
    series_number: int | None
    contrast_bolus_agent: str | None
    mr_acquisition_type: str | None
    slice_thickness_mm: float | None
    number_of_frames: int = 1
    folder: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class ReceivedStudy:
    """A received study: its series and the study-level attributes routing reads.

    Attributes:
        study_instance_uid: Study Instance UID.
        study_date: Study Date (None when absent or malformed).
        patient_key: Keyed hash of the sender's Patient ID (never the Patient ID itself).
        trial: The Clinical Trial attributes present (keyword -> value), e.g. ``ClinicalTrialSubjectID``.
        series: The series, in Series Number order.
    """

    study_instance_uid: str
    study_date: dt.date | None
    patient_key: str
    trial: dict[str, str]
    series: tuple[ReceivedSeries, ...]


@dataclass(frozen=True)
class SeriesVerdict:
    """One series against the rules: whether it passes, and why (or why not)."""

    series_instance_uid: str
    series_description: str
    passed: bool
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class SeriesChoice:
    """The chosen series (None when none passes) and every series' verdict, in the order considered."""

    selected: ReceivedSeries | None
    verdicts: tuple[SeriesVerdict, ...]
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "selected": self.selected.series_instance_uid if self.selected else None,
            "reason": self.reason,
            "verdicts": [
                {
                    "series_instance_uid": v.series_instance_uid,
                    "series_description": v.series_description,
                    "passed": v.passed,
                    "reasons": list(v.reasons),
                }
                for v in self.verdicts
            ],
        }


def _matches(patterns: Iterable[str], text: str) -> str | None:
    for pattern in patterns:
        if re.search(pattern, text, flags=re.IGNORECASE):
            return pattern
    return None


def series_verdict(series: ReceivedSeries, rules: SeriesRules) -> SeriesVerdict:
    """Check one series against every rule (the module docstring's list); collect each outcome."""
    failures: list[str] = []
    passes: list[str] = []
    description = series.series_description
    if series.modality.upper() != "MR":
        failures.append(f"modality is {series.modality or 'missing'}, not MR")
    included = _matches(rules.include_patterns, description)
    if not included:
        failures.append(f"description '{description}' matches no include pattern")
    else:
        passes.append(f"description matches '{included}'")
    excluded = _matches(rules.exclude_patterns, description)
    if excluded:
        failures.append(f"description '{description}' matches exclude pattern '{excluded}'")
    if rules.require_contrast:
        if series.contrast_bolus_agent:
            passes.append("contrast agent recorded")
        else:
            failures.append("no contrast agent recorded (Contrast/Bolus Agent absent)")
    if rules.require_3d:
        if (series.mr_acquisition_type or "").upper() == "3D":
            passes.append("3D acquisition")
        else:
            failures.append(f"MR acquisition type is {series.mr_acquisition_type or 'missing'}, not 3D")
    limit = rules.max_slice_thickness_mm
    if limit is not None:
        if series.slice_thickness_mm is None:
            failures.append("slice thickness missing")
        elif series.slice_thickness_mm > limit + 1e-6:
            failures.append(f"slice thickness {series.slice_thickness_mm:g} mm exceeds {limit:g} mm")
        else:
            passes.append(f"slice thickness {series.slice_thickness_mm:g} mm <= {limit:g} mm")
    if series.number_of_frames <= 1 and series.instances < rules.min_instances:
        failures.append(f"only {series.instances} image(s), fewer than {rules.min_instances}")
    passed = not failures
    return SeriesVerdict(
        series_instance_uid=series.series_instance_uid,
        series_description=description,
        passed=passed,
        reasons=tuple(passes if passed else failures),
    )


def _priority(series: ReceivedSeries, rules: SeriesRules) -> tuple[int, float, int, int]:
    """Sort key, smallest first: preferred pattern rank, slice thickness, -images, -series number."""
    rank = len(rules.prefer_patterns)
    for index, pattern in enumerate(rules.prefer_patterns):
        if re.search(pattern, series.series_description, flags=re.IGNORECASE):
            rank = index
            break
    thickness = series.slice_thickness_mm if series.slice_thickness_mm is not None else float("inf")
    images = series.instances * max(series.number_of_frames, 1)
    return rank, thickness, -images, -(series.series_number or 0)


def choose_series(series: Sequence[ReceivedSeries], rules: SeriesRules) -> SeriesChoice:
    """Pick the series to segment from a study's series, with the reason for the pick.

    Returns:
        The choice; ``selected`` is None when no series passes (the study goes to the inbox).
    """
    verdicts = tuple(series_verdict(s, rules) for s in series)
    passing = [s for s, v in zip(series, verdicts, strict=True) if v.passed]
    if not passing:
        return SeriesChoice(None, verdicts, "no series passes the trial's series rules")
    ranked = sorted(passing, key=lambda s: _priority(s, rules))
    chosen = ranked[0]
    if len(ranked) == 1:
        reason = f"the only series that passes the rules: '{chosen.series_description}'"
    else:
        others = ", ".join(f"'{s.series_description}'" for s in ranked[1:])
        reason = (
            f"'{chosen.series_description}' chosen over {others} by priority "
            "(preferred description, then thinnest slices, most images, latest series number)"
        )
    return SeriesChoice(chosen, verdicts, reason)


@dataclass(frozen=True)
class Visit:
    """A scheduled visit of the patient, as visit routing sees it."""

    key: int
    visit_label: str
    scan_date: dt.date


@dataclass(frozen=True)
class VisitChoice:
    """The matched visit (``visit`` None: none matched; ``proposed_label`` names a new unscheduled one)."""

    visit: Visit | None
    reason: str
    proposed_label: str = ""


def choose_visit(
    visits: Sequence[Visit], *, time_point_id: str | None, study_date: dt.date | None, window_days: int
) -> VisitChoice:
    """The visit a study belongs to: by Clinical Trial Time Point ID, else by study date within a window.

    Args:
        visits: The patient's visits.
        time_point_id: Clinical Trial Time Point ID (0012,0050) of the study, when the site sets it.
        study_date: Study Date of the study.
        window_days: Largest distance in days between the study date and a visit's scan date.

    Returns:
        The matched visit, or none with the label proposed for a new unscheduled visit.
    """
    if time_point_id:
        wanted = time_point_id.strip().upper()
        for visit in visits:
            if visit.visit_label.upper() == wanted:
                return VisitChoice(visit, f"Clinical Trial Time Point ID '{time_point_id}' names this visit")
    if study_date is not None:
        near = [v for v in visits if abs((v.scan_date - study_date).days) <= window_days]
        if near:
            best = min(near, key=lambda v: (abs((v.scan_date - study_date).days), v.scan_date))
            days = abs((best.scan_date - study_date).days)
            return VisitChoice(
                best,
                f"study date {study_date.isoformat()} is {days} day(s) from the scan date of "
                f"{best.visit_label} (window {window_days} days)",
            )
        label = f"UNSCHED-{study_date:%Y%m%d}"
        why = f"no visit within {window_days} days of the study date {study_date.isoformat()}"
        if time_point_id:
            why = f"Time Point ID '{time_point_id}' names no visit, and {why}"
        return VisitChoice(None, why + f"; proposed: a new unscheduled visit {label}", label)
    return VisitChoice(None, "the study has no Study Date and no Time Point ID naming a visit")


def _date(value: Any) -> dt.date | None:
    text = str(value or "").strip()
    try:
        return dt.datetime.strptime(text[:8], "%Y%m%d").date()
    except ValueError:
        return None


def _float(value: Any) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _attribute(ds: pydicom.Dataset, keyword: str) -> Any:
    """An attribute at the top level, else in the first item of a shared or first per-frame functional
    group macro of a multi-frame image (PS3.3 C.7.6.16), e.g. Slice Thickness in the Pixel Measures
    macro, MR Acquisition Type in a legacy converted image's unassigned shared attributes."""
    value = ds.get(keyword)
    if value not in (None, ""):
        return value
    for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        for group in (ds.get(groups) or [])[:1]:
            for element in group:
                if element.VR == "SQ" and element.value:
                    nested = element.value[0].get(keyword)
                    if nested not in (None, ""):
                        return nested
    return None


def _series_from(ds: pydicom.Dataset, instances: int, folder: str) -> ReceivedSeries:
    number = ds.get("SeriesNumber")
    contrast = _attribute(ds, "ContrastBolusAgent")
    if contrast in (None, "") and "ContrastBolusUsageSequence" in ds:  # enhanced MR (C.8.13.5)
        contrast = "present"
    return ReceivedSeries(
        series_instance_uid=str(ds.get("SeriesInstanceUID", "")),
        series_description=str(ds.get("SeriesDescription", "") or ""),
        modality=str(ds.get("Modality", "") or ""),
        instances=instances,
        series_number=int(number) if number not in (None, "") else None,
        contrast_bolus_agent=str(contrast) if contrast not in (None, "") else None,
        mr_acquisition_type=str(_attribute(ds, "MRAcquisitionType") or "") or None,
        slice_thickness_mm=_float(_attribute(ds, "SliceThickness")),
        number_of_frames=int(ds.get("NumberOfFrames", 1) or 1),
        folder=folder,
    )


def study_from_folder(folder: str | Path, *, patient_key: Any) -> ReceivedStudy:
    """Read a received study laid out as ``folder/<series>/<instance files>`` (the spool's layout).

    Args:
        folder: The study folder; each subfolder holds one series' instances.
        patient_key: ``PatientID -> str``, the keyed hash that stands for the Patient ID.

    Raises:
        ValueError: the folder holds no readable DICOM instance.
    """
    series: list[ReceivedSeries] = []
    study: pydicom.Dataset | None = None
    for sub in sorted(p for p in Path(folder).iterdir() if p.is_dir()):
        files = sorted(p for p in sub.iterdir() if p.is_file() and not p.name.startswith("."))
        header = None
        for path in files:
            try:
                header = pydicom.dcmread(path, stop_before_pixels=True)
                break
            except (InvalidDicomError, OSError, ValueError, EOFError):
                continue
        if header is None:
            continue
        study = study or header
        series.append(_series_from(header, len(files), sub.name))
    if study is None:
        raise ValueError("The received study holds no readable DICOM instance.")
    series.sort(key=lambda s: (s.series_number or 0, s.series_instance_uid))
    trial = {k: str(study.get(k)) for k in TRIAL_KEYWORDS if str(study.get(k, "") or "").strip()}
    return ReceivedStudy(
        study_instance_uid=str(study.get("StudyInstanceUID", "")),
        study_date=_date(study.get("StudyDate")),
        patient_key=patient_key(str(study.get("PatientID", "") or "")),
        trial=trial,
        series=tuple(series),
    )


__all__ = [
    "TRIAL_KEYWORDS",
    "ReceivedSeries",
    "ReceivedStudy",
    "SeriesChoice",
    "SeriesRules",
    "SeriesVerdict",
    "Visit",
    "VisitChoice",
    "choose_series",
    "choose_visit",
    "series_verdict",
    "study_from_folder",
]
