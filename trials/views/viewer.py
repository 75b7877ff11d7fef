"""Visit page: the image viewer (Niivue in the browser, fed the series, its lesion label map and its
calipers as NIfTI by the views below), side by side with any earlier visit, the lesion table with the review tools, the
assessment with confirm/override, and the visit's audit trail."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import numpy as np
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET
from numpy.typing import NDArray

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
from trials.views.common import capability_flags, timepoint_for
from trials.views.imaging import (
    CachedVolume,
    load_volume,
    nifti_bytes,
    pair_transform,
    physical_to_index,
    segment_voxels,
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


def viewer_observations(timepoint_id: int) -> list[LesionObservation]:
    """The present observations of a visit in label-map order: value ``n + 1`` is the ``n``-th one."""
    return list(
        LesionObservation.objects.filter(timepoint_id=timepoint_id, present=True)
        .select_related("lesion", "segmentation_run")
        .order_by("lesion_id")
    )


def _lesion_point(
    volume: CachedVolume, obs: LesionObservation, carry: Callable[[list[float]], list[float]] | None = None
) -> list[float] | None:
    """Voxel index (viewer grid) of the middle of the lesion's LD caliper, or of its centroid.

    Args:
        carry: maps a point of the observation's visit into the space of ``volume`` (a registered
            comparison); None when the observation is on ``volume`` itself.
    """
    move = carry or (lambda p: p)
    if obs.caliper_points_mm:
        a, b = (physical_to_index(volume, move(p)) for p in obs.caliper_points_mm)
        return [round((u + v) / 2, 2) for u, v in zip(a, b, strict=True)]
    if obs.centroid_x_mm is not None and obs.centroid_y_mm is not None and obs.centroid_z_mm is not None:
        point = physical_to_index(volume, move([obs.centroid_x_mm, obs.centroid_y_mm, obs.centroid_z_mm]))
        return [round(v, 2) for v in point]
    return None


def _first_series(row: VisitRow) -> ImagingSeries | None:
    return next((s for s in row.series if s.volume_file), None)


def viewer_panel(row: VisitRow | None, onto: VisitRow | None = None) -> dict[str, Any] | None:
    """JSON-ready description of one visit's first stored series for the viewer script (viewer.js).

    Args:
        onto: the visit under review, for a comparison panel: when both visits' series are registered
            to the patient's common space, the panel is served resampled onto its grid (``registered``
            true, ``trials.views.registered``); otherwise on its own grid, related by scanner
            coordinates only (``registered`` false, with a note saying so).
    """
    if row is None:
        return None
    series = _first_series(row)
    if series is None:
        return None
    try:
        own = load_volume(stored_name(series.volume_file))
    except (MissingImageError, RuntimeError, OSError):
        return None
    volume, urls, carry, note = own, _panel_urls(series), None, ""
    current = _first_series(onto) if onto is not None else None
    if onto is not None and current is not None:
        transform = pair_transform(current, series)
        try:
            onto_volume = load_volume(stored_name(current.volume_file)) if transform is not None else None
        except (MissingImageError, RuntimeError, OSError):
            onto_volume = None
        if transform is not None and onto_volume is not None:
            volume, carry = onto_volume, transform.to_current
            urls = _panel_urls(series, onto=current)
            note = (
                f"Registered to {onto.timepoint.visit_label} (rigid): the same anatomy under the crosshair."
            )
        else:
            note = "Not registered: aligned by scanner coordinates only; the anatomy may not line up."
    categories = {r.lesion.pk: r.category for r in row.lesions}
    lesions = []
    for value, obs in enumerate(viewer_observations(row.timepoint.pk), start=1):
        point = _lesion_point(volume, obs, carry)
        if point is not None:
            point = [max(0.0, min(float(n - 1), v)) for v, n in zip(point, volume.size, strict=True)]
        lesions.append(
            {
                "label": obs.lesion.label,
                "lesion_id": obs.lesion_id,
                "value": value,
                "vox": point,
                "k": None if point is None else int(round(point[2])),
                "category": categories.get(obs.lesion_id, ""),
                "role": obs.lesion.role,
                "dropped": obs.lesion.is_false_positive,
                "ld_mm": obs.longest_diameter_mm,
                # The pipeline stage that added it after the network ("" : the network, or a reader).
                "stage": (obs.finding or {}).get("stage", ""),
            }
        )
    # Each panel has its own window: the 0.5-99.5 percentiles of its own signal (load_volume), so a
    # prior scanned with another gain is not drawn white or black with the current visit's window.
    low = own.default_level - own.default_window / 2
    high = own.default_level + own.default_window / 2
    return {
        "timepoint_id": row.timepoint.pk,
        "visit": row.timepoint.visit_label,
        "date": row.timepoint.scan_date.isoformat(),
        "series_id": series.pk,
        **urls,
        "registered": carry is not None,
        "registration_note": note,
        "size": list(volume.size),
        "spacing": list(volume.spacing_mm),
        # Voxel index <-> LPS mm of the served grid: clicks and lesion jumps go through physical space,
        # independent of how Niivue orders the voxels internally (RAS).
        "index_to_physical": volume.index_to_physical(),
        "physical_to_index": volume.physical_to_index(),
        "robust": [round(low, 2), round(high, 2)],
        "full": [round(float(own.array.min()), 2), round(float(own.array.max()), 2)],
        "lesions": lesions,
    }


def _panel_urls(series: ImagingSeries, *, onto: ImagingSeries | None = None) -> dict[str, str]:
    """The panel's volume, lesion map and calipers: on the series' own grid, or resampled onto ``onto``."""
    if onto is None:
        return {
            "volume_url": reverse("dashboard:series-volume", args=[series.pk]),
            "lesions_url": reverse("dashboard:series-lesions", args=[series.pk]),
            "calipers_url": reverse("dashboard:series-calipers", args=[series.pk]),
        }
    args = [series.pk, onto.pk]
    return {
        "volume_url": reverse("dashboard:series-volume-on", args=args),
        "lesions_url": reverse("dashboard:series-lesions-on", args=args),
        "calipers_url": reverse("dashboard:series-calipers-on", args=args),
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
    # Any earlier visit can be compared (newest first); the previous one is shown first.
    compare = [panel for panel in (viewer_panel(r, onto=row) for r in reversed(rows[:index])) if panel]
    viewer = {"main": viewer_panel(row), "compare": compare}
    flags = capability_flags(request.user, patient.trial)
    present_rows = [r for r in row.lesions if r.observation is not None and r.observation.present]
    for lesion_row in row.lesions:
        lesion_row.flag_states = [  # type: ignore[attr-defined]
            (name, FLAG_LABELS[name], getattr(lesion_row.lesion, name)) for name in LESION_FLAGS
        ]
    runs = []
    for run in (
        SegmentationRun.objects.filter(
            series__timepoint=timepoint, status=RunStatus.SUCCEEDED, is_shadow=False
        )
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


def _served_volume(request: HttpRequest, series_id: int) -> tuple[ImagingSeries, CachedVolume]:
    series = _series_for(request.user, series_id)
    try:
        return series, load_volume(stored_name(series.volume_file))
    except (MissingImageError, RuntimeError, OSError) as exc:
        raise Http404("The stored volume cannot be read.") from exc


def _nifti_response(data: bytes, name: str) -> HttpResponse:
    # application/octet-stream: NIfTI (gzipped for label maps), read by Niivue itself (the browser must not
    # gunzip it). private: clinical images stay out of shared caches.
    response = HttpResponse(data, content_type="application/octet-stream")
    response["Content-Disposition"] = f'inline; filename="{name}"'
    response["Cache-Control"] = "private, no-store"
    return response


@require_GET
@login_required
def series_volume(request: HttpRequest, series_id: int) -> HttpResponse:
    """The de-identified series as NIfTI, reoriented to LPS like every grid of the viewer."""
    series, volume = _served_volume(request, series_id)
    return _nifti_response(nifti_bytes(volume.array, volume, compress=False), f"series-{series.pk}.nii")


@require_GET
@login_required
def series_lesions(request: HttpRequest, series_id: int) -> HttpResponse:
    """The visit's lesion label map on the series grid: value n + 1 is the n-th present observation
    (``viewer_observations``), whatever mask (AI run or reader edit) it comes from."""
    series, volume = _served_volume(request, series_id)
    labels = lesion_label_array(series, volume)
    return _nifti_response(nifti_bytes(labels, volume, compress=True), f"series-{series.pk}-lesions.nii.gz")


def lesion_label_array(series: ImagingSeries, volume: CachedVolume) -> NDArray[np.uint16]:
    """The visit's lesion label map (z, y, x) on the series' served grid: value n + 1 is the n-th present
    observation (``viewer_observations``)."""
    labels = np.zeros(volume.array.shape, dtype=np.uint16)
    for value, obs in enumerate(viewer_observations(series.timepoint_id), start=1):
        source = observation_mask_source(obs)
        if source is None:
            continue
        try:
            mask = load_volume(source[0], labels=True)
        except (MissingImageError, RuntimeError, OSError):
            continue
        if mask.array.shape == volume.array.shape:
            labels[mask.array == source[1]] = value
    return labels


#: Values of the calipers label map: the LD (drawn red) and its perpendicular (drawn orange).
CALIPER_LD, CALIPER_PERPENDICULAR = 1, 2


@require_GET
@login_required
def series_calipers(request: HttpRequest, series_id: int) -> HttpResponse:
    """The stored LD and perpendicular calipers of the visit's lesions rasterised on the series grid
    (values ``CALIPER_LD`` and ``CALIPER_PERPENDICULAR``): what was measured is what is drawn."""
    series, volume = _served_volume(request, series_id)
    labels = caliper_labels(series.timepoint_id, volume)
    return _nifti_response(nifti_bytes(labels, volume, compress=True), f"series-{series.pk}-calipers.nii.gz")


def caliper_labels(
    timepoint_id: int, grid: CachedVolume, to_grid: Callable[[list[float]], list[float]] | None = None
) -> NDArray[np.uint8]:
    """The visit's stored LD and perpendicular calipers drawn as lines (values ``CALIPER_LD`` and
    ``CALIPER_PERPENDICULAR``) on ``grid``; ``to_grid`` carries a measured point into the grid's space
    (another visit's grid, registered) when it is not the visit's own."""
    labels = np.zeros(grid.array.shape, dtype=np.uint8)
    shape = np.array(grid.array.shape)
    for obs in viewer_observations(timepoint_id):
        for value, points in (
            (CALIPER_PERPENDICULAR, obs.perpendicular_points_mm),
            (CALIPER_LD, obs.caliper_points_mm),  # last: the LD wins where the two cross
        ):
            if not points:
                continue
            ends = [physical_to_index(grid, to_grid(p) if to_grid else p) for p in points]
            z, y, x = segment_voxels(*ends)
            inside = (z >= 0) & (y >= 0) & (x >= 0) & (z < shape[0]) & (y < shape[1]) & (x < shape[2])
            labels[z[inside], y[inside], x[inside]] = value
    return labels
