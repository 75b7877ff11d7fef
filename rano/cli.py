"""``rano-assess``: RANO-BM assessment of one patient from per-visit lesion masks, JSON on stdout.

Usage: ``rano-assess VISITS.json [--criteria rano-bm|volumetric|both] [--settings SETTINGS.json]``.
The input format is described in the README (section "rano"). Bad input exits with status 2 and one
line on stderr.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import SimpleITK as sitk

from rano import ENGINE_VERSION
from rano.errors import RanoError
from rano.measure import LesionMeasurement
from rano.pipeline import observe_visits
from rano.response import (
    Assessment,
    ClinicalStatus,
    Criteria,
    Steroids,
    VisitInput,
    assess,
    compare_criteria,
)
from rano.settings import ResponseSettings

_VISIT_KEYS = {"visit", "date", "mask", "image", "steroids", "clinical_status"}
_TOP_KEYS = {"subject_id", "visits"}
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


class InputError(RanoError):
    """The VISITS.json file or a file it names is unusable."""


class _ArgumentParser(argparse.ArgumentParser):
    """argparse, with a bad command line reported like any other bad input: one line, status 2.

    argparse prints its usage block before the error; the README promises one line on stderr.
    ``--help`` still prints the usage.
    """

    def error(self, message: str) -> NoReturn:
        raise InputError(f"{message} (see rano-assess --help)")


def _read_image(path: Path, what: str) -> sitk.Image:
    if not path.is_file():
        raise InputError(f"{what} file not found: {path}")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError:
        raise InputError(f"{what} file is not a readable image: {path}") from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{what} must be a 3D single-channel image: {path}")
    return image


def _choice(value: Any, enum: type[Steroids] | type[ClinicalStatus], key: str, visit: str) -> Any:
    try:
        return enum(value)
    except ValueError:
        allowed = " | ".join(e.value for e in enum)
        raise InputError(f"visit {visit}: {key} must be one of {allowed}, got {value!r}") from None


def _date(value: Any, visit: str) -> dt.date:
    """A visit date written YYYY-MM-DD (date.fromisoformat alone also takes 20240301 and 2024-W09-5)."""
    try:
        if not isinstance(value, str) or not _DATE.fullmatch(value):
            raise ValueError(value)
        return dt.date.fromisoformat(value)
    except ValueError:
        raise InputError(f"visit {visit}: date must be YYYY-MM-DD, got {value!r}") from None


def _r(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(float(value), digits)


@dataclass(frozen=True)
class _LoadedVisit:
    """One entry of VISITS.json, checked, with its mask and image read (None when not given)."""

    label: str
    date: dt.date
    steroids: Steroids
    clinical_status: ClinicalStatus
    mask: sitk.Image | None
    image: sitk.Image | None


def _read_visits_file(visits_json: Path) -> tuple[str, list[Any]]:
    """The subject id and the visit entries of a VISITS.json, its top level checked."""
    try:
        data = json.loads(Path(visits_json).read_text())
    except FileNotFoundError:
        raise InputError(f"visits file not found: {visits_json}") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"visits file is not valid JSON: {visits_json} ({exc})") from None
    if not isinstance(data, dict):
        raise InputError("the visits file must hold a JSON object")
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise InputError(f"unknown field(s) in the visits file: {', '.join(unknown)}")
    subject_id = data.get("subject_id")
    visits_in = data.get("visits")
    if not isinstance(subject_id, str) or not subject_id:
        raise InputError("subject_id must be a non-empty string")
    if not isinstance(visits_in, list) or not visits_in:
        raise InputError("visits must be a non-empty list")
    return subject_id, visits_in


def _visit_label(entry: Any, number: int) -> str:
    if not isinstance(entry, dict):
        raise InputError(f"visit #{number + 1} must be a JSON object")
    label = entry.get("visit")
    if not isinstance(label, str) or not label:
        raise InputError(f"visit #{number + 1}: 'visit' must be a non-empty string")
    return label


def _visit_mask(entry: dict[str, Any], label: str, base_dir: Path, *, baseline: bool) -> sitk.Image | None:
    """The visit's mask; None when imaging is missing (``"mask": null``, not allowed at baseline)."""
    if "mask" not in entry:
        raise InputError(f"visit {label}: 'mask' (a file path, or null when imaging is missing) is required")
    if entry["mask"] is None:
        # Imaging missing for this visit: it is assessed NE (rano-bm.md section 6).
        if baseline:
            raise InputError(f"baseline visit {label} needs a mask")
        if entry.get("image") is not None:
            raise InputError(f"visit {label}: an image without a mask")
        return None
    if not isinstance(entry["mask"], str):
        raise InputError(f"visit {label}: 'mask' must be a file path or null")
    return _read_image(base_dir / entry["mask"], f"visit {label}: mask")


def _visit_image(entry: dict[str, Any], label: str, base_dir: Path, mask: sitk.Image) -> sitk.Image | None:
    """The visit's image, which must lie on its mask's grid; None when not given."""
    if entry.get("image") is None:
        return None
    if not isinstance(entry["image"], str):
        raise InputError(f"visit {label}: 'image' must be a file path")
    image = _read_image(base_dir / entry["image"], f"visit {label}: image")
    same_grid = (
        image.GetSize() == mask.GetSize()
        and np.allclose(image.GetSpacing(), mask.GetSpacing(), atol=1e-4)
        and np.allclose(image.GetOrigin(), mask.GetOrigin(), atol=1e-3)
        and np.allclose(image.GetDirection(), mask.GetDirection(), atol=1e-4)
    )
    if not same_grid:
        raise InputError(f"visit {label}: image and mask lie on different grids")
    return image


def _load_visit(entry: Any, number: int, loaded: Sequence[_LoadedVisit], base_dir: Path) -> _LoadedVisit:
    """Entry ``number`` of the visits list, checked in the order its errors are reported."""
    label = _visit_label(entry, number)
    unknown = sorted(set(entry) - _VISIT_KEYS)
    if unknown:
        raise InputError(f"visit {label}: unknown field(s) {', '.join(unknown)}")
    if any(label == row.label for row in loaded):
        raise InputError(f"visit {label} appears twice")
    date = _date(entry.get("date"), label)
    if loaded and date <= loaded[-1].date:
        raise InputError(f"visit {label}: dates out of order ({date} is not after {loaded[-1].date})")
    steroids = _choice(entry.get("steroids", "none"), Steroids, "steroids", label)
    clinical = _choice(entry.get("clinical_status", "stable"), ClinicalStatus, "clinical_status", label)
    mask = _visit_mask(entry, label, base_dir, baseline=not loaded)
    return _LoadedVisit(
        label=label,
        date=date,
        steroids=steroids,
        clinical_status=clinical,
        mask=mask,
        image=None if mask is None else _visit_image(entry, label, base_dir, mask),
    )


def assess_files(
    visits_json: Path, criteria: str = "both", settings: ResponseSettings | None = None
) -> dict[str, Any]:
    """Run the whole pipeline (components, registration, matching, measurement, response) on a VISITS.json.

    Raises:
        InputError, RanoError: On any bad input, with a one-line message.
    """
    settings = settings or ResponseSettings()
    if criteria not in ("rano-bm", "volumetric", "both"):
        raise InputError(f"--criteria must be rano-bm, volumetric or both, got {criteria!r}")
    subject_id, visits_in = _read_visits_file(visits_json)
    base_dir = Path(visits_json).resolve().parent
    loaded: list[_LoadedVisit] = []
    for number, entry in enumerate(visits_in):
        loaded.append(_load_visit(entry, number, loaded, base_dir))

    observed = observe_visits([row.mask for row in loaded], [row.image for row in loaded], settings)
    visit_inputs = [
        VisitInput(
            visit=row.label,
            date=row.date,
            observations=obs.observations,
            steroids=row.steroids,
            clinical_status=row.clinical_status,
            imaging_available=row.mask is not None,
        )
        for row, obs in zip(loaded, observed, strict=True)
    ]
    measured = {row.label: obs.measurements for row, obs in zip(loaded, observed, strict=True)}
    diameter = assess(visit_inputs, settings=settings, criteria=Criteria.RANO_BM)
    volumetric = assess(visit_inputs, settings=settings, criteria=Criteria.VOLUMETRIC)
    primary = volumetric if criteria == "volumetric" else diameter
    return _report(subject_id, criteria, settings, visit_inputs, primary, diameter, volumetric, measured)


def _report(
    subject_id: str,
    criteria: str,
    settings: ResponseSettings,
    visit_inputs: Sequence[VisitInput],
    primary: Assessment,
    diameter: Assessment,
    volumetric: Assessment,
    measured: dict[str, dict[str, LesionMeasurement]],
) -> dict[str, Any]:
    with_volumetric = criteria in ("volumetric", "both")
    visits_out = []
    for p, d, vol in zip(primary.visits, diameter.visits, volumetric.visits, strict=True):
        row: dict[str, Any] = {
            "visit": p.visit,
            "date": p.date.isoformat(),
            "sum_ld_mm": _r(p.sum_ld_mm),
            "sum_volume_mm3": _r(p.sum_volume_mm3),
            "nadir_sum_ld_mm": _r(d.nadir_sum),
            "pct_change_from_baseline": _r(p.pct_change_from_baseline),
            "pct_change_from_nadir": _r(p.pct_change_from_nadir),
            "target_response": p.target_response,
            "non_target_response": p.non_target_response,
            "new_lesions": p.new_lesions,
            "new_lesion_ids": list(p.new_lesion_ids),
            "overall_response": p.overall_response,
            "confirmed": p.confirmed,
            "volumetric_response": vol.overall_response if with_volumetric else None,
            "reasons": list(p.reasons),
        }
        if criteria == "volumetric":
            row["nadir_sum_volume_mm3"] = _r(p.nadir_sum)
        if criteria == "both":
            row["volumetric"] = {
                "target_response": vol.target_response,
                "overall_response": vol.overall_response,
                "confirmed": vol.confirmed,
                "nadir_sum_volume_mm3": _r(vol.nadir_sum),
                "pct_change_from_baseline": _r(vol.pct_change_from_baseline),
                "pct_change_from_nadir": _r(vol.pct_change_from_nadir),
                "reasons": list(vol.reasons),
            }
        visits_out.append(row)
    lesions = []
    for lesion_id, role in primary.roles.items():
        per_visit: dict[str, Any] = {}
        for v in visit_inputs:
            obs = next((o for o in v.observations if o.lesion_id == lesion_id), None)
            if obs is None:
                continue
            m = measured[v.visit].get(lesion_id)
            if not obs.present or m is None:
                per_visit[v.visit] = {"present": False, "merged_into": obs.merged_into}
                continue
            per_visit[v.visit] = {
                "present": True,
                "longest_diameter_mm": _r(obs.longest_diameter_mm, 2),
                "perpendicular_diameter_mm": _r(obs.perpendicular_diameter_mm, 2),
                "volume_mm3": _r(obs.volume_mm3, 1),
                "max_3d_diameter_mm": _r(m.max_3d_diameter_mm, 2),
                "slices": obs.slice_count,
                "fragments": obs.fragment_count,
                "measurable": m.measurable,
                "ld_slice_index": m.ld_slice_index,
                "caliper_mm": [[round(c, 2) for c in p] for p in m.ld_endpoints_mm]
                if m.ld_endpoints_mm
                else None,
                "perpendicular_caliper_mm": (
                    [[round(c, 2) for c in p] for p in m.perpendicular_endpoints_mm]
                    if m.perpendicular_endpoints_mm
                    else None
                ),
            }
        lesions.append(
            {
                "lesion_id": lesion_id,
                "role": role,
                "first_seen": primary.first_seen.get(lesion_id),
                "measurements": per_visit,
            }
        )
    out: dict[str, Any] = {
        "subject_id": subject_id,
        "engine_version": ENGINE_VERSION,
        "criteria": criteria,
        "settings": settings.to_dict(),
        "visits": visits_out,
        "best_overall_response": primary.best_overall_response,
        "progression_date": primary.progression_date.isoformat() if primary.progression_date else None,
        "lesions": lesions,
    }
    if criteria == "both":
        out["volumetric_best_overall_response"] = volumetric.best_overall_response
        out["volumetric_progression_date"] = (
            volumetric.progression_date.isoformat() if volumetric.progression_date else None
        )
        out["disagreements"] = list(compare_criteria(diameter, volumetric))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status (0 ok, 2 bad input)."""
    parser = _ArgumentParser(prog="rano-assess", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("visits", type=Path, help="VISITS.json (paths inside are relative to it)")
    parser.add_argument("--criteria", choices=["rano-bm", "volumetric", "both"], default="both")
    parser.add_argument(
        "--settings", type=Path, help="JSON object of response settings (rano-bm.md section 9)"
    )
    try:
        args = parser.parse_args(argv)
        settings = ResponseSettings()
        if args.settings is not None:
            try:
                settings = ResponseSettings.from_dict(json.loads(args.settings.read_text()))
            except FileNotFoundError:
                raise InputError(f"settings file not found: {args.settings}") from None
            except ValueError as exc:
                if isinstance(exc, RanoError):
                    raise
                raise InputError(f"settings file is not valid JSON: {args.settings}") from None
        report = assess_files(args.visits, args.criteria, settings)
    except RanoError as exc:
        print(f"rano-assess: error: {exc}", file=sys.stderr)
        return 2
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
