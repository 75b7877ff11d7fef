"""Lesion matching across visits: one-to-one, splits, merges, disappearance, reappearance, new lesions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from rano_cases import sphere_mask, synthetic_t1c

from rano.errors import MatchError
from rano.match import (
    MatchKind,
    PriorVisit,
    check_same_space,
    footprints,
    match_components,
    match_visit,
    observations_from_match,
    register_rigid,
    rigid_registration,
    transform_from_parameters,
    transform_parameters,
)
from rano.measure import Geometry, label_components, measure_lesions
from rano.tracking import LesionTracker

A, B, C = ((16, 16, 16), 6.0), ((44, 40, 20), 5.0), ((20, 46, 30), 4.0)


def comps(*spheres, **kw) -> sitk.Image:
    return label_components(sphere_mask(spheres, **kw), 0.0)


def kinds(match) -> dict[str, str]:
    return {a.lesion_id: a.kind for a in match.assignments}


def test_baseline_ids_then_one_to_one_match() -> None:
    tracker = LesionTracker(comps(A, B))
    bl = tracker.add_visit(comps(A, B))
    assert [a.lesion_id for a in bl.assignments] == ["L1", "L2"] and bl.new_ids == ("L1", "L2")
    # Follow-up with lesions shrunk and moved by 2 mm: same ids, all matched.
    fu = tracker.add_visit(comps(((17, 16, 16), 4.0), ((44, 42, 20), 3.0)))
    assert kinds(fu) == {"L1": MatchKind.MATCHED, "L2": MatchKind.MATCHED}
    assert fu.new_ids == () and fu.absent_ids == ()


def test_new_disappeared_and_reappeared() -> None:
    tracker = LesionTracker(comps(A, B))
    tracker.add_visit(comps(A, B))
    fu1 = tracker.add_visit(comps(A, C))  # B gone, C new
    assert fu1.absent_ids == ("L2",) and fu1.new_ids == ("L3",)
    assert kinds(fu1)["L3"] == MatchKind.NEW
    fu2 = tracker.add_visit(comps(A, B, C))  # B is back: keeps L2
    assert kinds(fu2) == {"L1": MatchKind.MATCHED, "L2": MatchKind.REAPPEARED, "L3": MatchKind.MATCHED}
    assert tracker.lesion_ids == ("L1", "L2", "L3")


def test_lesion_far_from_every_earlier_one_is_new_even_if_others_vanish() -> None:
    tracker = LesionTracker(comps(A))
    tracker.add_visit(comps(A))
    fu = tracker.add_visit(comps(((50, 50, 40), 4.0)))  # 50 mm away: not L1
    assert fu.absent_ids == ("L1",) and fu.new_ids == ("L2",)


def test_split_lesion_fragments_keep_the_id_and_sum_lds() -> None:
    big = ((30, 30, 20), 10.0)
    tracker = LesionTracker(comps(big))
    tracker.add_visit(comps(big))
    halves = comps(((24, 30, 20), 4.0), ((36, 30, 20), 4.0))
    fu = tracker.add_visit(halves)
    assert {a.lesion_id for a in fu.assignments} == {"L1"} and len(fu.assignments) == 2
    assert sorted(a.kind for a in fu.assignments) == sorted([MatchKind.MATCHED, MatchKind.SPLIT])
    ms = measure_lesions(halves, relabel=False)
    (obs,) = observations_from_match(ms, fu, ("L1",))
    assert obs.fragment_count == 2
    assert obs.longest_diameter_mm == pytest.approx(sum(m.longest_diameter_mm for m in ms))
    assert obs.volume_mm3 == pytest.approx(sum(m.volume_mm3 for m in ms))


def test_merged_lesions_go_to_the_largest_overlap() -> None:
    left, right = ((24, 30, 20), 6.0), ((37, 30, 20), 4.0)
    tracker = LesionTracker(comps(left, right))
    tracker.add_visit(comps(left, right))
    merged = comps(((29, 30, 20), 10.0))
    fu = tracker.add_visit(merged)
    (only,) = fu.assignments
    assert only.lesion_id == "L1" and only.kind == MatchKind.MERGED
    assert fu.merged_into == {"L2": "L1"} and fu.absent_ids == ()
    obs = observations_from_match(measure_lesions(merged, relabel=False), fu, ("L1", "L2"))
    assert [(o.lesion_id, o.present, o.merged_into) for o in obs] == [("L1", True, None), ("L2", False, "L1")]


def test_merged_mass_goes_to_the_target_even_when_a_non_target_overlaps_more() -> None:
    # rano-bm.md section 3: "the merged mass is measured once and assigned to the target with the
    # largest overlap; the others count 0 mm". L1 is the large lesion (first in raster order), L2 the
    # small one; the merged mass overlaps L1 by 1128 voxels and L2 by 257 (all of it).
    small, large = ((22, 30, 20), 4.0), ((36, 30, 20), 7.0)
    merged = comps(((29, 30, 20), 11.0))
    for targets, owner, other in ((frozenset(), "L1", "L2"), (frozenset({"L2"}), "L2", "L1")):
        tracker = LesionTracker(comps(small, large))
        tracker.add_visit(comps(small, large))
        fu = tracker.add_visit(merged, targets=targets)
        (only,) = fu.assignments
        assert (only.lesion_id, only.kind) == (owner, MatchKind.MERGED)
        assert fu.merged_into == {other: owner} and fu.absent_ids == ()


def test_match_components_is_pure_and_deterministic() -> None:
    g = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    prior = footprints(sitk.GetArrayFromImage(comps(A, B)), g)
    current = footprints(sitk.GetArrayFromImage(comps(B, A, C)), g)
    prior_ids = {f"L{k}": f for k, f in prior.items()}
    m1 = match_components(current, prior_ids)
    m2 = match_components(current, prior_ids)
    assert m1 == m2 and m1.new_ids == ("L3",) and m1.next_number == 4
    with pytest.raises(MatchError, match="max_distance_mm"):
        match_components(current, prior_ids, max_distance_mm=-1)


def test_masks_in_unrelated_spaces_are_refused_without_images() -> None:
    ref = comps(A)
    far = comps(A, origin=(500.0, 0.0, 0.0))
    with pytest.raises(MatchError, match="physical space"):
        check_same_space(ref, far)
    tracker = LesionTracker(ref)
    tracker.add_visit(ref)
    with pytest.raises(MatchError, match="register"):
        tracker.add_visit(far)


def test_rigid_registration_recovers_a_shift_and_matches() -> None:
    """A follow-up acquired 6 mm off: without registration L1 would look new; with it, it matches."""
    spheres = (((30, 30, 24), 5.0), ((14, 44, 20), 4.0))
    bl_mask = sphere_mask(spheres, size_xyz=(64, 64, 48), spacing=(1.0, 1.0, 1.0))
    fu_mask = sphere_mask(spheres, size_xyz=(64, 64, 48), spacing=(1.0, 1.0, 1.0), shift_mm=(12.0, 0.0, 0.0))
    bl_img = synthetic_t1c(bl_mask)
    # The follow-up image is the baseline image moved with the lesions.
    shift = sitk.TranslationTransform(3, (-12.0, 0.0, 0.0))
    fu_img = sitk.Resample(bl_img, bl_img, shift, sitk.sitkLinear, 0.0)
    registration = rigid_registration(bl_img, fu_img)
    transform = registration.transform
    moved = np.array(transform.TransformPoint((30.0, 30.0, 24.0)))
    assert np.allclose(moved, (42.0, 30.0, 24.0), atol=1.0)
    assert registration.metric_value < 0  # Mattes MI: negative when the images share information
    # Stored as JSON (the service keeps it on the series) and read back, it maps points the same way.
    stored = json.loads(json.dumps(registration.as_dict()))
    restored = transform_from_parameters(stored)
    for point in ((30.0, 30.0, 24.0), (0.0, 60.0, 5.0)):
        assert np.allclose(restored.TransformPoint(point), transform.TransformPoint(point), atol=1e-6)
    assert transform_parameters(None)["parameters"] == [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0, 0, 0, 0]
    with pytest.raises(MatchError, match="singular"):
        transform_from_parameters({"type": "AffineTransform", "parameters": [0.0] * 12})
    tracker = LesionTracker(label_components(bl_mask, 0))
    tracker.add_visit(label_components(bl_mask, 0))
    fu = tracker.add_visit(label_components(fu_mask, 0), transform)
    assert fu.new_ids == () and fu.absent_ids == ()


def test_registration_needs_3d() -> None:
    with pytest.raises(MatchError, match="3D"):
        register_rigid(sitk.Image(8, 8, sitk.sitkFloat32), sitk.Image(8, 8, sitk.sitkFloat32))


def test_match_visit_from_stored_masks_equals_the_tracker() -> None:
    """The stateless, database-friendly matcher gives the tracker's answer, visit by visit."""
    visits = [comps(A, B), comps(A, C), comps(A, B, C)]
    tracker = LesionTracker(visits[0])
    stored: list[PriorVisit] = []
    for labels in visits:
        expected = tracker.add_visit(labels)
        got = match_visit(labels, stored, visits[0])
        assert got == expected
        stored.append(PriorVisit(labels, {a.label: a.lesion_id for a in got.assignments}))
    with pytest.raises(MatchError, match="no lesion id"):
        match_visit(visits[1], [PriorVisit(visits[0], {1: "L1"})], visits[0])
