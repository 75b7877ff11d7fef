"""Lesion correspondence across visits (issue 3, item 2).

Every visit's lesion components are brought into the baseline space (with a rigid registration of
the follow-up image to the baseline image when images exist; identity otherwise) and assigned to
the lesions seen at any earlier visit by overlap and centroid distance, with scipy's
``linear_sum_assignment`` for the one-to-one part. Then:

- **split**: further components overlapping an already matched lesion become its fragments;
- **merge**: one component overlapping several earlier lesions is assigned to the target lesion it
  overlaps most (to the lesion it overlaps most when none of them is a target); the others are
  recorded as merged into it and count 0 mm (rano-bm.md section 3);
- **disappearance**: earlier lesions with no component are absent at this visit;
- **reappearance**: a lesion absent at the previous visit and matched now keeps its label;
- **new**: components matched to no earlier lesion get the next free label.

Lesion labels (L1, L2, ...) never change once given. :func:`match_components` is pure numpy on
footprints in the reference grid (callable from stored masks); :func:`rano.tracking.track_visit` adds
one visit (measure, register, match, lesion maps) and :class:`rano.tracking.LesionTracker` keeps each
lesion's latest footprint across visits.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from rano.errors import MatchError
from rano.measure import Geometry, LesionMeasurement
from rano.response import LesionObservation

#: Components farther than this from an earlier lesion (centroids, mm) and not overlapping it are
#: never matched to it.
DEFAULT_MAX_DISTANCE_MM = 10.0


class MatchKind(StrEnum):
    """How a component of the current visit was assigned."""

    MATCHED = "matched"
    REAPPEARED = "reappeared"
    SPLIT = "split"
    MERGED = "merged"
    NEW = "new"


@dataclass(frozen=True)
class Footprint:
    """A lesion or component in the reference (baseline) grid.

    Attributes:
        start_zyx: First index (z, y, x) of the crop in the reference array.
        mask: Boolean crop.
        centroid_mm: Physical centroid (x, y, z) of its voxels.
    """

    start_zyx: tuple[int, int, int]
    mask: NDArray[np.bool_]
    centroid_mm: tuple[float, float, float]

    @property
    def voxels(self) -> int:
        """Number of voxels."""
        return int(self.mask.sum())

    def overlap(self, other: Footprint) -> int:
        """Number of voxels shared with ``other`` (same grid)."""
        lo = np.maximum(self.start_zyx, other.start_zyx)
        hi = np.minimum(np.add(self.start_zyx, self.mask.shape), np.add(other.start_zyx, other.mask.shape))
        if np.any(hi <= lo):
            return 0
        a = self.mask[tuple(slice(lo[d] - self.start_zyx[d], hi[d] - self.start_zyx[d]) for d in range(3))]
        b = other.mask[tuple(slice(lo[d] - other.start_zyx[d], hi[d] - other.start_zyx[d]) for d in range(3))]
        return int(np.count_nonzero(a & b))


def footprints(labels_zyx: NDArray[np.integer], geometry: Geometry) -> dict[int, Footprint]:
    """Footprint of every label of a reference-grid label array, keyed by label value."""
    out: dict[int, Footprint] = {}
    for index, bbox in enumerate(ndimage.find_objects(labels_zyx)):
        if bbox is None:
            continue
        crop = labels_zyx[bbox] == index + 1
        start = tuple(int(s.start) for s in bbox)
        zz, yy, xx = np.nonzero(crop)
        centroid = geometry.to_physical(
            np.array([[xx.mean() + start[2], yy.mean() + start[1], zz.mean() + start[0]]])
        )[0]
        out[index + 1] = Footprint(start, crop, (float(centroid[0]), float(centroid[1]), float(centroid[2])))  # type: ignore[arg-type]
    return out


@dataclass(frozen=True)
class ComponentAssignment:
    """Assignment of one current component to a lesion id."""

    label: int
    lesion_id: str
    kind: MatchKind
    overlap_voxels: int
    distance_mm: float | None


@dataclass(frozen=True)
class VisitMatch:
    """Result of matching one visit against all earlier visits.

    Attributes:
        assignments: One per component of the current visit, in label order.
        absent_ids: Earlier lesions with no component at this visit (merged ones excluded).
        merged_into: Earlier lesion id -> id of the lesion whose component absorbed it.
        new_ids: Lesion ids created at this visit.
        next_number: The next free lesion number after this visit.
    """

    assignments: tuple[ComponentAssignment, ...]
    absent_ids: tuple[str, ...]
    merged_into: Mapping[str, str]
    new_ids: tuple[str, ...]
    next_number: int

    def components_of(self) -> dict[str, tuple[int, ...]]:
        """Lesion id -> the component labels assigned to it (several for a split lesion)."""
        out: dict[str, list[int]] = {}
        for a in self.assignments:
            out.setdefault(a.lesion_id, []).append(a.label)
        return {k: tuple(v) for k, v in out.items()}


def lesion_number(lesion_id: str) -> int:
    """Number of a lesion id such as ``L12`` (0 when it has none)."""
    digits = "".join(ch for ch in lesion_id if ch.isdigit())
    return int(digits) if digits else 0


@dataclass(frozen=True)
class _Pairs:
    """Every (current component, earlier lesion) pair, by index into ``labels`` and ``ids``.

    Attributes:
        labels: Current component labels, sorted.
        ids: Earlier lesion ids, in lesion-number order.
        overlap: Shared voxels, components x lesions.
        dist: Centroid distances (mm), components x lesions.
    """

    labels: list[int]
    ids: list[str]
    overlap: NDArray[np.int64]
    dist: NDArray[np.float64]


def _pairs(current: Mapping[int, Footprint], prior: Mapping[str, Footprint]) -> _Pairs:
    labels = sorted(current)
    ids = sorted(prior, key=lambda i: (lesion_number(i), i))
    overlap = np.zeros((len(labels), len(ids)), dtype=np.int64)
    dist = np.full((len(labels), len(ids)), np.inf)
    for a, lab in enumerate(labels):
        c = current[lab]
        for b, lid in enumerate(ids):
            p = prior[lid]
            dist[a, b] = math.dist(c.centroid_mm, p.centroid_mm)
            overlap[a, b] = c.overlap(p)  # returns at once when the bounding boxes are disjoint
    return _Pairs(labels=labels, ids=ids, overlap=overlap, dist=dist)


def _primary_matches(
    pairs: _Pairs, current: Mapping[int, Footprint], prior: Mapping[str, Footprint], max_distance_mm: float
) -> dict[int, int]:
    """The one-to-one part: component index -> earlier lesion index (linear_sum_assignment)."""
    overlap, dist = pairs.overlap, pairs.dist
    if not (pairs.labels and pairs.ids):
        return {}
    sizes_c = np.array([current[lab].voxels for lab in pairs.labels], dtype=np.float64)
    sizes_p = np.array([prior[i].voxels for i in pairs.ids], dtype=np.float64)
    eligible = (overlap > 0) | (dist <= max_distance_mm)
    # Overlap (as a fraction of the smaller footprint) dominates; proximity breaks ties and
    # matches lesions that moved off their old footprint.
    frac = overlap / np.maximum(1.0, np.minimum(sizes_c[:, None], sizes_p[None, :]))
    closeness = np.clip(1.0 - dist / max(max_distance_mm, 1e-9), 0.0, 1.0)
    score = np.where(eligible, 2.0 * frac + closeness + 1e-3, 0.0)
    rows, cols = linear_sum_assignment(-score)
    return {int(r): int(c) for r, c in zip(rows, cols, strict=True) if eligible[r, c]}


def _merges(
    pairs: _Pairs, primary: Mapping[int, int], targets: frozenset[str]
) -> tuple[dict[int, int], dict[str, str]]:
    """Merges: an earlier lesion left without a component of its own but overlapping a matched
    component was absorbed by it. The merged mass belongs to the target it overlaps most, or to the
    lesion it overlaps most when it absorbed no target (rano-bm.md section 3).

    Returns:
        Component index -> index of the lesion that owns it, and merged lesion id -> owner id.
    """
    overlap, ids = pairs.overlap, pairs.ids
    matched_prior = set(primary.values())
    absorbed: dict[int, list[int]] = {}
    for b in range(len(ids)):
        if b in matched_prior:
            continue
        hits = [a for a in primary if overlap[a, b] > 0]
        if hits:
            absorbed.setdefault(max(hits, key=lambda k: (overlap[k, b], -k)), []).append(b)
    owner_of_component: dict[int, int] = dict(primary)
    merged_into: dict[str, str] = {}
    for a, extra in absorbed.items():
        group = [primary[a], *extra]
        owner = max(group, key=lambda bb: (ids[bb] in targets, overlap[a, bb], -bb))
        owner_of_component[a] = owner
        for bb in group:
            if bb != owner:
                merged_into[ids[bb]] = ids[owner]
    return owner_of_component, merged_into


def _earlier_lesion(
    a: int,
    pairs: _Pairs,
    owner_of_component: Mapping[int, int],
    merged_into: Mapping[str, str],
    absent_last_visit: frozenset[str],
) -> ComponentAssignment | None:
    """Component ``a`` as matched, merged or reappeared, or as a fragment of a split lesion; None
    when it belongs to no earlier lesion (new)."""
    overlap, dist, ids, lab = pairs.overlap, pairs.dist, pairs.ids, pairs.labels[a]
    if a in owner_of_component:
        b = owner_of_component[a]
        kind = (
            MatchKind.MERGED
            if any(v == ids[b] for v in merged_into.values())
            else (MatchKind.REAPPEARED if ids[b] in absent_last_visit else MatchKind.MATCHED)
        )
        return ComponentAssignment(lab, ids[b], kind, int(overlap[a, b]), float(dist[a, b]))
    touching = [b for b in range(len(ids)) if overlap[a, b] > 0]
    if touching:
        b = max(touching, key=lambda k: (overlap[a, k], -k))
        target = merged_into.get(ids[b], ids[b])
        return ComponentAssignment(lab, target, MatchKind.SPLIT, int(overlap[a, b]), float(dist[a, b]))
    return None


def match_components(
    current: Mapping[int, Footprint],
    prior: Mapping[str, Footprint],
    *,
    next_number: int | None = None,
    absent_last_visit: frozenset[str] = frozenset(),
    max_distance_mm: float = DEFAULT_MAX_DISTANCE_MM,
    targets: frozenset[str] = frozenset(),
) -> VisitMatch:
    """Assign the current visit's components to earlier lesions (all in the same reference grid).

    Args:
        current: Component label -> footprint at the current visit.
        prior: Lesion id -> its latest footprint over all earlier visits.
        next_number: Number for the next new lesion id; defaults to one past the largest prior id.
        absent_last_visit: Lesion ids absent at the previous visit (to report reappearance).
        max_distance_mm: Non-overlapping pairs farther apart than this are never matched.
        targets: The patient's target lesions: a merged mass goes to the target it overlaps most.

    Returns:
        The assignments; new lesions are numbered in component-label (raster) order.
    """
    if max_distance_mm < 0 or not math.isfinite(max_distance_mm):
        raise MatchError(f"max_distance_mm must be a finite distance >= 0, got {max_distance_mm}")
    pairs = _pairs(current, prior)
    if next_number is None:
        next_number = max((lesion_number(i) for i in pairs.ids), default=0) + 1
    primary = _primary_matches(pairs, current, prior, max_distance_mm)
    owner_of_component, merged_into = _merges(pairs, primary, targets)

    assignments: list[ComponentAssignment] = []
    new_ids: list[str] = []
    assigned_ids: set[str] = set()
    for a, lab in enumerate(pairs.labels):
        found = _earlier_lesion(a, pairs, owner_of_component, merged_into, absent_last_visit)
        if found is None:
            lesion_id = f"L{next_number}"
            next_number += 1
            new_ids.append(lesion_id)
            found = ComponentAssignment(lab, lesion_id, MatchKind.NEW, 0, None)
        else:
            assigned_ids.add(found.lesion_id)
        assignments.append(found)
    # A lesion matched only through its fragments (its primary component went elsewhere) is present.
    absent = tuple(i for i in pairs.ids if i not in assigned_ids and i not in merged_into)
    return VisitMatch(tuple(assignments), absent, merged_into, tuple(new_ids), next_number)


@dataclass(frozen=True)
class RigidRegistration:
    """The result of :func:`rigid_registration`.

    Attributes:
        transform: Maps fixed-space points (mm, LPS) to moving-space points (SimpleITK's resampling
            convention: resample the moving image onto the fixed grid with it).
        metric_value: Mattes mutual information at the end of the finest level (more negative is a
            better fit); a record of how well the two scans matched, not a pass/fail.
    """

    transform: sitk.Transform
    metric_value: float

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form: the transform's parameters (:func:`transform_parameters`) and the metric."""
        return {**transform_parameters(self.transform), "metric_value": round(float(self.metric_value), 6)}


def transform_parameters(transform: sitk.Transform | None) -> dict[str, object]:
    """A rigid (or any affine) 3D transform as SimpleITK ``AffineTransform`` parameters, JSON-ready.

    Whatever the transform's kind (the registration returns a composite of an Euler transform), the
    same point mapping is written as ``{"type": "AffineTransform", "parameters": [9 matrix entries,
    row-major, then 3 translation mm], "fixed_parameters": [0, 0, 0]}`` (centre at the origin), which
    :func:`transform_from_parameters` reads back. None is the identity.
    """
    probe = transform if transform is not None else sitk.Transform()
    offset = np.array(probe.TransformPoint((0.0, 0.0, 0.0)))
    columns = [np.array(probe.TransformPoint(tuple(float(v) for v in axis))) - offset for axis in np.eye(3)]
    matrix = np.column_stack(columns)
    return {
        "type": "AffineTransform",
        "parameters": [float(v) for v in matrix.ravel()] + [float(v) for v in offset],
        "fixed_parameters": [0.0, 0.0, 0.0],
    }


def transform_from_parameters(data: Mapping[str, object]) -> sitk.AffineTransform:
    """The transform written by :func:`transform_parameters`.

    Raises:
        MatchError: Not such a transform, or its matrix is singular.
    """
    parameters = data.get("parameters")
    if (
        data.get("type") != "AffineTransform"
        or not isinstance(parameters, list | tuple)
        or len(parameters) != 12
    ):
        raise MatchError("a stored transform must be an AffineTransform with 12 parameters")
    values = [float(v) for v in parameters]
    if abs(np.linalg.det(np.array(values[:9]).reshape(3, 3))) < 1e-6:
        raise MatchError("the stored transform's matrix is singular")
    transform = sitk.AffineTransform(3)
    transform.SetFixedParameters([0.0, 0.0, 0.0])
    transform.SetParameters(values)
    return transform


def register_rigid(fixed: sitk.Image, moving: sitk.Image, *, seed: int = 20240108) -> sitk.Transform:
    """Rigid registration of ``moving`` (follow-up image) to ``fixed`` (baseline image): the transform of
    :func:`rigid_registration`."""
    return rigid_registration(fixed, moving, seed=seed).transform


def rigid_registration(fixed: sitk.Image, moving: sitk.Image, *, seed: int = 20240108) -> RigidRegistration:
    """Rigid registration of ``moving`` (follow-up image) to ``fixed`` (baseline image).

    Both images are first bin-shrunk to about 2 mm voxels, then registered multi-resolution
    (shrink 4-2-1, smoothing 2-1-0 voxels) with Mattes mutual information on a 2% random sample
    with a fixed seed, so the same inputs give the same transform. Matching tolerates millimetres
    (overlap plus a 10 mm distance gate), so 2 mm is ample and keeps a 1 mm brain fast.

    Returns:
        The transform mapping fixed-space points to moving-space points (SimpleITK's resampling
        convention: resample the follow-up onto the baseline grid with it), and the final metric value.

    Raises:
        MatchError: When the images are not 3D or registration fails.
    """
    if fixed.GetDimension() != 3 or moving.GetDimension() != 3:
        raise MatchError("registration needs two 3D images")

    # Register at about 2 mm: bin-shrinking first is far cheaper than letting the registration
    # smooth and resample the full 1 mm volumes at every level.
    def coarse(image: sitk.Image) -> sitk.Image:
        # ... but keep at least 64 voxels per axis so that the coarsest level still has structure.
        factors = [
            max(1, min(round(2.0 / s), n // 64))
            for s, n in zip(image.GetSpacing(), image.GetSize(), strict=True)
        ]
        return sitk.BinShrink(sitk.Cast(image, sitk.sitkFloat32), factors)

    fixed_f, moving_f = coarse(fixed), coarse(moving)
    initial = sitk.CenteredTransformInitializer(
        fixed_f, moving_f, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.GEOMETRY
    )
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.02, seed)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0, minStep=1e-2, numberOfIterations=60, gradientMagnitudeTolerance=1e-6
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([4, 2, 1])
    reg.SetSmoothingSigmasPerLevel([2, 1, 0])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    reg.SetInitialTransform(initial, inPlace=False)
    try:
        result = reg.Execute(fixed_f, moving_f)
    except RuntimeError as exc:  # ITK reports failures as RuntimeError
        raise MatchError(f"rigid registration failed: {exc}") from None
    return RigidRegistration(result, float(reg.GetMetricValue()))


def _physical_box(image: sitk.Image) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    g = Geometry.of(image)
    size = image.GetSize()
    corners = np.array(
        [
            [x, y, z]
            for x in (-0.5, size[0] - 0.5)
            for y in (-0.5, size[1] - 0.5)
            for z in (-0.5, size[2] - 0.5)
        ]
    )
    phys = g.to_physical(corners)
    return phys.min(axis=0), phys.max(axis=0)


def check_same_space(reference: sitk.Image, other: sitk.Image, what: str = "mask") -> None:
    """Refuse to match masks without registration when their physical extents barely overlap.

    Raises:
        MatchError: When less than half of the smaller extent is shared.
    """
    lo1, hi1 = _physical_box(reference)
    lo2, hi2 = _physical_box(other)
    inter = np.clip(np.minimum(hi1, hi2) - np.maximum(lo1, lo2), 0, None).prod()
    smaller = min((hi1 - lo1).prod(), (hi2 - lo2).prod())
    if inter < 0.5 * smaller:
        raise MatchError(
            f"the {what} does not lie in the baseline's physical space ({inter / smaller:.0%} of it overlaps); "
            "give the images so the visits can be registered"
        )


def to_reference(
    labels: sitk.Image, reference: sitk.Image, transform: sitk.Transform | None = None
) -> sitk.Image:
    """Nearest-neighbour resampling of a label image onto the reference grid (no-op when already there)."""
    same = (
        transform is None
        and labels.GetSize() == reference.GetSize()
        and np.allclose(labels.GetSpacing(), reference.GetSpacing(), atol=1e-5)
        and np.allclose(labels.GetOrigin(), reference.GetOrigin(), atol=1e-4)
        and np.allclose(labels.GetDirection(), reference.GetDirection(), atol=1e-5)
    )
    if same:
        return labels
    return sitk.Resample(
        labels, reference, transform or sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt32
    )


@dataclass(frozen=True)
class PriorVisit:
    """An earlier visit as stored: its component labels, which lesion each label is, and its transform.

    Attributes:
        labels: Component label image on the visit's own grid.
        lesion_ids: Label value -> lesion id (several labels may name one lesion: a split).
        transform: Reference-to-this-visit transform (from :func:`register_rigid`); None = identity.
    """

    labels: sitk.Image
    lesion_ids: Mapping[int, str]
    transform: sitk.Transform | None = None


def match_visit(
    current: sitk.Image,
    prior_visits: Sequence[PriorVisit],
    reference: sitk.Image,
    *,
    transform: sitk.Transform | None = None,
    next_number: int | None = None,
    max_distance_mm: float = DEFAULT_MAX_DISTANCE_MM,
    targets: frozenset[str] = frozenset(),
) -> VisitMatch:
    """Match a new visit's components against every earlier visit's lesions, from stored masks.

    The stateless counterpart of :class:`rano.tracking.LesionTracker` for callers that keep each visit's labels and
    lesion ids (e.g. in a database): each lesion's footprint is taken from the latest earlier visit
    that shows it.

    Args:
        current: Component label image of the new visit (its own grid).
        prior_visits: Earlier visits in date order (the baseline first).
        reference: Grid of the common space (the baseline mask or image).
        transform: Reference-to-current transform; None = identity (same physical space required).
        next_number: Number of the next new lesion; default one past the largest known.
        max_distance_mm: See :func:`match_components`.
        targets: Target lesion ids (see :func:`match_components`).

    Raises:
        MatchError: On a label with no lesion id, or masks outside the reference space.
    """
    geometry = Geometry.of(reference)
    latest: dict[str, list[Footprint]] = {}
    seen_at: dict[str, int] = {}
    for k, visit in enumerate(prior_visits):
        if visit.transform is None:
            check_same_space(reference, visit.labels)
        resampled = to_reference(visit.labels, reference, visit.transform)
        parts = footprints(sitk.GetArrayViewFromImage(resampled), geometry)
        for label in parts:
            if label not in visit.lesion_ids:
                raise MatchError(f"earlier visit #{k + 1}: label {label} has no lesion id")
        this_visit: dict[str, list[Footprint]] = {}
        for label, fp in parts.items():
            this_visit.setdefault(visit.lesion_ids[label], []).append(fp)
        for lesion_id, fps in this_visit.items():
            latest[lesion_id] = fps
            seen_at[lesion_id] = k
    prior = {i: union_footprint(fps, geometry) for i, fps in latest.items()}
    last = len(prior_visits) - 1
    absent_last = frozenset(i for i, k in seen_at.items() if k != last)
    if transform is None and prior_visits:
        check_same_space(reference, current)
    resampled_current = to_reference(current, reference, transform)
    return match_components(
        footprints(sitk.GetArrayViewFromImage(resampled_current), geometry),
        prior,
        next_number=next_number,
        absent_last_visit=absent_last,
        max_distance_mm=max_distance_mm,
        targets=targets,
    )


def union_footprint(parts: Sequence[Footprint], geometry: Geometry) -> Footprint:
    """One footprint of several (the fragments of a split lesion); a single part is returned as it is."""
    if len(parts) == 1:
        return parts[0]
    lo = np.min([p.start_zyx for p in parts], axis=0)
    hi = np.max([np.add(p.start_zyx, p.mask.shape) for p in parts], axis=0)
    mask = np.zeros(tuple(hi - lo), dtype=bool)
    for p in parts:
        s = np.subtract(p.start_zyx, lo)
        mask[s[0] : s[0] + p.mask.shape[0], s[1] : s[1] + p.mask.shape[1], s[2] : s[2] + p.mask.shape[2]] |= (
            p.mask
        )
    zz, yy, xx = np.nonzero(mask)
    c = geometry.to_physical(np.array([[xx.mean() + lo[2], yy.mean() + lo[1], zz.mean() + lo[0]]]))[0]
    return Footprint((int(lo[0]), int(lo[1]), int(lo[2])), mask, (float(c[0]), float(c[1]), float(c[2])))


def observations_from_match(
    measurements: Sequence[LesionMeasurement],
    match: VisitMatch,
    known_ids: Sequence[str] = (),
    components: Mapping[str, Sequence[int]] | None = None,
) -> tuple[LesionObservation, ...]:
    """Per-lesion observations of one visit from its component measurements and its match.

    ``components`` (lesion id -> component labels) defaults to the match's own; a caller that gave
    lesions to components outside the match (:attr:`rano.tracking.TrackedVisit.components`) passes them.
    Fragments of a split lesion sum their LDs and volumes (rano-bm.md section 3); the perpendicular
    and slice spacing come from the largest fragment; the slice count is the largest of them.
    Earlier lesions that are absent or merged get an absent observation (merged ones name the owner).
    """
    by_label = {m.label: m for m in measurements}
    out: list[LesionObservation] = []
    for lesion_id, labs in (components if components is not None else match.components_of()).items():
        try:
            parts = [by_label[lab] for lab in labs]
        except KeyError as exc:
            raise MatchError(f"no measurement for component {exc.args[0]} of {lesion_id}") from None
        main = max(parts, key=lambda p: p.longest_diameter_mm)
        out.append(
            LesionObservation(
                lesion_id,
                present=True,
                longest_diameter_mm=sum(p.longest_diameter_mm for p in parts),
                perpendicular_diameter_mm=main.perpendicular_diameter_mm,
                volume_mm3=sum(p.volume_mm3 for p in parts),
                slice_count=max(p.slice_count for p in parts),
                slice_spacing_mm=main.slice_spacing_mm,
                fragment_count=len(parts),
            )
        )
    listed = {o.lesion_id for o in out}
    for lesion_id in (*match.absent_ids, *known_ids):
        if lesion_id not in listed and lesion_id not in match.merged_into:
            out.append(LesionObservation(lesion_id, present=False))
            listed.add(lesion_id)
    for lesion_id, owner in match.merged_into.items():
        if lesion_id not in listed:
            out.append(LesionObservation(lesion_id, present=False, merged_into=owner))
    return tuple(sorted(out, key=lambda o: (lesion_number(o.lesion_id), o.lesion_id)))
