"""One visit of a patient in the patient's common space: measure, register, match, lesion maps.

:func:`track_visit` is the image half of adding a visit to a patient, shared by ``rano-assess``
(:mod:`rano.pipeline`, visits on disk) and the service's analysis stage (``trials.pipeline.analysis``,
visits in a database): it measures the visit's components on its own grid (:mod:`rano.measure`),
registers the visit to the common space (:func:`rano.match.rigid_registration`), matches its components
against the earlier lesions' footprints there (:func:`rano.match.match_components`) and numbers its
voxels by lesion, on the common grid (what later visits are matched against) and on its own grid (what
the visit's RTSTRUCT and SEG show). What the earlier lesions are, and where the result is stored, is the
caller's.

A component that falls outside the common grid (a lesion outside the baseline's field of view) is still
a lesion: it gets a new label, and no footprint (a later visit cannot be matched to it there).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import SimpleITK as sitk

from rano.errors import MatchError
from rano.match import (
    DEFAULT_MAX_DISTANCE_MM,
    Footprint,
    RigidRegistration,
    VisitMatch,
    check_same_space,
    footprints,
    lesion_number,
    match_components,
    rigid_registration,
    to_reference,
    union_footprint,
)
from rano.measure import Geometry, LesionMeasurement, measure_lesions
from rano.settings import ResponseSettings


@dataclass(frozen=True)
class TrackedVisit:
    """One visit measured and matched in the patient's common space.

    Attributes:
        measurements: One per component of the visit (its label order), measured on its own grid.
        match: The matching of its components against the earlier lesions (:mod:`rano.match`).
        components: Lesion id -> the component labels that make it at this visit (several for a split
            lesion), components outside the common grid included.
        new_ids: Lesion ids first given at this visit, in the order given.
        next_number: The next free lesion number after this visit.
        footprints: Lesion id -> its footprint in the common grid at this visit (fragments united), for
            matching the next visit.
        reference_map, lesion_map: Lesion numbers (3 for L3) on the common grid and on the visit's own
            grid, 0 elsewhere (computed on first use).
        transform: Common-space-to-visit transform (None: identity).
        registration: The registration that gave ``transform`` (with its metric), when this call
            registered the visit (None when it was the common space or the transform was given).
        timings_s: Seconds of ``measure_s``, ``register_s`` and ``match_s``.
    """

    measurements: tuple[LesionMeasurement, ...]
    match: VisitMatch
    components: Mapping[str, tuple[int, ...]]
    new_ids: tuple[str, ...]
    next_number: int
    footprints: Mapping[str, Footprint]
    transform: sitk.Transform | None = None
    registration: RigidRegistration | None = None
    timings_s: Mapping[str, float] = field(default_factory=dict)
    # What the lesion maps are made of, numbered only when asked for (rano-assess never needs them).
    _labels: sitk.Image | None = field(default=None, repr=False, compare=False)
    _grid: sitk.Image | None = field(default=None, repr=False, compare=False)
    _reference_labels: np.ndarray | None = field(default=None, repr=False, compare=False)

    @cached_property
    def _lut(self) -> np.ndarray:
        """Component label -> lesion number."""
        assert self._labels is not None and self._reference_labels is not None
        largest = max(
            int(sitk.GetArrayViewFromImage(self._labels).max(initial=0)),
            int(self._reference_labels.max(initial=0)),
        )
        lut = np.zeros(largest + 1, dtype=np.uint32)
        for lesion_id, labs in self.components.items():
            lut[list(labs)] = lesion_number(lesion_id)
        return lut

    @cached_property
    def reference_map(self) -> sitk.Image:
        """Lesion numbers (3 for L3) on the common grid, 0 elsewhere."""
        assert self._reference_labels is not None and self._grid is not None
        image = sitk.GetImageFromArray(self._lut[self._reference_labels])
        image.CopyInformation(self._grid)
        return image

    @cached_property
    def lesion_map(self) -> sitk.Image:
        """Lesion numbers on the visit's own grid."""
        assert self._labels is not None
        image = sitk.GetImageFromArray(self._lut[sitk.GetArrayViewFromImage(self._labels)])
        image.CopyInformation(self._labels)
        return image

    def measurements_of(self, lesion_id: str) -> list[LesionMeasurement]:
        """The measurements of a lesion's components at this visit (several for a split lesion)."""
        by_label = {m.label: m for m in self.measurements}
        return [by_label[label] for label in self.components[lesion_id]]


def track_visit(
    labels: sitk.Image,
    image: sitk.Image | None = None,
    *,
    settings: ResponseSettings,
    reference: sitk.Image | None = None,
    register: bool = False,
    transform: sitk.Transform | None = None,
    prior: Mapping[str, Footprint] | None = None,
    next_number: int = 1,
    absent_last: frozenset[str] = frozenset(),
    targets: frozenset[str] = frozenset(),
    max_distance_mm: float = DEFAULT_MAX_DISTANCE_MM,
) -> TrackedVisit:
    """Measure and match one visit's lesion components in the patient's common space.

    Args:
        labels: Component labels of the visit on its own grid (1..n, as :func:`rano.measure.
            label_components` gives them); each label is one component.
        image: The visit's intensity image on the same grid (intensity statistics, registration).
        settings: Response settings (measurability).
        reference: Grid of the common space (the first visit's image or mask); None: this visit's own
            grid is the common space (the first visit).
        register: Register ``image`` rigidly to ``reference`` (both must be intensity images); without
            it the visit must lie in the reference's physical space (or ``transform`` be given).
        transform: A common-space-to-visit transform computed before (instead of ``register``).
        prior: Lesion id -> footprint in the common grid of every lesion known before this visit.
        next_number: Number of the next new lesion.
        absent_last: Lesions absent at the previous visit (a match makes them "reappeared").
        targets: Target lesion ids (a merged mass goes to the target it overlaps most).
        max_distance_mm: See :func:`rano.match.match_components`.

    Raises:
        MatchError: The visit is not in the reference's space and no transform was given or computed.
        GeometryError: The components cannot be measured.
    """
    timings: dict[str, float] = {}
    started = time.perf_counter()
    measurements = tuple(measure_lesions(labels, image, settings=settings, relabel=False))
    timings["measure_s"] = time.perf_counter() - started

    started = time.perf_counter()
    grid = labels if reference is None else reference
    registration = None
    if reference is not None and transform is None:
        if register and image is not None:
            registration = rigid_registration(reference, image)
            transform = registration.transform
        else:
            check_same_space(reference, labels)
    timings["register_s"] = time.perf_counter() - started

    started = time.perf_counter()
    geometry = Geometry.of(grid)
    ref_labels = sitk.GetArrayFromImage(to_reference(labels, grid, transform))
    current = footprints(ref_labels, geometry)
    match = match_components(
        current,
        dict(prior or {}),
        next_number=next_number,
        absent_last_visit=absent_last,
        max_distance_mm=max_distance_mm,
        targets=targets,
    )
    components = dict(match.components_of())
    new_ids = list(match.new_ids)
    number = match.next_number
    for m in measurements:  # a component that left the common grid still is a lesion
        if m.label not in current:
            lesion_id = f"L{number}"
            number += 1
            new_ids.append(lesion_id)
            components[lesion_id] = (m.label,)
    timings["match_s"] = time.perf_counter() - started

    own = {
        lesion_id: union_footprint([current[label] for label in labs], geometry)
        for lesion_id, labs in match.components_of().items()
    }
    return TrackedVisit(
        measurements=measurements,
        match=match,
        components=components,
        new_ids=tuple(new_ids),
        next_number=number,
        footprints=own,
        transform=transform,
        registration=registration,
        timings_s=timings,
        _labels=labels,
        _grid=grid,
        _reference_labels=ref_labels,
    )


class LesionTracker:
    """Adds the visits of one patient in date order, keeping each lesion's latest footprint.

    The stateful use of :func:`track_visit` for visits held in memory (``rano-assess``): the baseline's
    grid is the common space, and each visit is matched against the latest footprint of every lesion
    seen so far.

    Args:
        reference: Baseline image or mask; its grid is the common space.
        max_distance_mm: See :func:`rano.match.match_components`.
    """

    def __init__(self, reference: sitk.Image, *, max_distance_mm: float = DEFAULT_MAX_DISTANCE_MM) -> None:
        if reference.GetDimension() != 3:
            raise MatchError("the reference image must be 3D")
        self._reference = reference
        self._max_distance_mm = max_distance_mm
        self._prior: dict[str, Footprint] = {}
        self._absent_last: frozenset[str] = frozenset()
        self._next_number = 1
        self.visits: list[VisitMatch] = []

    @property
    def lesion_ids(self) -> tuple[str, ...]:
        """Every lesion id given so far (of lesions with a footprint in the common grid)."""
        return tuple(sorted(self._prior, key=lambda i: (lesion_number(i), i)))

    def track(
        self,
        labels: sitk.Image,
        image: sitk.Image | None = None,
        transform: sitk.Transform | None = None,
        *,
        settings: ResponseSettings = ResponseSettings(),  # noqa: B008 - frozen
        targets: frozenset[str] = frozenset(),
    ) -> TrackedVisit:
        """Measure and match the next visit (see :func:`track_visit`) and remember its lesions.

        Args:
            labels: Component labels of this visit (e.g. from :func:`rano.measure.label_components`).
            image: Its intensity image on the same grid, for the intensity statistics.
            transform: Reference-to-this-visit transform from :func:`rano.match.register_rigid`; None =
                identity (the visit must lie in the reference's physical space).
            settings: Response settings (measurability).
            targets: Target lesion ids (see :func:`rano.match.match_components`).
        """
        tracked = track_visit(
            labels,
            image,
            settings=settings,
            reference=self._reference,
            transform=transform,
            prior=self._prior,
            next_number=self._next_number,
            absent_last=self._absent_last,
            targets=targets,
            max_distance_mm=self._max_distance_mm,
        )
        self._prior.update(tracked.footprints)
        self._absent_last = frozenset(tracked.match.absent_ids) | frozenset(tracked.match.merged_into)
        self._next_number = tracked.next_number
        self.visits.append(tracked.match)
        return tracked

    def add_visit(
        self,
        labels: sitk.Image,
        transform: sitk.Transform | None = None,
        *,
        targets: frozenset[str] = frozenset(),
    ) -> VisitMatch:
        """Match a visit's component labels against every earlier visit (:meth:`track` without an
        image); returns the match."""
        return self.track(labels, None, transform, targets=targets).match


__all__ = ["LesionTracker", "TrackedVisit", "track_visit"]
