"""The comparison panel registered to the visit under review: an earlier visit's volume, lesion label map
and calipers resampled onto the current visit's grid, so the same anatomy lies under the same crosshair.

The analysis stage stores, on each series, the rigid transform from the patient's common space (the grid
of the first analysed series) to that series (``ImagingSeries.registration``, fixed -> moving points, as
SimpleITK resamples). Two series of one patient registered to the same common space give the transform
from the current series' points to the earlier series' points::

    current -> common space (T_current inverse) -> earlier (T_earlier)

with which SimpleITK resamples the earlier volume (linear) and its lesion label map (nearest neighbour)
onto the current grid. Points measured on the earlier visit (its calipers, its lesions' positions) go the
other way. Without a stored transform (series analysed before registrations were kept, or a reader's
upload without analysis) the panel falls back to scanner coordinates and says so.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.views.decorators.http import require_GET

from trials.exceptions import MissingImageError
from trials.storage import stored_name
from trials.views.imaging import (
    CachedVolume,
    PairTransform,
    load_volume,
    nifti_bytes,
    pair_transform,
    resample_onto,
)
from trials.views.viewer import (
    _nifti_response,
    _series_for,
    caliper_labels,
    lesion_label_array,
)


def _pair(
    request: HttpRequest, series_id: int, onto_id: int
) -> tuple[Any, CachedVolume, CachedVolume, PairTransform]:
    """The earlier series (permission-checked), both volumes and the transform; 404 without one."""
    earlier = _series_for(request.user, series_id)
    current = _series_for(request.user, onto_id)
    transform = pair_transform(current, earlier)
    if transform is None:
        raise Http404("These two series are not registered to each other.")
    try:
        return (
            earlier,
            load_volume(stored_name(earlier.volume_file)),
            load_volume(stored_name(current.volume_file)),
            transform,
        )
    except (MissingImageError, RuntimeError, OSError) as exc:
        raise Http404("The stored volume cannot be read.") from exc


@require_GET
@login_required
def registered_volume(request: HttpRequest, series_id: int, onto_id: int) -> HttpResponse:
    """The series resampled (linear) onto the grid of series ``onto_id`` of the same patient."""
    earlier, volume, onto, transform = _pair(request, series_id, onto_id)
    array = resample_onto(volume.array, volume, onto, transform, labels=False)
    return _nifti_response(nifti_bytes(array, onto, compress=False), f"series-{earlier.pk}-on-{onto_id}.nii")


@require_GET
@login_required
def registered_lesions(request: HttpRequest, series_id: int, onto_id: int) -> HttpResponse:
    """The series' lesion label map (values as ``series_lesions``) resampled, nearest neighbour."""
    earlier, volume, onto, transform = _pair(request, series_id, onto_id)
    labels = resample_onto(lesion_label_array(earlier, volume), volume, onto, transform, labels=True)
    return _nifti_response(
        nifti_bytes(labels.astype(np.uint16), onto, compress=True),
        f"series-{earlier.pk}-on-{onto_id}-lesions.nii.gz",
    )


@require_GET
@login_required
def registered_calipers(request: HttpRequest, series_id: int, onto_id: int) -> HttpResponse:
    """The series' stored calipers with their end points carried onto the grid of series ``onto_id``
    (drawn there as lines: a resampled one-voxel line would break up)."""
    earlier, _volume, onto, transform = _pair(request, series_id, onto_id)
    labels = caliper_labels(earlier.timepoint_id, onto, transform.to_current)
    return _nifti_response(
        nifti_bytes(labels, onto, compress=True), f"series-{earlier.pk}-on-{onto_id}-calipers.nii.gz"
    )
