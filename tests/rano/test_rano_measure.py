"""Lesion measurement against analytic shapes, brute force and SimpleITK (rano-bm.md section 1)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st
from rano_shapes import ellipsoid_image, rotation
from scipy import ndimage

from rano.errors import GeometryError
from rano.measure import (
    Geometry,
    _label_boxes,
    _raw_components,
    label_components,
    label_components_array,
    measurability,
    measure_lesions,
    measure_lesions_array,
)
from rano.settings import ResponseSettings


def brute_force_ld(mask_zyx: np.ndarray, spacing_xy: tuple[float, float]) -> float:
    """Independent LD oracle: all pairs of voxel corners on every axial slice, no hull."""
    best = 0.0
    for z in range(mask_zyx.shape[0]):
        ys, xs = np.nonzero(mask_zyx[z])
        if ys.size == 0:
            continue
        corners = np.concatenate(
            [
                np.column_stack([(xs + dx) * spacing_xy[0], (ys + dy) * spacing_xy[1]])
                for dx in (-0.5, 0.5)
                for dy in (-0.5, 0.5)
            ]
        )
        diff = corners[:, None, :] - corners[None, :, :]
        best = max(best, float(np.sqrt((diff**2).sum(-1)).max()))
    return best


# Tolerance: a voxelised shape measures the analytic diameter within one in-plane voxel diagonal
# (spec section 1: "a voxelised 20 mm sphere measures 20 mm within one voxel").
@pytest.mark.parametrize(
    "spacing",
    [(1.0, 1.0, 1.0), (0.5, 0.5, 1.0), (0.9, 0.9, 3.0), (1.0, 0.7, 2.0)],
)
def test_sphere_20mm_measures_20mm_within_one_voxel(spacing: tuple[float, float, float]) -> None:
    size = tuple(int(math.ceil(32 / s)) for s in spacing)
    img = ellipsoid_image((10, 10, 10), size_xyz=size, spacing=spacing)
    (m,) = measure_lesions(img)
    diag = math.hypot(spacing[0], spacing[1])
    assert abs(m.longest_diameter_mm - 20.0) <= diag
    assert abs(m.perpendicular_diameter_mm - 20.0) <= diag
    assert m.perpendicular_diameter_mm <= m.longest_diameter_mm + 1e-9
    assert abs(m.max_3d_diameter_mm - 20.0) <= math.sqrt(sum(s * s for s in spacing))
    # Volume of a voxelised sphere: within 5% of 4/3 pi r^3 at these resolutions.
    assert m.volume_mm3 == pytest.approx(4 / 3 * math.pi * 1000, rel=0.05)
    centre = np.array([(n - 1) / 2 * s for n, s in zip(size, spacing, strict=True)])
    assert np.allclose(m.centroid_mm, centre, atol=0.05)
    assert not m.reformatted and m.slice_axis == 2
    # The slice count is the number of slice centres inside the sphere.
    assert abs(m.slice_count - 20.0 / spacing[2]) <= 1
    assert m.measurable and m.not_measurable_reason is None


@pytest.mark.parametrize("angle", [0.0, 30.0, 45.0, 77.0])
def test_ellipsoid_rotated_in_plane(angle: float) -> None:
    """Semi-axes 15 x 6 x 8 mm rotated about z: LD 30 mm along the rotated axis, perpendicular 12 mm."""
    spacing = (0.6, 0.6, 1.5)
    img = ellipsoid_image(
        (15, 6, 8), size_xyz=(64, 64, 16), spacing=spacing, shape_rotation=rotation("z", angle)
    )
    (m,) = measure_lesions(img)
    diag = math.hypot(0.6, 0.6)
    assert abs(m.longest_diameter_mm - 30.0) <= diag
    assert abs(m.perpendicular_diameter_mm - 12.0) <= diag
    a, b = (np.array(p) for p in m.ld_endpoints_mm)
    assert np.linalg.norm(b - a) == pytest.approx(m.longest_diameter_mm, abs=1e-6)
    direction = np.degrees(np.arctan2(b[1] - a[1], b[0] - a[0])) % 180
    # The caliper may join opposite corners of the flat voxel runs at the ellipse's tips (about
    # +-1.5 mm here), so its angle may differ from the axis by up to atan(3 / 30) = 5.7 degrees.
    assert min(abs(direction - angle % 180), 180 - abs(direction - angle % 180)) <= 6.0
    p, q = (np.array(pt) for pt in m.perpendicular_endpoints_mm)
    assert np.linalg.norm(q - p) == pytest.approx(m.perpendicular_diameter_mm, abs=1e-6)
    assert abs(np.dot((q - p) / np.linalg.norm(q - p), (b - a) / np.linalg.norm(b - a))) < 1e-6
    # Caliper end points lie on the LD slice.
    assert a[2] == pytest.approx(m.ld_slice_index * spacing[2]) == b[2] == p[2] == q[2]


@pytest.mark.parametrize("tilt", [20.0, 40.0])
def test_ellipsoid_rotated_out_of_plane(tilt: float) -> None:
    """Ellipsoid (a=7, b=12, c=5 mm) tilted about x: the largest axial cross-section is the central one,
    an ellipse with semi-axes a and b' = 1 / sqrt(cos^2 t / b^2 + sin^2 t / c^2)."""
    a, b, c = 7.0, 12.0, 5.0
    t = math.radians(tilt)
    b_axial = 1 / math.sqrt(math.cos(t) ** 2 / b**2 + math.sin(t) ** 2 / c**2)
    spacing = (0.5, 0.5, 0.5)
    img = ellipsoid_image(
        (a, b, c), size_xyz=(40, 60, 60), spacing=spacing, shape_rotation=rotation("x", tilt)
    )
    (m,) = measure_lesions(img)
    diag = math.hypot(0.5, 0.5)
    assert abs(m.longest_diameter_mm - 2 * max(a, b_axial)) <= diag
    assert abs(m.perpendicular_diameter_mm - 2 * min(a, b_axial)) <= diag
    assert abs(m.max_3d_diameter_mm - 2 * b) <= math.sqrt(3) * 0.5


def test_non_identity_direction_in_plane_and_tilted() -> None:
    """Grid rotated with the lesion: the image slice plane (25 deg off axial) is the measuring plane."""
    spacing = (0.7, 0.7, 1.2)
    direction = rotation("z", 35.0) @ rotation("x", 25.0)
    origin = (-20.0, 13.0, 4.0)
    img = ellipsoid_image(
        (11, 6, 5),
        size_xyz=(48, 40, 20),
        spacing=spacing,
        direction=direction,
        shape_rotation=direction,
        origin=origin,
    )
    (m,) = measure_lesions(img)
    assert not m.reformatted and m.slice_axis == 2
    assert abs(m.longest_diameter_mm - 22.0) <= math.hypot(0.7, 0.7)
    assert abs(m.perpendicular_diameter_mm - 12.0) <= math.hypot(0.7, 0.7)
    # The LD runs along the ellipsoid's first axis in physical space.
    a, b = (np.array(p) for p in m.ld_endpoints_mm)
    assert abs(np.dot((b - a) / np.linalg.norm(b - a), direction[:, 0])) > 0.99
    # Centroid in physical space is the grid centre mapped through the direction.
    centre = direction @ ((np.array([48, 40, 20]) - 1) / 2 * np.array(spacing)) + np.array(origin)
    assert np.allclose(m.centroid_mm, centre, atol=0.1)


def test_sagittal_grid_uses_the_index_axis_along_z() -> None:
    """A sagittal acquisition (k along x, j along z) is sliced across j, without resampling."""
    direction = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    spacing = (0.5, 1.0, 0.8)  # i -> y, j -> z, k -> x
    img = ellipsoid_image((12, 5, 4), size_xyz=(60, 20, 40), spacing=spacing, direction=direction)
    (m,) = measure_lesions(img)
    assert not m.reformatted and m.slice_axis == 1 and m.slice_spacing_mm == 1.0
    assert abs(m.longest_diameter_mm - 24.0) <= math.hypot(0.5, 0.8)
    assert abs(m.perpendicular_diameter_mm - 10.0) <= math.hypot(0.5, 0.8)
    a, b = (np.array(p) for p in m.ld_endpoints_mm)
    assert a[2] == pytest.approx(b[2])  # caliper in one axial plane
    assert abs(m.slice_count - 8) <= 1


@pytest.mark.parametrize("tilt_deg", [50.0, 60.0])
def test_slice_plane_tilted_beyond_45_degrees_is_reformatted(tilt_deg: float) -> None:
    """rano-bm.md section 1: the image's slice plane is used only within 45 deg of axial, otherwise an
    axial reformat. Tilted about x by 50 or 60 deg, the j axis is 40 or 30 deg from z: measuring across
    it would cut the ellipsoid (semi-axes 5, 5, 20 mm along x, y, z) obliquely (LD 13 mm at 50 deg);
    on the axial reformat its LD is the axial 10 mm."""
    t = math.radians(tilt_deg)
    direction = np.array([[1.0, 0.0, 0.0], [0.0, math.cos(t), -math.sin(t)], [0.0, math.sin(t), math.cos(t)]])
    spacing = (0.5, 0.5, 0.5)
    img = ellipsoid_image((5, 5, 20), size_xyz=(40, 110, 110), spacing=spacing, direction=direction)
    untilted = ellipsoid_image((5, 5, 20), size_xyz=(40, 40, 100), spacing=spacing)
    (m,) = measure_lesions(img)
    (reference,) = measure_lesions(untilted)
    assert m.reformatted and m.slice_axis == 2
    # Axial LD of the ellipsoid is 10 mm; the voxel-corner hull and the nearest-neighbour reformat add
    # up to a native voxel diagonal on each side.
    assert abs(m.longest_diameter_mm - 10.0) <= 2 * math.sqrt(3) * 0.5
    assert abs(reference.longest_diameter_mm - 10.0) <= 2 * math.sqrt(2) * 0.5
    a, b = (np.array(p) for p in m.ld_endpoints_mm)
    assert a[2] == pytest.approx(b[2])  # caliper in one axial plane


def test_double_oblique_grid_is_reformatted_to_axial() -> None:
    """No index axis within 45 deg of z: reformat; a 20 mm sphere still measures about 20 mm."""
    # Rows of an orthonormal matrix whose z row is (1, 1, 1) / sqrt(3): every axis 54.7 deg off z.
    direction = np.array(
        [
            [1 / math.sqrt(2), -1 / math.sqrt(2), 0.0],
            [1 / math.sqrt(6), 1 / math.sqrt(6), -2 / math.sqrt(6)],
            [1 / math.sqrt(3)] * 3,
        ]
    )
    assert np.abs(direction[2]).max() < math.cos(math.radians(45))
    spacing = (0.8, 0.8, 0.8)
    img = ellipsoid_image((10, 10, 10), size_xyz=(36, 36, 36), spacing=spacing, direction=direction)
    (m,) = measure_lesions(img)
    assert m.reformatted and m.slice_axis == 2
    # Nearest-neighbour reformat adds up to one native voxel on each side.
    assert abs(m.longest_diameter_mm - 20.0) <= 2 * math.sqrt(3) * 0.8
    # Volume and centroid come from the native grid, exactly as SimpleITK computes them.
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(img)
    assert m.volume_mm3 == pytest.approx(stats.GetPhysicalSize(1), rel=1e-9)
    assert np.allclose(m.centroid_mm, stats.GetCentroid(1), atol=1e-6)
    a, b = (np.array(p) for p in m.ld_endpoints_mm)
    assert a[2] == pytest.approx(b[2])


def _random_blobs(seed: int, shape=(24, 40, 40)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    field = rng.random(shape)
    from scipy import ndimage

    smooth = ndimage.gaussian_filter(field, 2.0)
    return (smooth > np.quantile(smooth, 0.93)).astype(np.uint8)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ld_equals_brute_force_and_sitk_oracles(seed: int) -> None:
    mask = _random_blobs(seed)
    spacing = (0.8, 0.6, 1.5)
    img = sitk.GetImageFromArray(mask)
    img.SetSpacing(spacing)
    labels = label_components(img, min_volume_mm3=0.0)
    results = measure_lesions(labels)
    arr = sitk.GetArrayFromImage(labels)
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.ComputeFeretDiameterOn()
    stats.SetGlobalDefaultCoordinateTolerance(1e-3)
    stats.Execute(labels)
    assert [m.label for m in results] == sorted(stats.GetLabels())
    voxel_diag = math.sqrt(sum(s * s for s in spacing))
    for m in results:
        assert m.longest_diameter_mm == pytest.approx(brute_force_ld(arr == m.label, spacing[:2]), abs=1e-9)
        assert m.volume_mm3 == pytest.approx(stats.GetPhysicalSize(m.label), rel=1e-9)
        assert np.allclose(m.centroid_mm, stats.GetCentroid(m.label), atol=1e-6)
        # SimpleITK's Feret diameter joins voxel centres; ours joins outer corners.
        feret = stats.GetFeretDiameter(m.label)
        assert feret - 1e-6 <= m.max_3d_diameter_mm <= feret + voxel_diag + 1e-6
        assert m.longest_diameter_mm <= m.max_3d_diameter_mm + 1e-9
        assert m.slice_count == len(np.unique(np.nonzero(arr == m.label)[0]))
        bbox = stats.GetBoundingBox(m.label)
        assert m.bbox_index + m.bbox_size == tuple(bbox)


def brute_force_3d_diameter(mask_zyx: np.ndarray, spacing: tuple[float, float, float]) -> float:
    """Independent 3D diameter oracle: all pairs of the 8 corners of every voxel, no hull, no pruning."""
    zyx = np.argwhere(mask_zyx).astype(float)
    offsets = np.array([[dz, dy, dx] for dz in (-0.5, 0.5) for dy in (-0.5, 0.5) for dx in (-0.5, 0.5)])
    corners = np.unique((zyx[:, None, :] + offsets[None]).reshape(-1, 3), axis=0) * np.array(spacing[::-1])
    from scipy.spatial.distance import pdist

    return float(np.sqrt(pdist(corners, "sqeuclidean").max()))


@pytest.mark.parametrize("all_pairs_max_points", [0, 1500])
@pytest.mark.parametrize("seed", [0, 1])
def test_max_3d_diameter_equals_all_corner_pairs(seed: int, all_pairs_max_points: int, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Both ways of taking the 3D diameter (all candidate pairs, or hull vertices first) are exact."""
    import rano.measure

    monkeypatch.setattr(rano.measure, "_ALL_PAIRS_MAX_POINTS", all_pairs_max_points)
    mask = _random_blobs(seed)
    spacing = (0.8, 0.6, 1.5)
    img = sitk.GetImageFromArray(mask)
    img.SetSpacing(spacing)
    labels = label_components(img, min_volume_mm3=0.0)
    arr = sitk.GetArrayFromImage(labels)
    for m in measure_lesions(labels):
        expected = brute_force_3d_diameter(arr == m.label, spacing)
        assert m.max_3d_diameter_mm == pytest.approx(expected, abs=1e-9)


def test_perpendicular_is_longest_perpendicular_chord() -> None:
    """Brute force: sample chords perpendicular to the LD across the hull of the LD slice."""
    mask = np.zeros((3, 30, 30), np.uint8)
    mask[1, 5:12, 3:25] = 1  # a 22 x 7 voxel bar with a bump
    mask[1, 12:16, 8:12] = 1
    mask[0, 8:10, 8:10] = 1
    (m,) = measure_lesions_array(mask, (1.0, 1.0, 1.0))
    assert m.ld_slice_index == 1
    assert m.longest_diameter_mm == pytest.approx(math.hypot(22, 7))  # corner (2.5, 4.5) to (24.5, 11.5)
    # Perpendicular by brute force: sample points along many perpendicular lines and keep those
    # inside the hull of the slice's voxel corners (half-plane test from qhull's facet equations).
    from scipy.spatial import ConvexHull

    ys, xs = np.nonzero(mask[1])
    corners = np.concatenate(
        [np.column_stack([xs + dx, ys + dy]) for dx in (-0.5, 0.5) for dy in (-0.5, 0.5)]
    )
    equations = ConvexHull(corners).equations
    a, b = (np.array(p)[:2] for p in m.ld_endpoints_mm)
    u = (b - a) / np.linalg.norm(b - a)
    n = np.array([-u[1], u[0]])
    s = np.linspace(-30, 30, 6001)
    best = 0.0
    for t in np.linspace(0, np.linalg.norm(b - a), 801):
        pts = a + t * u + s[:, None] * n
        inside = (pts @ equations[:, :2].T + equations[:, 2] <= 1e-9).all(axis=1)
        if inside.any():
            best = max(best, s[inside].max() - s[inside].min())
    assert m.perpendicular_diameter_mm == pytest.approx(best, abs=0.02)


def test_intensity_statistics_match_numpy() -> None:
    rng = np.random.default_rng(3)
    mask = np.zeros((10, 20, 20), np.uint8)
    mask[2:8, 4:15, 5:16] = 1
    image = rng.normal(100, 15, mask.shape).astype(np.float32)
    (m,) = measure_lesions_array(mask, (1.0, 1.0, 2.0), image=image)
    vals = image[mask == 1].astype(np.float64)
    assert m.intensity_mean == pytest.approx(vals.mean())
    assert m.intensity_sd == pytest.approx(vals.std())
    assert (m.intensity_min, m.intensity_max) == (pytest.approx(vals.min()), pytest.approx(vals.max()))
    (no_image,) = measure_lesions_array(mask, (1.0, 1.0, 2.0))
    assert no_image.intensity_mean is None


def test_label_components_26_connectivity_min_volume_and_order() -> None:
    mask = np.zeros((6, 10, 10), np.uint8)
    mask[1, 1, 1] = mask[2, 2, 2] = 1  # corner neighbours: one component under 26-connectivity
    mask[4:6, 6:9, 6:9] = 1  # 18 voxels
    mask[0, 8, 0] = 1  # isolated voxel: 1 mm^3, dropped at 5 mm^3
    out = label_components_array(mask, (1.0, 1.0, 1.0), 5.0)
    assert set(np.unique(out)) == {0, 1}  # the 2-voxel pair (2 mm^3) is also dropped
    out = label_components_array(mask, (1.0, 1.0, 1.0), 2.0)
    assert out[1, 1, 1] == out[2, 2, 2] == 1 and out[4, 6, 6] == 2 and out[0, 8, 0] == 0
    img = sitk.GetImageFromArray(mask)
    img.SetSpacing((2.0, 2.0, 2.0))  # 8 mm^3 voxels: all survive at 5 mm^3
    labelled = sitk.GetArrayFromImage(label_components(img, 5.0))
    assert labelled.max() == 3 and labelled[0, 8, 0] == 1  # raster order: the z=0 voxel comes first
    # Deterministic: the same mask always gets the same labels.
    assert np.array_equal(labelled, sitk.GetArrayFromImage(label_components(img, 5.0)))


@settings(max_examples=40)
@given(
    seed=st.integers(0, 2**32 - 1),
    shape=st.tuples(st.integers(1, 12), st.integers(1, 14), st.integers(1, 16)),
    density=st.floats(0.05, 0.6),
)
def test_components_and_boxes_equal_simpleitk_and_scipy(
    seed: int, shape: tuple[int, int, int], density: float
) -> None:
    """Oracles: SimpleITK's and SciPy's 26-connected labelling (same raster numbering), find_objects."""
    mask = np.random.default_rng(seed).random(shape) < density
    ours = _raw_components(mask.view(np.uint8))
    simpleitk = sitk.GetArrayFromImage(
        sitk.ConnectedComponent(sitk.GetImageFromArray(mask.view(np.uint8)), True)
    )
    scipy_labels, _ = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    assert np.array_equal(ours, simpleitk) and np.array_equal(ours, scipy_labels)
    assert _label_boxes(ours) == ndimage.find_objects(ours)
    # Labels as given, with gaps (label 2 absent): None where find_objects has None.
    gapped = np.where(ours > 1, ours + 1, ours)
    assert _label_boxes(gapped) == ndimage.find_objects(gapped)


@pytest.mark.parametrize("shape", [(1, 1, 6), (1, 6, 1), (6, 1, 1)])
def test_components_of_a_line_of_voxels(shape: tuple[int, int, int]) -> None:
    """A line with three runs: cc3d 4.1.1 raises on it (found by the property test above)."""
    mask = np.array([0, 1, 0, 1, 0, 1], dtype=np.uint8).reshape(shape)
    assert np.array_equal(_raw_components(mask).ravel(), [0, 1, 0, 2, 0, 3])
    lesions = measure_lesions_array(
        mask, (1.0, 1.0, 1.0), settings=ResponseSettings(min_lesion_volume_mm3=0.0)
    )
    assert [m.voxel_count for m in lesions] == [1, 1, 1]


def test_binary_masks_are_split_labelled_masks_kept() -> None:
    mask = np.zeros((8, 20, 20), np.uint8)
    mask[2:6, 2:8, 2:8] = 1
    mask[2:6, 12:18, 12:18] = 1
    assert [m.label for m in measure_lesions_array(mask, (1, 1, 1))] == [1, 2]
    labelled = mask.copy()
    labelled[2:6, 12:18, 12:18] = 4  # labelled input: label values are lesions as given
    assert [m.label for m in measure_lesions_array(labelled, (1, 1, 1))] == [1, 4]
    merged = mask.copy()
    merged[mask == 1] = 3
    (one,) = measure_lesions_array(merged, (1, 1, 1))
    assert one.label == 3 and one.voxel_count == 2 * 4 * 36


@pytest.mark.parametrize(
    ("ld", "perp", "slices", "spacing", "measurable", "words"),
    [
        (10.0, 5.0, 2, 1.0, True, None),  # section 2: LD >= 10, perpendicular >= 5, >= 2 slices
        (9.9, 8.0, 5, 1.0, False, "below the 10.0 mm"),
        (15.0, 4.9, 5, 1.0, False, "perpendicular"),
        (15.0, 8.0, 1, 1.0, False, "slice"),
        (11.0, 8.0, 3, 6.0, False, "12.0 mm"),  # section 2: slice spacing > 5 mm -> 2 x spacing
        (12.0, 8.0, 3, 6.0, True, None),
        (10.0, 8.0, 3, 5.0, True, None),
    ],
)
def test_measurability_rules(ld, perp, slices, spacing, measurable, words) -> None:
    ok, reason = measurability(ld, perp, slices, spacing, ResponseSettings())
    assert ok is measurable
    if words is None:
        assert reason is None
    else:
        assert words in reason


def test_small_and_single_slice_lesions_are_not_measurable() -> None:
    mask = np.zeros((10, 40, 40), np.uint8)
    mask[5, 5:25, 5:25] = 1  # 20 mm square on one slice
    mask[2:6, 30:36, 30:36] = 1  # 6 mm cube
    small, single = measure_lesions_array(mask, (1, 1, 1))  # raster order: the cube starts at z=2
    assert not single.measurable and "slice" in single.not_measurable_reason
    assert not small.measurable and "LD 8.5 mm" in small.not_measurable_reason  # 6 mm square: diagonal


def test_to_dict_is_json_ready() -> None:
    img = ellipsoid_image((6, 6, 6), size_xyz=(20, 20, 20))
    (m,) = measure_lesions(img, img)
    data = json.loads(json.dumps(m.to_dict()))
    assert data["ld_endpoints_mm"][0] == list(m.ld_endpoints_mm[0])
    assert data["volume_mm3"] == m.volume_mm3 and data["intensity_max"] == 1.0


def test_empty_mask_gives_no_lesions() -> None:
    assert measure_lesions_array(np.zeros((4, 5, 6), np.uint8), (1, 1, 1)) == []


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: measure_lesions_array(np.zeros((5, 5), np.uint8), (1, 1, 1)), "3D"),
        (lambda: measure_lesions_array(np.full((3, 3, 3), 0.5), (1, 1, 1)), "whole numbers"),
        (lambda: measure_lesions_array(np.full((3, 3, 3), -1), (1, 1, 1)), ">= 0"),
        (lambda: measure_lesions_array(np.ones((3, 3, 3), np.uint8), (1, 0, 1)), "spacing"),
        (
            lambda: measure_lesions_array(
                np.ones((3, 3, 3), np.uint8), (1, 1, 1), direction=(1, 0, 0, 0, 2, 0, 0, 0, 1)
            ),
            "orthonormal",
        ),
        (
            lambda: measure_lesions_array(np.ones((3, 3, 3), np.uint8), (1, 1, 1), image=np.ones((3, 3, 4))),
            "shape",
        ),
        (lambda: measure_lesions(sitk.Image(4, 4, sitk.sitkUInt8)), "3D"),
    ],
)
def test_bad_input_raises_geometry_error(call, message: str) -> None:
    with pytest.raises(GeometryError, match=message):
        call()


def test_image_on_another_grid_is_rejected() -> None:
    labels = sitk.Image(8, 8, 8, sitk.sitkUInt8)
    image = sitk.Image(8, 8, 8, sitk.sitkFloat32)
    image.SetOrigin((1.0, 0.0, 0.0))
    with pytest.raises(GeometryError, match="another grid"):
        measure_lesions(labels, image)


def test_geometry_roundtrip() -> None:
    img = sitk.Image(4, 5, 6, sitk.sitkUInt8)
    img.SetSpacing((0.5, 0.6, 2.0))
    img.SetOrigin((1, 2, 3))
    g = Geometry.of(img)
    idx = np.array([[1.0, 2.0, 3.0]])
    assert np.allclose(g.to_physical(idx)[0], img.TransformContinuousIndexToPhysicalPoint((1.0, 2.0, 3.0)))


def test_ld_slice_of_a_sphere_is_its_central_slice() -> None:
    """Several slices share the largest LD; the caliper goes on the largest cross-section."""
    z, y, x = np.ogrid[:41, :41, :41]
    mask = ((x - 20) ** 2 + (y - 20) ** 2 + (z - 20) ** 2 <= 100).astype(np.uint8)
    (m,) = measure_lesions_array(mask, (1.0, 1.0, 1.0))
    assert m.ld_slice_index == 20
    assert m.ld_endpoints_mm[0][2] == 20.0


def test_binary_input_numbers_lesions_like_label_components() -> None:
    """Measuring a binary mask gives the labels label_components() would give (small ones dropped)."""
    mask = np.zeros((12, 30, 30), np.uint8)
    mask[1, 1, 1] = 1  # 1 mm^3: dropped at the default 5 mm^3
    mask[2:6, 3:9, 3:9] = 1
    mask[0:3, 20:22, 20:22] = 1  # 12 mm^3
    mask[7:11, 15:25, 4:12] = 1
    img = sitk.GetImageFromArray(mask)
    direct = measure_lesions(img)
    via_labels = measure_lesions(label_components(img, 5.0), relabel=False)
    assert [(m.label, m.voxel_count, m.longest_diameter_mm) for m in direct] == [
        (m.label, m.voxel_count, m.longest_diameter_mm) for m in via_labels
    ]
    assert [m.label for m in direct] == [1, 2, 3]
