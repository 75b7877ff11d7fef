"""From per-visit lesion masks (and optional images) to response-engine observations.

The chain is: connected components -> registration to baseline (when both images exist) -> one
visit measured and matched against every earlier visit (:func:`rano.tracking.track_visit`, as the
service's analysis stage does) -> per-lesion observations (split fragments summed, merges recorded). ``rano-assess`` and the property tests use
it; the service layer can use it for a patient whose masks are on disk.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from rano.errors import GeometryError
from rano.match import VisitMatch, observations_from_match, register_rigid
from rano.measure import (
    Geometry,
    LesionMeasurement,
    label_components,
    label_components_array,
)
from rano.response import LesionObservation, VisitInput, select_targets
from rano.settings import ResponseSettings
from rano.tracking import LesionTracker


@dataclass(frozen=True)
class ObservedVisit:
    """One visit after matching and measurement.

    Attributes:
        observations: Per-lesion observations for :func:`rano.response.assess`.
        measurements: Lesion id -> measurement of its largest fragment (for calipers and display).
        match: The matching result (None for a visit without imaging).
    """

    observations: tuple[LesionObservation, ...]
    measurements: dict[str, LesionMeasurement]
    match: VisitMatch | None


def components_of(mask: sitk.Image, settings: ResponseSettings) -> sitk.Image:
    """Binary masks are split into 26-connected components; labelled masks keep their labels (one
    lesion per label value). Either way, 26-connected parts under ``min_lesion_volume_mm3`` are noise
    and dropped (rano-bm.md section 1); a label left with no part is no lesion.

    Raises:
        GeometryError: For non-integer or negative labels.
    """
    array = sitk.GetArrayViewFromImage(mask)
    if not np.issubdtype(array.dtype, np.integer) and not np.array_equal(array, np.round(array)):
        raise GeometryError("the mask must hold whole-number labels")
    if array.size and array.min() < 0:
        raise GeometryError("the mask has negative labels")
    if array.size and array.max() <= 1:
        return label_components(mask, settings.min_lesion_volume_mm3)
    labels = np.asarray(array, dtype=np.uint32).copy()
    spacing = Geometry.of(mask).spacing_mm
    for value, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        own = labels[box] == value
        kept = label_components_array(own, spacing, settings.min_lesion_volume_mm3) > 0
        labels[box][own & ~kept] = 0
    out = sitk.GetImageFromArray(labels)
    out.CopyInformation(mask)
    return out


def observe_visits(
    masks: Sequence[sitk.Image | None],
    images: Sequence[sitk.Image | None] | None = None,
    settings: ResponseSettings = ResponseSettings(),  # noqa: B008 - frozen
    targets: Collection[str] | None = None,
) -> list[ObservedVisit]:
    """Match and measure every visit of one patient; the first visit is the baseline.

    Args:
        masks: Lesion masks (binary or labelled), one per visit, in date order; None for a follow-up
            without imaging (no observations: the response engine makes it NE).
        images: Optional intensity images on the masks' grids; registration runs for a follow-up
            when it and the baseline both have an image, otherwise the identity is used (and the
            masks must share the baseline's physical space).
        settings: Response settings (minimum lesion volume, measurability).
        targets: Target lesion ids, used to give a merged mass to the target it overlaps most; None
            selects them from the baseline as :func:`rano.response.select_targets` does.

    Raises:
        GeometryError, MatchError: On masks that cannot be measured or brought into one space.
    """
    images = list(images) if images is not None else [None] * len(masks)
    if len(images) != len(masks):
        raise GeometryError("give one image (or None) per mask")
    tracker: LesionTracker | None = None
    target_ids = frozenset(targets) if targets is not None else frozenset()
    out: list[ObservedVisit] = []
    for mask, image in zip(masks, images, strict=True):
        if mask is None:
            if tracker is None:
                raise GeometryError("the baseline visit needs a mask")
            out.append(ObservedVisit((), {}, None))
            continue
        components = components_of(mask, settings)
        transform = None
        if tracker is None:
            tracker = LesionTracker(components)
        elif image is not None and images[0] is not None:
            transform = register_rigid(images[0], image)
        known = tracker.lesion_ids
        tracked = tracker.track(components, image, transform, settings=settings, targets=target_ids)
        largest = {
            lesion_id: max(tracked.measurements_of(lesion_id), key=lambda m: m.longest_diameter_mm)
            for lesion_id in tracked.components
        }
        observations = observations_from_match(tracked.measurements, tracked.match, known, tracked.components)
        if not out and targets is None:
            # select_targets reads only the observations; the date is a placeholder.
            baseline = VisitInput("baseline", dt.date(2000, 1, 1), tuple(observations))
            target_ids = frozenset(select_targets(baseline, settings=settings).target_ids)
        out.append(ObservedVisit(observations, largest, tracked.match))
    return out
