"""Visit page: the slice viewer (server-rendered PNG slices with contour and caliper overlays),
side by side with the baseline or previous visit, the lesion table with the review tools, the
assessment with confirm/override, and the visit's audit trail."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import numpy as np
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET

from trials import permissions
from trials.actions.review import LESION_FLAGS
from trials.choices import ClinicalStatus, CorticosteroidStatus, ResponseChoices, RunStatus
from trials.exceptions import MissingImageError
from trials.models import (
    ImagingSeries,
    LesionObservation,
    PacsDelivery,
    SegmentationRun,
    Timepoint,
    TrialPacsSettings,
)
from trials.storage import observation_mask_source, run_file_path, stored_name
from trials.views.common import capability_flags, timepoint_for, url_template
from trials.views.imaging import (
    CachedVolume,
    SliceOutOfRangeError,
    contour_segments,
    encode_png_gray,
    load_volume,
    physical_to_index,
    window_slice,
)
from trials.views.queries import VisitRow, patient_timeline, visit_audit_events

FLAG_LABELS = {
    "is_cystic": "Cystic",
    "is_dural": "Dural",
    "is_bony": "Bony",
    "is_leptomeningeal": "Leptomeningeal",
    "previously_irradiated": "Previously irradiated",
    "progressing_since_treatment": "Progressing since treatment",
    "too_small_to_measure": "Too small to measure",
}


def _series_for(user: Any, series_id: int) -> ImagingSeries:
    series = (
        ImagingSeries.objects.select_related("timepoint__patient")
        .filter(pk=series_id, timepoint__patient__trial__in=permissions.visible_trial_ids(user))
        .first()
    )
    if series is None or not series.volume_file:
        raise Http404("No such series, or no stored volume.")
    return series


def lesion_slice(volume: CachedVolume, obs: LesionObservation) -> int | None:
    """Axial slice index (z) on which the lesion's LD caliper lies, or of its centroid."""
    if obs.caliper_points_mm:
        a, b = (physical_to_index(volume, p) for p in obs.caliper_points_mm)
        return int(round((a[2] + b[2]) / 2))
    if obs.centroid_x_mm is not None and obs.centroid_y_mm is not None and obs.centroid_z_mm is not None:
        return int(
            round(physical_to_index(volume, [obs.centroid_x_mm, obs.centroid_y_mm, obs.centroid_z_mm])[2])
        )
    return None


def viewer_panel(row: VisitRow | None) -> dict[str, Any] | None:
    """JSON-ready description of one visit's first stored series for the viewer script."""
    if row is None:
        return None
    series = next((s for s in row.series if s.volume_file), None)
    if series is None:
        return None
    try:
        volume = load_volume(stored_name(series.volume_file))
    except (MissingImageError, RuntimeError, OSError):
        return None
    lesions = []
    for lesion_row in row.lesions:
        obs = lesion_row.observation
        if obs is None or not obs.present:
            continue
        k = lesion_slice(volume, obs)
        if k is None:
            continue
        lesions.append(
            {
                "label": lesion_row.lesion.label,
                "lesion_id": lesion_row.lesion.pk,
                "k": max(0, min(volume.size[2] - 1, k)),
                "category": lesion_row.category,
                "ld_mm": obs.longest_diameter_mm,
            }
        )
    return {
        "visit": row.timepoint.visit_label,
        "date": row.timepoint.scan_date.isoformat(),
        "series_id": series.pk,
        "slice_url": url_template("dashboard:slice", series.pk),
        "overlay_url": url_template("dashboard:overlay", series.pk),
        "size": list(volume.size),
        "spacing": list(volume.spacing_mm),
        "index_to_physical": volume.index_to_physical(),
        "physical_to_index": volume.physical_to_index(),
        "window": round(volume.default_window, 2),
        "level": round(volume.default_level, 2),
        "lesions": lesions,
    }


def _short(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."


def audit_change_lines(event: Any, limit: int = 8) -> list[str]:
    """Readable change lines of an audit event: ``field: before -> after`` (or the created values)."""
    before, after = event.before or {}, event.after or {}
    if before and after:
        keys = [k for k in after if before.get(k) != after.get(k)] or list(after)
        # Identifying keys (which lesion) stay visible even though they did not change.
        lines = [f"{k}: {after[k]}" for k in _IDENTIFYING if k in after and k not in keys]
        lines += [f"{k}: {_short(before.get(k))} \u2192 {_short(after.get(k))}" for k in keys]
    elif after:
        keys = [k for k in after if k not in _NOISY_FIELDS and after[k] not in (None, "", [], {})]
        lines = [f"{k}: {_short(after[k])}" for k in keys]
    else:
        lines = [f"{k}: {_short(v)}" for k, v in before.items() if k not in _NOISY_FIELDS][:limit]
    return lines[:limit] + ([f"... {len(lines) - limit} more"] if len(lines) > limit else [])


_IDENTIFYING = ("lesion",)
_NOISY_FIELDS = {"id", "created_at", "updated_at", "settings", "engine_version", "is_current", "comment"}


def pacs_viewer_url(timepoint: Timepoint) -> str:
    """The trial's PACS viewer URL for the visit's study ('' without a template or a DICOM study).

    The template (``TrialPacsSettings.viewer_url_template``) names ``{study_instance_uid}``, e.g. OHIF's
    ``http://pacs/ohif/viewer?StudyInstanceUIDs={study_instance_uid}``.
    """
    template = (
        TrialPacsSettings.objects.filter(trial_id=timepoint.patient.trial_id)
        .values_list("viewer_url_template", flat=True)
        .first()
    )
    if not template:
        return ""
    study = (
        ImagingSeries.objects.filter(timepoint=timepoint)
        .exclude(study_instance_uid="")
        .order_by("-created_at")
        .values_list("study_instance_uid", flat=True)
        .first()
    )
    return template.replace("{study_instance_uid}", quote(study, safe="")) if study else ""


@login_required
def visit_detail(request: HttpRequest, timepoint_id: int) -> HttpResponse:
    """The visit page (viewer, lesions, review, assessment, audit trail)."""
    timepoint = timepoint_for(request.user, timepoint_id)
    patient = timepoint.patient
    rows = patient_timeline(patient)
    index = next(i for i, r in enumerate(rows) if r.timepoint.pk == timepoint.pk)
    row = rows[index]
    baseline = next((r for r in rows if r.timepoint.is_baseline), None)
    previous = rows[index - 1] if index > 0 else None
    compare: dict[str, Any] = {}
    if baseline is not None and baseline is not row:
        compare["baseline"] = viewer_panel(baseline)
    if previous is not None and previous is not baseline:
        compare["previous"] = viewer_panel(previous)
    viewer = {"main": viewer_panel(row), "compare": {k: v for k, v in compare.items() if v}}
    flags = capability_flags(request.user, patient.trial)
    present_rows = [r for r in row.lesions if r.observation is not None and r.observation.present]
    for lesion_row in row.lesions:
        lesion_row.flag_states = [  # type: ignore[attr-defined]
            (name, FLAG_LABELS[name], getattr(lesion_row.lesion, name)) for name in LESION_FLAGS
        ]
    runs = []
    for run in (
        SegmentationRun.objects.filter(series__timepoint=timepoint, status=RunStatus.SUCCEEDED)
        .select_related("model_version", "series")
        .order_by("-finished_at", "-pk")
    ):
        files = [
            (kind, reverse("api:segmentationrun-file", kwargs={"pk": run.pk, "kind": kind}))
            for kind in ("seg", "rtstruct", "lesions")
            if run_file_path(run, kind) is not None
        ]
        runs.append({"run": run, "files": files})
    deliveries = list(PacsDelivery.objects.filter(timepoint=timepoint).select_related("destination"))
    return render(
        request,
        "dashboard/visit.html",
        {
            "timepoint": timepoint,
            "segmentation_runs": runs,
            "deliveries": deliveries,
            "pacs_viewer_url": pacs_viewer_url(timepoint),
            "patient": patient,
            "trial": patient.trial,
            "row": row,
            "rows": rows,
            "present_rows": present_rows,
            "viewer_data": viewer,
            "has_viewer": viewer["main"] is not None,
            "audit_rows": [(event, audit_change_lines(event)) for event in visit_audit_events(timepoint)],
            "responses": ResponseChoices.choices,
            "steroid_choices": CorticosteroidStatus.choices,
            "clinical_choices": ClinicalStatus.choices,
            "can_edit_context": flags["can_edit_lesions"] or flags["can_manage_patients"],
            **flags,
        },
    )


def _float_param(request: HttpRequest, name: str) -> float | None:
    value = request.GET.get(name, "")
    if value == "":
        return None
    try:
        result = float(value)
    except ValueError as exc:
        raise ValueError(f"{name} must be a number, got {value!r}.") from exc
    if not np.isfinite(result):
        raise ValueError(f"{name} must be finite.")
    return result


@require_GET
@login_required
def slice_png(request: HttpRequest, series_id: int, k: int) -> HttpResponse:
    """Axial slice ``k`` of a series as a greyscale PNG, with ``?window=&level=`` (image units)."""
    series = _series_for(request.user, series_id)
    try:
        window = _float_param(request, "window")
        level = _float_param(request, "level")
        volume = load_volume(stored_name(series.volume_file))
        pixels = window_slice(volume, k, window, level)
    except (ValueError, SliceOutOfRangeError) as exc:
        return HttpResponseBadRequest(str(exc), content_type="text/plain")
    response = HttpResponse(encode_png_gray(pixels), content_type="image/png")
    # Slices of a stored series never change; let the browser keep them while scrolling back and forth.
    response["Cache-Control"] = "private, max-age=3600"
    return response


@require_GET
@login_required
def slice_overlay(request: HttpRequest, series_id: int, k: int) -> JsonResponse:
    """Contours (pixel-edge segments), labels and LD/perpendicular calipers of the lesions on slice ``k``.

    Coordinates are in pixel-corner units of the slice image: voxel (i, j) covers [i, i+1] x [j, j+1].
    """
    series = _series_for(request.user, series_id)
    volume = load_volume(stored_name(series.volume_file))
    if not 0 <= k < volume.size[2]:
        return JsonResponse({"error": f"Slice {k} is outside 0-{volume.size[2] - 1}."}, status=400)
    observations = (
        LesionObservation.objects.filter(timepoint_id=series.timepoint_id, present=True)
        .select_related("lesion", "segmentation_run")
        .order_by("lesion_id")
    )
    lesions = []
    for obs in observations:
        entry: dict[str, Any] = {
            "label": obs.lesion.label,
            "lesion_id": obs.lesion_id,
            "role": obs.lesion.role,
            "dropped": obs.lesion.is_false_positive,
            "segments": [],
            "caliper": None,
            "perpendicular": None,
        }
        source = observation_mask_source(obs)
        if source is not None:
            name, value = source
            try:
                labels = load_volume(name, labels=True)
            except (MissingImageError, RuntimeError, OSError):
                labels = None
            if labels is not None and labels.array.shape == volume.array.shape:
                entry["segments"] = contour_segments(labels.array[k] == value)
        for key, points in (
            ("caliper", obs.caliper_points_mm),
            ("perpendicular", obs.perpendicular_points_mm),
        ):
            if not points:
                continue
            a, b = (physical_to_index(volume, p) for p in points)
            if int(round((a[2] + b[2]) / 2)) == k:
                # +0.5: a voxel centre sits in the middle of its pixel square.
                entry[key] = [[a[0] + 0.5, a[1] + 0.5], [b[0] + 0.5, b[1] + 0.5]]
        if entry["segments"] or entry["caliper"]:
            lesions.append(entry)
    return JsonResponse({"k": k, "lesions": lesions})
