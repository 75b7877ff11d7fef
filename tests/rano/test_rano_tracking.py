"""rano.tracking.track_visit: one visit measured, registered and matched in the common space, without a
database (the service's analysis stage and rano-assess both run it)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from rano_cases import sphere_mask, synthetic_t1c

from rano.errors import MatchError
from rano.match import MatchKind, lesion_number
from rano.measure import label_components, measure_lesions
from rano.settings import ResponseSettings
from rano.tracking import track_visit

SETTINGS = ResponseSettings()
SIZE = (64, 64, 48)
A, B, C = ((20, 20, 20), 6.0), ((44, 40, 24), 5.0), ((20, 46, 30), 4.0)


def comps(*spheres, **kw) -> sitk.Image:
    return label_components(sphere_mask(spheres, size_xyz=SIZE, **kw), 0.0)


def numbers_at(image: sitk.Image, points_mm) -> list[int]:
    return [int(image[image.TransformPhysicalPointToIndex(p)]) for p in points_mm]


def test_baseline_lesions_get_labels_and_both_maps_number_their_voxels() -> None:
    labels = comps(A, B)
    tracked = track_visit(labels, settings=SETTINGS)
    assert tracked.new_ids == ("L1", "L2") and tracked.next_number == 3
    assert dict(tracked.components) == {"L1": (1,), "L2": (2,)}
    # The first visit is the common space: both maps are on its grid and number the same voxels.
    expected = sitk.GetArrayFromImage(labels)  # components 1, 2 are lesions L1, L2
    assert np.array_equal(sitk.GetArrayFromImage(tracked.lesion_map), expected)
    assert np.array_equal(sitk.GetArrayFromImage(tracked.reference_map), expected)
    assert tracked.lesion_map.GetSpacing() == labels.GetSpacing()
    # Measurements are rano.measure's, one per component, on the visit's own grid.
    assert tracked.measurements == tuple(measure_lesions(labels, settings=SETTINGS, relabel=False))
    assert set(tracked.footprints) == {"L1", "L2"}
    assert set(tracked.timings_s) == {"measure_s", "register_s", "match_s"}


def test_follow_up_is_registered_to_the_common_space_before_matching() -> None:
    """A follow-up acquired 12 mm off: registration brings L1 and L2 back to their baseline places."""
    bl_mask = sphere_mask((A, B), size_xyz=SIZE)
    bl_img = synthetic_t1c(bl_mask)
    baseline = track_visit(label_components(bl_mask, 0), bl_img, settings=SETTINGS)
    fu_mask = sphere_mask((A, B, C), size_xyz=SIZE, shift_mm=(12.0, 0.0, 0.0))
    fu_img = synthetic_t1c(fu_mask, shift_mm=(12.0, 0.0, 0.0))
    fu = track_visit(
        label_components(fu_mask, 0),
        fu_img,
        settings=SETTINGS,
        reference=bl_img,
        register=True,
        prior=baseline.footprints,
        next_number=baseline.next_number,
    )
    assert fu.transform is not None
    kinds = {a.lesion_id: a.kind for a in fu.match.assignments}
    assert kinds == {"L1": MatchKind.MATCHED, "L2": MatchKind.MATCHED, "L3": MatchKind.NEW}
    # The common-space map shows L1 and L2 where the baseline had them; the visit's own map where the
    # follow-up has them (12 mm further along x).
    centres = [A[0], B[0]]
    assert numbers_at(fu.reference_map, centres) == [1, 2]
    assert numbers_at(fu.lesion_map, [(x + 12.0, y, z) for x, y, z in centres]) == [1, 2]
    # Without registration the shifted visit would not be in the baseline's space: refused, not guessed.
    with pytest.raises(MatchError):
        track_visit(
            label_components(fu_mask, 0),
            settings=SETTINGS,
            reference=comps(A, B, origin=(300.0, 0.0, 0.0)),
            prior=baseline.footprints,
        )


def test_split_lesion_keeps_its_label_and_its_fragments_are_measured() -> None:
    big = ((30, 30, 20), 10.0)
    baseline = track_visit(comps(big), settings=SETTINGS)
    halves = comps(((24, 30, 20), 4.0), ((36, 30, 20), 4.0))
    fu = track_visit(
        halves, settings=SETTINGS, reference=comps(big), prior=baseline.footprints, next_number=2
    )
    assert dict(fu.components) == {"L1": (1, 2)} and fu.new_ids == ()
    assert [m.label for m in fu.measurements_of("L1")] == [1, 2]
    assert set(np.unique(sitk.GetArrayFromImage(fu.lesion_map))) == {0, 1}
    # The next visit is matched against both fragments as one footprint.
    assert fu.footprints["L1"].voxels == int(np.count_nonzero(sitk.GetArrayViewFromImage(halves)))


def test_a_component_outside_the_common_grid_is_a_new_lesion_without_footprint() -> None:
    reference = label_components(sphere_mask((A,), size_xyz=(40, 40, 48)), 0.0)
    baseline = track_visit(reference, settings=SETTINGS)
    # Same physical space, larger field of view: the second lesion lies beyond the baseline's grid.
    labels = comps(A, ((52, 52, 24), 4.0))
    fu = track_visit(labels, settings=SETTINGS, reference=reference, prior=baseline.footprints, next_number=2)
    assert fu.new_ids == ("L2",) and dict(fu.components) == {"L1": (1,), "L2": (2,)}
    assert "L2" not in fu.footprints and fu.next_number == 3
    assert numbers_at(fu.lesion_map, [(52.0, 52.0, 24.0)]) == [lesion_number("L2")]
    assert [m.label for m in fu.measurements_of("L2")] == [2]
