"""POST endpoints of the reader-review verbs. Each checks the role's capability (403 otherwise, even
though the buttons are hidden from other roles), calls one action (``trials.actions.review``,
``trials.actions.assessments``) with the
request's correlation id, and redirects back to the visit with a message (post/redirect/get), or, posted
by the visit page's script with ``Accept: application/json``, answers the message as JSON."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np
import SimpleITK as sitk
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.urls import reverse
from django.views.decorators.http import require_POST

from trials import permissions
from trials.actions import assessments, review
from trials.exceptions import ServiceError
from trials.models import Assessment, Lesion, LesionObservation, Timepoint
from trials.storage import stored_name
from trials.views.common import require, timepoint_for
from trials.views.imaging import display_index_to_native, display_mask_to_native, load_volume


class FormError(ServiceError):
    """A posted field is missing or malformed."""


def _lesion(timepoint: Timepoint, request: HttpRequest, field: str = "lesion_id") -> Lesion:
    value = request.POST.get(field, "")
    if not value.isdigit():
        raise FormError(f"Choose a lesion ({field}).")
    lesion = Lesion.objects.filter(pk=int(value), patient_id=timepoint.patient_id).first()
    if lesion is None:
        raise Http404("No such lesion for this patient.")
    return lesion


def _index(request: HttpRequest, field: str, timepoint: Timepoint) -> tuple[int, int, int]:
    """A clicked voxel index ``i,j,k`` of the viewer's (axial, LPS) grid, as an index of the stored volume."""
    parts = [p.strip() for p in request.POST.get(field, "").split(",")]
    if len(parts) != 3 or not all(p.lstrip("-").isdigit() for p in parts):
        raise FormError(f"{field} must be a voxel index i,j,k (click on the image).")
    i, j, k = (int(p) for p in parts)
    return display_index_to_native(_volume_name(timepoint, "click on"), (i, j, k))


def _volume_name(timepoint: Timepoint, what: str) -> str:
    """The stored volume the viewer shows for the visit (its first series with one, as the review
    actions use)."""
    series = timepoint.series.exclude(volume_file="").order_by("id").first()
    if series is None:
        raise FormError(f"This visit has no stored images to {what}.")
    return stored_name(series.volume_file)


#: Bounds of a painted mask as posted: runs of voxels along i, and characters of the field.
MAX_PAINT_RUNS = 200_000
MAX_PAINT_CHARS = 4_000_000


def _painted(request: HttpRequest, timepoint: Timepoint) -> sitk.Image:
    """The mask painted in the viewer, as a binary image on the stored volume's grid.

    Posted as ``size`` ("nx,ny,nz", the viewer grid painted on, which must be this visit's) and ``runs``
    ("i,j,k,n;..."; each run is ``n`` voxels from (i, j, k) along i, indices of the viewer's LPS grid).
    """
    name = _volume_name(timepoint, "paint on")
    grid = load_volume(name).size
    size = request.POST.get("size", "")
    if size != ",".join(str(n) for n in grid):
        raise FormError(
            f"The painted grid ({size or 'none'}) is not this visit's ({','.join(map(str, grid))}): "
            "reload the page and paint again."
        )
    text = request.POST.get("runs", "").strip().strip(";")
    if not text:
        raise FormError("Nothing was painted: choose “paint a missed lesion” and draw on the image.")
    if len(text) > MAX_PAINT_CHARS or text.count(";") >= MAX_PAINT_RUNS:
        raise FormError("The painted region is too large to be one lesion.")
    try:
        runs = np.array([[int(v) for v in run.split(",")] for run in text.split(";")], dtype=np.int64)
    except ValueError:
        raise FormError("runs must be i,j,k,n groups separated by semicolons.") from None
    if runs.ndim != 2 or runs.shape[1] != 4:
        raise FormError("runs must be i,j,k,n groups separated by semicolons.")
    i, j, k, n = runs.T
    nx, ny, nz = grid
    if (runs < 0).any() or (n < 1).any() or (i + n > nx).any() or (j >= ny).any() or (k >= nz).any():
        raise FormError(f"Painted voxels must lie inside the volume (0-{nx - 1}, 0-{ny - 1}, 0-{nz - 1}).")
    mask = np.zeros((nz, ny, nx), dtype=bool)
    for start, row, plane, length in runs.tolist():
        mask[plane, row, start : start + length] = True
    return display_mask_to_native(name, mask)


def _assessment(timepoint: Timepoint, request: HttpRequest) -> Assessment:
    value = request.POST.get("assessment_id", "")
    assessment = (
        Assessment.objects.filter(pk=int(value), timepoint=timepoint).first() if value.isdigit() else None
    )
    if assessment is None:
        raise Http404("No such assessment for this visit.")
    return assessment


#: The drop form's scope choice -> the verb: every visit of the patient, or this visit only.
DROP_SCOPES = ("every_visit", "this_visit")


def _drop(tp: Timepoint, r: HttpRequest, **kw: Any) -> str:
    scope = r.POST.get("scope", "every_visit")
    if scope not in DROP_SCOPES:
        raise FormError("Choose where the lesion is dropped: at every visit or at this visit only.")
    if scope == "this_visit":
        obs = review.drop_lesion_at_visit(_lesion(tp, r), timepoint=tp, **kw)
        return (
            f"{obs.lesion.label} dropped at {tp.visit_label} only (not a lesion at this visit); "
            "the assessments were recomputed."
        )
    lesion = review.drop_lesion(_lesion(tp, r), timepoint=tp, **kw)
    return f"{lesion.label} dropped as a false positive at every visit; the assessments were recomputed."


def _restore(tp: Timepoint, r: HttpRequest, **kw: Any) -> str:
    lesion = review.restore_lesion(_lesion(tp, r), timepoint=tp, **kw)
    return f"{lesion.label} restored; the assessments were recomputed."


def _add(tp: Timepoint, r: HttpRequest, **kw: Any) -> str:
    obs = review.add_lesion_from_seed(tp, seed_index=_index(r, "seed", tp), **kw)
    return f"{obs.lesion.label} added (LD {obs.longest_diameter_mm:.1f} mm); the assessments were recomputed."


def _paint(tp: Timepoint, r: HttpRequest, **kw: Any) -> str:
    obs = review.add_lesion_from_mask(tp, mask=_painted(r, tp), **kw)
    return (
        f"{obs.lesion.label} added from the painted region (LD {obs.longest_diameter_mm:.1f} mm); "
        "the assessments were recomputed."
    )


def _merge(tp: Timepoint, r: HttpRequest, **kw: Any) -> str:
    obs = review.merge_lesions(_lesion(tp, r, "keep_id"), _lesion(tp, r, "absorb_id"), timepoint=tp, **kw)
    return f"Merged into {obs.lesion.label} (LD {obs.longest_diameter_mm:.1f} mm)."


def _split(tp: Timepoint, r: HttpRequest, **kw: Any) -> str:
    kept, new = review.split_lesion(
        _lesion(tp, r),
        timepoint=tp,
        seed_keep=_index(r, "seed_keep", tp),
        seed_new=_index(r, "seed_new", tp),
        **kw,
    )
    return f"{kept.lesion.label} split; the new part is {new.lesion.label}."


def _targets(tp: Timepoint, r: HttpRequest, **kw: Any) -> str:
    ids = [int(v) for v in r.POST.getlist("target_ids") if v.isdigit()]
    lesions = list(Lesion.objects.filter(pk__in=ids, patient_id=tp.patient_id))
    if len(lesions) != len(set(ids)):
        raise Http404("No such lesion for this patient.")
    targets = review.set_target_selection(tp.patient, lesions, **kw)
    return f"Targets: {', '.join(sorted(t.label for t in targets)) or 'none'}."


def _flags(tp: Timepoint, r: HttpRequest, **kw: Any) -> str:
    lesion = _lesion(tp, r)
    flags = {name: r.POST.get(name) == "on" for name in review.LESION_FLAGS}
    review.set_lesion_flags(lesion, timepoint=tp, flags=flags, **kw)
    return f"Flags of {lesion.label} saved."


def _progression(tp: Timepoint, r: HttpRequest, **kw: Any) -> str:
    value = r.POST.get("observation_id", "")
    obs = (
        LesionObservation.objects.select_related("lesion", "timepoint")
        .filter(pk=int(value), timepoint=tp)
        .first()
        if value.isdigit()
        else None
    )
    if obs is None:
        raise Http404("No such observation at this visit.")
    review.set_unequivocal_progression(obs, value=r.POST.get("value") == "on", **kw)
    return f"Unequivocal progression of {obs.lesion.label} saved."


def _context(tp: Timepoint, r: HttpRequest, **kw: Any) -> str:
    review.set_clinical_context(
        tp,
        corticosteroid_status=r.POST.get("corticosteroid_status") or None,
        clinical_status=r.POST.get("clinical_status") or None,
        **kw,
    )
    return "Steroids and clinical status saved."


def _confirm(tp: Timepoint, r: HttpRequest, **kw: Any) -> str:
    assessment = assessments.confirm_assessment(_assessment(tp, r), password=r.POST.get("password", ""), **kw)
    signer = assessment.signed_by.get_username() if assessment.signed_by is not None else "you"
    return f"Assessment confirmed and signed by {signer}."


def _override(tp: Timepoint, r: HttpRequest, **kw: Any) -> str:
    assessment = assessments.override_assessment(
        _assessment(tp, r),
        overall_response=r.POST.get("overall_response", ""),
        password=r.POST.get("password", ""),
        **kw,
    )
    return f"Response overridden to {assessment.overall_response} and signed."


#: action -> (handler, capabilities of which the user needs one)
ACTIONS: dict[str, tuple[Callable[..., str], tuple[str, ...]]] = {
    "drop": (_drop, (permissions.EDIT_LESIONS,)),
    "restore": (_restore, (permissions.EDIT_LESIONS,)),
    "add": (_add, (permissions.EDIT_LESIONS,)),
    "paint": (_paint, (permissions.EDIT_LESIONS,)),
    "merge": (_merge, (permissions.EDIT_LESIONS,)),
    "split": (_split, (permissions.EDIT_LESIONS,)),
    "targets": (_targets, (permissions.EDIT_LESIONS,)),
    "flags": (_flags, (permissions.EDIT_LESIONS,)),
    "progression": (_progression, (permissions.EDIT_LESIONS,)),
    "context": (_context, (permissions.EDIT_LESIONS, permissions.MANAGE_PATIENTS)),
    "confirm": (_confirm, (permissions.REVIEW_ASSESSMENTS,)),
    "override": (_override, (permissions.REVIEW_ASSESSMENTS,)),
}


@require_POST
@login_required
def review_action(request: HttpRequest, timepoint_id: int, action: str) -> HttpResponse:
    """Run one review verb on a visit and redirect back to the visit page."""
    timepoint = timepoint_for(request.user, timepoint_id)
    if action not in ACTIONS:
        raise Http404("Unknown review action.")
    handler, capabilities = ACTIONS[action]
    trial = timepoint.patient.trial
    if not any(permissions.has_capability(request.user, trial, c) for c in capabilities):
        require(request.user, trial, capabilities[0])  # raises PermissionDenied -> 403
    try:
        text = handler(
            timepoint,
            request,
            actor=request.user,
            reason=request.POST.get("reason", "").strip(),
            correlation_id=getattr(request, "correlation_id", ""),
        )
    except ServiceError as exc:
        if _wants_json(request):
            return JsonResponse({"ok": False, "message": exc.message}, status=400)
        messages.error(request, exc.message)
        return HttpResponseRedirect(_back(request, timepoint))
    if _wants_json(request):
        return JsonResponse({"ok": True, "message": text})
    messages.success(request, text)
    return HttpResponseRedirect(_back(request, timepoint))


def _wants_json(request: HttpRequest) -> bool:
    """The viewer posts the forms with fetch() and refreshes the page's parts itself (no reload)."""
    return request.headers.get("Accept", "").split(",")[0].strip() == "application/json"


#: The viewer's state as viewer.js writes it into each review form: crosshair voxel, slice layout, the
#: main and comparison windows, the comparison visit (for a form posted without the script).
_NUMBER = r"-?[0-9]{1,9}(?:\.[0-9]{1,4})?"
_VIEW = re.compile(
    rf"viewer-v[0-9]{{1,5}},[0-9]{{1,5}},[0-9]{{1,5}}(?:-t[0-9])?(?:-m{_NUMBER},{_NUMBER})?"
    rf"(?:-c[0-9]{{1,10}}(?:-p{_NUMBER},{_NUMBER})?)?"
)


def _back(request: HttpRequest, timepoint: Timepoint) -> str:
    """The visit page, at the viewer as the reader left it (else at the review tools)."""
    view = request.POST.get("view", "")
    anchor = view if _VIEW.fullmatch(view) else "review"
    return reverse("dashboard:visit", args=[timepoint.pk]) + "#" + anchor
