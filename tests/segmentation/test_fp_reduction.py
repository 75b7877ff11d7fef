"""False-positive reduction: features against independent computations, rules on analytic shapes,
config parsing, and the stage inside segment_image."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage as ndi

from rano.measure import label_components
from segmentation.errors import ModelConfigError
from segmentation.fp_reduction import (
    apply_rules,
    brain_mask,
    component_features,
    has_skull,
    midsagittal_plane,
    objectness_at,
    rules_that_reject,
    split_joined,
)
from segmentation.inference import InferenceOptions, segment_image
from segmentation.model import FpReductionConfig, LoadedModel, ModelConfig
from segmentation.probability import quantise, to_float

# --------------------------------------------------------------------------------------------------
# Synthetic heads: an ellipsoid brain of intensity 1 (seeded noise) on a coarse grid
# --------------------------------------------------------------------------------------------------

BRAIN_SEMI_AXES_MM = (60.0, 75.0, 55.0)  # x, y, z: distinct, so the principal axes are defined


def _image(
    array_zyx: np.ndarray, spacing: tuple[float, float, float], origin: tuple[float, ...]
) -> sitk.Image:
    image = sitk.GetImageFromArray(array_zyx)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    return image


class Head:
    """A brain ellipsoid centred at the physical origin, with physical coordinates of every voxel."""

    def __init__(
        self, spacing: tuple[float, float, float] = (2.0, 2.0, 2.0), margin_mm: float = 10.0
    ) -> None:
        self.spacing = spacing
        half = np.asarray(BRAIN_SEMI_AXES_MM) + margin_mm
        size = [int(np.ceil(2 * h / s)) + 1 for h, s in zip(half, spacing, strict=True)]
        self.origin = tuple(float(-h) for h in half)
        zi, yi, xi = np.meshgrid(*[np.arange(n) for n in size[::-1]], indexing="ij")
        self.x = self.origin[0] + xi * spacing[0]
        self.y = self.origin[1] + yi * spacing[1]
        self.z = self.origin[2] + zi * spacing[2]
        a, b, c = BRAIN_SEMI_AXES_MM
        self.brain = (self.x / a) ** 2 + (self.y / b) ** 2 + (self.z / c) ** 2 <= 1.0
        rng = np.random.default_rng(7)
        self.intensity = np.where(self.brain, 1.0, 0.0) + rng.normal(0.0, 0.02, self.brain.shape)
        self.labels = np.zeros(self.brain.shape, dtype=np.uint32)

    def add(self, component: np.ndarray, value: float = 1.6) -> int:
        label = int(self.labels.max()) + 1
        self.labels[component] = label
        self.intensity[component] = value
        return label

    def images(self) -> tuple[sitk.Image, sitk.Image, sitk.Image]:
        return (
            _image(self.intensity.astype(np.float32), self.spacing, self.origin),
            _image(self.labels, self.spacing, self.origin),
            _image(self.brain.astype(np.uint8), self.spacing, self.origin),
        )

    def features(self, config: FpReductionConfig | None = None) -> dict[int, Any]:
        image, labels, brain = self.images()
        return {f.label: f for f in component_features(image, labels, brain, config or FpReductionConfig())}


def _ball(head: Head, centre: tuple[float, float, float], radius: float) -> np.ndarray:
    return (head.x - centre[0]) ** 2 + (head.y - centre[1]) ** 2 + (head.z - centre[2]) ** 2 <= radius**2


# --------------------------------------------------------------------------------------------------
# Rules on analytic shapes
# --------------------------------------------------------------------------------------------------


def test_a_thin_long_tube_is_rejected_and_a_sphere_of_the_same_volume_kept() -> None:
    # 1 mm grid: a 1.5 mm radius vessel is three voxels across (at 2 mm it would be one).
    head = Head(spacing=(1.0, 1.0, 1.0))
    tube = ((head.x + 25.0) ** 2 + (head.z - 5.0) ** 2 <= 1.5**2) & (np.abs(head.y) <= 25.0)
    tube_label = head.add(tube)
    radius = float(np.cbrt(3.0 * tube.sum() / (4.0 * np.pi)))  # same volume (1 mm^3 voxels)
    sphere = _ball(head, (25.0, 0.0, 5.0), radius)
    sphere_label = head.add(sphere)
    assert abs(int(sphere.sum()) - int(tube.sum())) < 0.1 * tube.sum()
    features = head.features()
    tube_f, sphere_f = features[tube_label], features[sphere_label]
    assert tube_f.elongation > 8.0 and sphere_f.elongation < 1.3
    assert tube_f.tubularity > 0.45 and sphere_f.tubularity < 0.2

    for config, rule in (
        (FpReductionConfig(max_elongation=4.0), "elongation"),
        (FpReductionConfig(max_tubularity=0.35), "tubularity"),
    ):
        _, labels, _ = head.images()
        result = apply_rules(labels, (tube_f, sphere_f), config)
        assert [(r.features.label, r.reason) for r in result.rejected] == [(tube_label, rule)]
        kept = sitk.GetArrayViewFromImage(result.labels)
        assert np.array_equal(kept > 0, sphere) and int(kept.max()) == 1  # relabelled 1..n


def test_a_falx_like_sheet_on_the_midline_is_rejected_and_the_same_sheet_lateral_kept() -> None:
    head = Head()
    sheet = (np.abs(head.y - 10.0) <= 10.0) & (np.abs(head.z - 20.0) <= 10.0)
    midline = head.add(sheet & (np.abs(head.x) < 1.0))  # one 2 mm voxel thick, on x = 0
    lateral = head.add(sheet & (np.abs(head.x - 26.0) < 1.0))  # 26 mm lateral
    features = head.features()
    assert features[midline].midline_distance_mm == pytest.approx(0.0, abs=0.5)
    assert features[lateral].midline_distance_mm == pytest.approx(26.0, abs=0.5)
    assert features[midline].midline_width_mm == pytest.approx(2.0, abs=0.5)  # one voxel thick
    config = FpReductionConfig(midline_distance_mm=5.0, midline_max_width_mm=6.0)
    assert rules_that_reject(features[midline], config) == ("midline",)
    assert rules_that_reject(features[lateral], config) == ()
    # A blob on the midline wider than the width limit (a lesion astride the midline) is not the falx.
    assert rules_that_reject(replace(features[midline], midline_width_mm=12.0), config) == ()


def test_a_component_hugging_the_brain_surface_is_rejected_and_a_deep_one_kept() -> None:
    head = Head()
    a, b, c = BRAIN_SEMI_AXES_MM
    radial = np.sqrt((head.x / a) ** 2 + (head.y / b) ** 2 + (head.z / c) ** 2)
    # A patch of the outer 3 mm under the top of the brain (dura, a cortical vein on the surface).
    hugging = head.add(head.brain & (radial > 1.0 - 3.0 / c) & (head.z > 45.0) & (np.abs(head.x) < 15.0))
    deep = head.add(_ball(head, (20.0, 0.0, 0.0), 6.0))
    features = head.features()
    # The distance transform measures to the nearest voxel outside: up to a voxel (2 mm) more.
    assert features[hugging].depth_mm <= 5.0
    assert features[deep].depth_mm > 30.0
    config = FpReductionConfig(min_depth_mm=8.0)
    assert rules_that_reject(features[hugging], config) == ("surface",)
    assert rules_that_reject(features[deep], config) == ()
    # keep_volume_mm3 protects a large component whatever the rules say.
    protect = FpReductionConfig(min_depth_mm=8.0, keep_volume_mm3=features[hugging].volume_mm3)
    assert rules_that_reject(features[hugging], protect) == ()


def test_contrast_features_and_rules() -> None:
    head = Head()
    faint = head.add(_ball(head, (-20.0, 10.0, 0.0), 6.0), value=1.05)
    bright = head.add(_ball(head, (20.0, 10.0, 0.0), 6.0), value=1.8)
    features = head.features()
    # Shell and brain are the brain's intensity 1.0 (noise sd 0.02): ratios equal the set values.
    assert features[faint].contrast_to_shell == pytest.approx(1.05, abs=0.01)
    assert features[bright].contrast_to_brain == pytest.approx(1.8, abs=0.02)
    config = FpReductionConfig(min_shell_contrast=1.2)
    assert rules_that_reject(features[faint], config) == ("shell_contrast",)
    assert rules_that_reject(features[bright], config) == ()
    # Every rule that holds is kept for traceability; the first in FP_RULES order is the reason.
    both = FpReductionConfig(min_shell_contrast=1.2, min_brain_contrast=1.2)
    assert rules_that_reject(features[faint], both) == ("shell_contrast", "brain_contrast")


def test_a_component_mostly_outside_the_brain_is_rejected_and_a_lesion_at_the_surface_kept() -> None:
    head = Head(margin_mm=20.0)
    a, b, c = BRAIN_SEMI_AXES_MM
    # Two boxes across the top of the brain: one mostly above it (orbital or scalp fat, marrow), one
    # mostly below (a cortical lesion bulging out of the brain).
    above = head.add(
        (np.abs(head.x - 20.0) < 6.0) & (np.abs(head.y) < 6.0) & (np.abs(head.z - c - 4.0) < 6.0)
    )
    below = head.add(
        (np.abs(head.x + 20.0) < 6.0) & (np.abs(head.y) < 6.0) & (np.abs(head.z - c + 8.0) < 6.0)
    )
    features = head.features()
    for label in (above, below):  # the share of the component's (bright) voxels in the brain, by numpy
        expected = float((head.brain & (head.labels == label)).sum() / (head.labels == label).sum())
        assert features[label].brain_fraction == pytest.approx(expected, abs=1e-9)
    assert features[above].brain_fraction < 0.3 < 0.7 < features[below].brain_fraction
    config = FpReductionConfig(min_brain_fraction=0.5)
    assert rules_that_reject(features[above], config) == ("outside_brain",)
    assert rules_that_reject(features[below], config) == ()
    # Without the feature (features made by hand: NaN) the rule does not fire.
    assert rules_that_reject(replace(features[above], brain_fraction=float("nan")), config) == ()


def _skull_head(seed: int = 3) -> tuple[sitk.Image, dict[str, np.ndarray]]:
    """A head around the ellipsoid brain, as an unstripped post-contrast T1 at 2 mm: brain 1.0 with a
    dark enclosed ventricle; CSF rim 2 mm (0.25), bone 6 mm (0.05) holding a 2 mm marrow band (0.7),
    scalp fat 4 mm (1.5), skin 2 mm (0.7); a bright fat ellipsoid under the front outside the bone (an
    orbit); and bright rods 6 mm across through the CSF and the bone, joining brain, marrow and scalp in
    a dozen places (where the tables are thinner than a voxel), which an opening by a voxel does not cut."""
    head = Head(margin_mm=24.0)
    a, b, c = BRAIN_SEMI_AXES_MM
    # Distance outside the brain surface (mm), from the brain's distance transform.
    out = ndi.distance_transform_edt(~head.brain, sampling=(2.0, 2.0, 2.0))
    rng = np.random.default_rng(seed)
    image = np.where(head.brain, 1.0, 0.0)
    ventricle = (head.x / 12.0) ** 2 + ((head.y + 5.0) / 25.0) ** 2 + (head.z / 10.0) ** 2 <= 1.0
    image[ventricle] = 0.25
    layers = {
        "csf": (out > 0) & (out <= 2.0),
        "bone": (out > 2.0) & (out <= 8.0),
        "marrow": (out > 4.0) & (out <= 6.0),
        "scalp": (out > 8.0) & (out <= 12.0),
        "skin": (out > 12.0) & (out <= 14.0),
    }
    for name, value in (("csf", 0.25), ("bone", 0.05), ("marrow", 0.7), ("scalp", 1.5), ("skin", 0.7)):
        image[layers[name]] = value
    orbit = ((head.x - 25.0) / 12.0) ** 2 + ((head.y - 60.0) / 14.0) ** 2 + ((head.z + 35.0) / 12.0) ** 2 <= 1
    orbit &= out > 4.0
    image[orbit] = 1.5
    # Bridges: where the CSF rim and the bone's tables are thinner than a voxel, the brain touches the
    # marrow and the scalp: radial rods 6 mm across from the brain surface out to the scalp.
    surface = np.argwhere(head.brain & ~ndi.binary_erosion(head.brain))
    points = np.stack([head.x, head.y, head.z], axis=-1)
    for z, y, x in surface[rng.choice(len(surface), 12, replace=False)]:
        start = np.asarray([head.x[z, y, x], head.y[z, y, x], head.z[z, y, x]])
        unit = start / np.linalg.norm(start)
        along = np.clip((points - start) @ unit, 0.0, 10.0)
        rod = np.linalg.norm(points - start - along[..., None] * unit, axis=-1) <= 3.0
        image[rod & ~head.brain] = 0.9
    image = image + rng.normal(0.0, 0.02, image.shape)
    regions = {"brain": head.brain, "ventricle": ventricle, "orbit": orbit, **layers}
    return _image(image.astype(np.float32), head.spacing, head.origin), regions


def test_brain_mask_of_an_unstripped_head_leaves_out_scalp_marrow_and_orbit() -> None:
    image, regions = _skull_head()
    head = sitk.Cast(image > 0.03, sitk.sitkUInt8)  # the whole head (the bone too), as preprocessing gives
    mask = sitk.GetArrayFromImage(brain_mask(image, head)) > 0
    brain = regions["brain"]
    dice = 2.0 * (mask & brain).sum() / (mask.sum() + brain.sum())
    # The mask's surface is the brain's, give or take the 2 mm CSF rim it may take in.
    assert dice >= 0.95
    assert (mask & brain).sum() / brain.sum() >= 0.99
    assert mask[regions["ventricle"]].all()  # holes filled
    for name in ("scalp", "skin", "marrow", "orbit"):
        assert (mask & regions[name]).sum() / regions[name].sum() <= 0.01, name


def _stripped(image: sitk.Image, brain: np.ndarray) -> tuple[sitk.Image, sitk.Image]:
    """The skull-stripped image of a head and its head mask (the brain)."""
    stripped = sitk.GetImageFromArray((sitk.GetArrayFromImage(image) * brain).astype(np.float32))
    stripped.CopyInformation(image)
    return stripped, sitk.Cast(stripped > 0.03, sitk.sitkUInt8)


def test_the_skull_test_tells_a_head_from_a_stripped_brain() -> None:
    image, regions = _skull_head()
    assert has_skull(image, sitk.Cast(image > 0.03, sitk.sitkUInt8))
    assert not has_skull(*_stripped(image, regions["brain"]))


def test_brain_mask_of_a_stripped_brain_is_the_brain() -> None:
    image, regions = _skull_head()
    brain = regions["brain"]
    mask = sitk.GetArrayFromImage(brain_mask(*_stripped(image, brain))) > 0
    assert 2.0 * (mask & brain).sum() / (mask.sum() + brain.sum()) >= 0.99
    assert mask[regions["ventricle"]].all()


@pytest.mark.parametrize("stripped", [True, False], ids=["stripped", "with skull"])
def test_a_large_cystic_lesion_at_the_brain_surface_keeps_its_wall_in_the_brain(stripped: bool) -> None:
    # The real BraTS lesion's shape: a 4 mm enhancing wall around a dark cyst 40 mm across, open to the
    # surface; the brain's core lies far from the wall's outer side, which must stay brain.
    image, regions = _skull_head()
    head = Head(margin_mm=24.0)
    r = np.sqrt((head.x - 30.0) ** 2 + head.y**2 + (head.z - 30.0) ** 2)
    wall, cyst = head.brain & (r > 20.0) & (r <= 24.0), head.brain & (r <= 20.0)
    array = sitk.GetArrayFromImage(image)
    array[wall], array[cyst] = 1.8, 0.3
    cystic = sitk.GetImageFromArray(array)
    cystic.CopyInformation(image)
    if stripped:
        cystic, head_mask = _stripped(cystic, regions["brain"])
    else:
        head_mask = sitk.Cast(cystic > 0.03, sitk.sitkUInt8)
    assert has_skull(cystic, head_mask) is not stripped
    brain = brain_mask(cystic, head_mask)
    mask = sitk.GetArrayFromImage(brain) > 0
    # An opening or the core's reach takes a little of the wall where it is the brain's surface; the dark
    # cyst, open to the surface, is no brain. The lesion's brain fraction counts its bright voxels (the
    # wall): the outside_brain rule keeps it.
    assert mask[wall].mean() >= 0.85
    assert mask[cyst].mean() < 0.5
    labels = _image((wall | cyst).astype(np.uint32), head.spacing, head.origin)
    (lesion,) = component_features(cystic, labels, brain, FpReductionConfig())
    assert lesion.brain_fraction == pytest.approx(float(mask[wall].mean()), abs=1e-9)
    assert rules_that_reject(lesion, FpReductionConfig(min_brain_fraction=0.5)) == ()


# --------------------------------------------------------------------------------------------------
# Features against independent computations
# --------------------------------------------------------------------------------------------------


def test_mean_probability_is_the_maps_mean_over_each_component_float_or_compact() -> None:
    head = Head()
    first = head.add(_ball(head, (-20.0, 10.0, 0.0), 6.0))
    second = head.add(_ball(head, (20.0, -10.0, 5.0), 4.0))
    image, labels, brain = head.images()
    rng = np.random.default_rng(3)
    probability = rng.uniform(0.0, 1.0, head.brain.shape).astype(np.float32)
    prob_image = _image(probability, head.spacing, head.origin)
    compact_image = _image(quantise(probability), head.spacing, head.origin)
    for prob, tolerance in ((prob_image, 1e-6), (compact_image, 1.0 / 65535)):
        features = {
            f.label: f
            for f in component_features(image, labels, brain, FpReductionConfig(), probability=prob)
        }
        for label in (first, second):
            expected = float(probability[head.labels == label].astype(np.float64).mean())
            assert features[label].mean_probability == pytest.approx(expected, abs=tolerance)
    # Without the map the feature is NaN, and written as null (valid JSON).
    without = head.features()[first]
    assert math.isnan(without.mean_probability) and without.to_dict()["mean_probability"] is None


def test_elongation_and_centroid_match_numpy_on_an_oblique_anisotropic_grid() -> None:
    rng = np.random.default_rng(3)
    shape_zyx = (24, 40, 36)
    spacing = (1.5, 2.0, 3.0)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    direction = q * np.sign(np.linalg.det(q))
    zi, yi, xi = np.meshgrid(*[np.arange(n) for n in shape_zyx], indexing="ij")
    blob = ((xi - 18) / 8.0) ** 2 + ((yi - 20) / 15.0) ** 2 + ((zi - 12) / 5.0) ** 2 <= 1.0
    image = sitk.GetImageFromArray(np.where(blob, 2.0, 1.0).astype(np.float32))
    labels = sitk.GetImageFromArray(blob.astype(np.uint32))
    brain = sitk.GetImageFromArray(np.ones(shape_zyx, np.uint8))
    for im in (image, labels, brain):
        im.SetSpacing(spacing)
        im.SetDirection(tuple(direction.ravel()))
        im.SetOrigin((10.0, -20.0, 5.0))
    (f,) = component_features(image, labels, brain, FpReductionConfig(sigmas_mm=(3.0,)))
    # Independent: SimpleITK maps each index to its physical point.
    pts = np.array(
        [image.TransformIndexToPhysicalPoint([int(i), int(j), int(k)]) for k, j, i in np.argwhere(blob)]
    )
    voxel = direction @ np.diag(np.square(spacing) / 12.0) @ direction.T
    eig = np.linalg.eigvalsh(np.cov(pts, rowvar=False) + voxel)
    assert f.elongation == pytest.approx(np.sqrt(eig[-1] / eig[0]), rel=1e-9)
    assert f.centroid_mm == pytest.approx(tuple(pts.mean(axis=0)), abs=1e-9)
    assert f.volume_mm3 == pytest.approx(blob.sum() * np.prod(spacing))
    assert sorted(f.extents_mm, reverse=True) == pytest.approx(list(np.sqrt(12.0 * eig[::-1])), rel=1e-9)


def test_depth_matches_scipy_distance_transform_with_spacing() -> None:
    head = Head(spacing=(2.0, 2.0, 3.0))
    lesion = head.add(_ball(head, (10.0, -20.0, 10.0), 7.0))
    f = head.features()[lesion]
    edt = ndi.distance_transform_edt(head.brain, sampling=(3.0, 2.0, 2.0))
    assert f.depth_mm == pytest.approx(float(edt[head.labels == lesion].max()), abs=1e-6)


def test_objectness_at_equals_simpleitks_filter_at_every_voxel_of_an_anisotropic_grid() -> None:
    # Oracle: SimpleITK's ObjectnessMeasure on the whole image, the border voxels included.
    rng = np.random.default_rng(11)
    array = rng.normal(0.0, 0.3, size=(22, 26, 30)).astype(np.float32)
    zi, yi, xi = np.meshgrid(*[np.arange(n) for n in array.shape], indexing="ij")
    array[(yi - 13) ** 2 + (zi - 11) ** 2 <= 4] += 2.0  # a bright tube along x, to the border
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.9, 1.1, 1.4))
    smooth = sitk.SmoothingRecursiveGaussian(image, 1.5) * 1.5**2
    expected = sitk.GetArrayFromImage(
        sitk.ObjectnessMeasure(
            smooth,
            alpha=0.5,
            beta=0.5,
            gamma=0.1,
            scaleObjectnessMeasure=False,
            objectDimension=1,
            brightObject=True,
        )
    )
    points = np.argwhere(np.ones(array.shape, dtype=bool))
    got = objectness_at(
        sitk.GetArrayViewFromImage(smooth), points, np.asarray(image.GetSpacing())[::-1], gamma=0.1
    )
    assert np.abs(got - expected[tuple(points.T)]).max() < 1e-5  # the filter works in float32
    assert (expected > 0.1).mean() > 0.02 and expected[11, 13, 15] > 0.5  # the tube and more respond


def test_shell_contrast_matches_a_shell_from_the_whole_image_distance_transform() -> None:
    head = Head(spacing=(1.5, 2.0, 2.5))
    lesion = head.add(_ball(head, (15.0, 5.0, -10.0), 6.0), value=1.6)
    neighbour = head.add(_ball(head, (15.0, 14.0, -10.0), 4.5), value=3.0)  # within the shell: excluded
    head.intensity += np.where(head.brain, 0.004 * head.x, 0.0)  # a gradient: the shell's extent matters
    config = FpReductionConfig()
    f = head.features(config)[lesion]
    dist = ndi.distance_transform_edt(head.labels != lesion, sampling=head.spacing[::-1])
    shell = (dist > 0) & (dist <= config.shell_mm) & head.brain & (head.labels == 0)
    assert neighbour and (dist[head.labels == neighbour] <= config.shell_mm).any()
    expected = head.intensity[head.labels == lesion].mean() / head.intensity[shell].mean()
    assert f.contrast_to_shell == pytest.approx(expected, rel=1e-6)


def test_midsagittal_plane_of_a_rotated_head() -> None:
    head = Head()
    _, _, brain = head.images()
    plane = midsagittal_plane(brain)
    assert np.abs(plane.normal) == pytest.approx((1.0, 0.0, 0.0), abs=1e-3)
    assert plane.point_mm == pytest.approx((0.0, 0.0, 0.0), abs=1.0)
    # The same brain yawed 8 degrees about z: the normal follows the head, not the image axes.
    angle = np.deg2rad(8.0)
    rotation = sitk.Euler3DTransform((0.0, 0.0, 0.0), 0.0, 0.0, float(angle))
    yawed = sitk.Resample(brain, brain, rotation, sitk.sitkNearestNeighbor, 0)
    normal = np.asarray(midsagittal_plane(yawed).normal)
    expected = np.asarray(rotation.GetInverse().TransformVector((1.0, 0.0, 0.0), (0.0, 0.0, 0.0)))
    assert np.degrees(np.arccos(min(1.0, abs(float(normal @ expected))))) < 1.0


# --------------------------------------------------------------------------------------------------
# Config parsing
# --------------------------------------------------------------------------------------------------


def test_config_absent_means_disabled_and_round_trips(small_config_dict) -> None:  # type: ignore[no-untyped-def]
    _config_dict = small_config_dict
    assert ModelConfig.from_dict(_config_dict()).postprocessing.fp_reduction is None
    assert "fp_reduction" not in ModelConfig.from_dict(_config_dict()).to_dict()["postprocessing"]
    rules = {"max_elongation": 4.0, "midline_distance_mm": 5, "min_depth_mm": 3.0, "sigmas_mm": [1.0, 2.5]}
    cfg = ModelConfig.from_dict(_config_dict(fp_reduction=rules))
    fp = cfg.postprocessing.fp_reduction
    assert fp == FpReductionConfig(
        max_elongation=4.0, midline_distance_mm=5, min_depth_mm=3.0, sigmas_mm=(1.0, 2.5)
    )
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    # Judged after rim completion: written out when on, left out (the default) when off.
    assert "after_rim_completion" not in cfg.to_dict()["postprocessing"]["fp_reduction"]
    cfg = ModelConfig.from_dict(
        _config_dict(fp_reduction={**rules, "after_rim_completion": True}, rim_completion={})
    )
    assert (
        cfg.postprocessing.fp_reduction is not None and cfg.postprocessing.fp_reduction.after_rim_completion
    )
    assert cfg.to_dict()["postprocessing"]["fp_reduction"]["after_rim_completion"] is True
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    ("fp_reduction", "field"),
    [
        ({"max_elongation": 0.5}, "max_elongation"),
        ({"max_elongation": True}, "max_elongation"),
        ({"max_tubularity": 1.5}, "max_tubularity"),
        ({"min_brain_fraction": 1.2}, "min_brain_fraction"),
        ({"min_brain_fraction": -0.1}, "min_brain_fraction"),
        ({"midline_distance_mm": -1}, "midline_distance_mm"),
        ({"midline_distance_mm": "5"}, "midline_distance_mm"),
        ({"min_depth_mm": 0}, "min_depth_mm"),
        ({"min_shell_contrast": -0.1}, "min_shell_contrast"),
        ({"keep_volume_mm3": float("nan")}, "keep_volume_mm3"),
        ({"sigmas_mm": []}, "sigmas_mm"),
        ({"sigmas_mm": [1.0, 0.0]}, "sigmas_mm"),
        ({"shell_mm": 0}, "shell_mm"),
        ({"split_radius_mm": 0}, "split_radius_mm"),
        ({"split_min_piece_mm3": -1.0}, "split_min_piece_mm3"),
        ({"midline_max_width_mm": 5.0}, "midline_max_width_mm"),
        ({"max_elongaton": 4.0}, "unknown keys"),
        ([4.0], "must be a mapping"),
        ({"after_rim_completion": 1}, "after_rim_completion must be true or false"),
        ({"after_rim_completion": True}, "after_rim_completion needs a postprocessing.rim_completion"),
    ],
)
def test_bad_config_values_are_refused_with_the_field_named(  # type: ignore[no-untyped-def]
    fp_reduction: Any, field: str, small_config_dict
) -> None:
    _config_dict = small_config_dict
    with pytest.raises(ModelConfigError, match=field):
        ModelConfig.from_dict(_config_dict(fp_reduction=fp_reduction))


# --------------------------------------------------------------------------------------------------
# The stage in segment_image
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vessel_and_lesion() -> tuple[sitk.Image, np.ndarray, np.ndarray]:
    head = Head()
    vessel = ((head.x + 25.0) ** 2 + (head.z - 5.0) ** 2 <= 2.5**2) & (np.abs(head.y) <= 35.0)
    lesion = _ball(head, (25.0, 0.0, 5.0), 8.0)
    head.add(vessel, 1.8)
    head.add(lesion, 1.8)
    image, _, _ = head.images()
    return sitk.Cast(image * 500.0, sitk.sitkInt16), vessel, lesion


def test_segment_image_with_the_stage_drops_a_vessel_and_keeps_the_lesion(  # type: ignore[no-untyped-def]
    vessel_and_lesion, threshold_model
) -> None:
    image, vessel, lesion = vessel_and_lesion

    def _model(**post: Any) -> LoadedModel:
        return threshold_model(0.75, **post)

    options = InferenceOptions(device="cpu", backend="torch")
    without = segment_image(image, _model(), options)
    found = sitk.GetArrayViewFromImage(without.labels)
    assert len(without.lesions) == 2 and found[vessel].all() and found[lesion].all()
    assert without.rejected == () and "fp_reduction" not in without.timings_s

    staged = segment_image(image, _model(fp_reduction={"max_elongation": 4.0}), options)
    assert len(staged.lesions) == 1
    kept = sitk.GetArrayViewFromImage(staged.labels)
    assert kept[lesion].all() and not kept[vessel].any()
    assert np.array_equal(sitk.GetArrayViewFromImage(staged.mask), (kept > 0).astype(np.uint8))
    ((rejected),) = staged.rejected
    assert rejected.reason == "elongation" and rejected.features.elongation > 8.0
    assert rejected.to_dict()["features"]["volume_mm3"] == pytest.approx(vessel.sum() * 8.0, rel=0.1)
    assert "fp_reduction" in staged.timings_s
    # The kept lesion's measurement is the one the run without the stage made.
    big = max(without.lesions, key=lambda m: m.volume_mm3)
    assert staged.lesions[0].volume_mm3 == big.volume_mm3

    # keep_volume_mm3 protects the vessel: kept, and not described (the stage skips its features).
    protect = {"max_elongation": 4.0, "keep_volume_mm3": float(vessel.sum()) * 8.0 / 2.0}
    protected = segment_image(image, _model(fp_reduction=protect), options)
    assert len(protected.lesions) == 2 and protected.rejected == ()

    # The stage with no rule on changes nothing but its timing.
    idle = segment_image(image, _model(fp_reduction={}), options)
    assert np.array_equal(sitk.GetArrayViewFromImage(idle.labels), found)
    assert [m.to_dict() for m in idle.lesions] == [m.to_dict() for m in without.lesions]
    assert np.array_equal(found, sitk.GetArrayViewFromImage(label_components(without.mask, 5.0)))


def test_segment_image_with_a_classifier_rejects_the_vessel_and_reports_its_probability(  # type: ignore[no-untyped-def]
    vessel_and_lesion, threshold_model
) -> None:
    image, vessel, lesion = vessel_and_lesion
    # A classifier on elongation alone: odds fall by e^3 per e-fold of elongation around 3.
    classifier = {
        "inputs": ["log_elongation"], "mean": [float(np.log(3.0))], "scale": [1.0], "weights": [-3.0],
        "bias": 0.0, "min_probability": 0.5,
    }  # fmt: skip
    options = InferenceOptions(device="cpu", backend="torch")
    staged = segment_image(image, threshold_model(0.75, fp_reduction={"classifier": classifier}), options)
    kept = sitk.GetArrayViewFromImage(staged.labels)
    assert len(staged.lesions) == 1 and kept[lesion].all() and not kept[vessel].any()
    ((rejected),) = staged.rejected
    assert rejected.reason == "classifier" and rejected.rules == ("classifier",)
    expected = 1.0 / (1.0 + (rejected.features.elongation / 3.0) ** 3.0)  # the logistic written out
    assert rejected.probability == pytest.approx(expected, rel=1e-9)
    assert rejected.to_dict()["probability"] == pytest.approx(expected, abs=1e-4)


def test_the_pipeline_gives_the_stage_the_probability_map_it_drew_the_components_from(  # type: ignore[no-untyped-def]
    vessel_and_lesion, threshold_model
) -> None:
    image, vessel, lesion = vessel_and_lesion
    options = InferenceOptions(device="cpu", backend="torch", keep_probability=True)
    without = segment_image(image, threshold_model(0.75), options)
    assert without.probability is not None
    probability = to_float(sitk.GetArrayViewFromImage(without.probability))
    found = sitk.GetArrayViewFromImage(without.labels)
    # A classifier on the network's probability alone (its log-odds, weight 1: p is the mean
    # probability itself), with a threshold above every component's mean: both rejected, each with the
    # mean of the map over its voxels (the log-odds clip at 1e-4 keeps p at most 0.9999).
    classifier = {
        "inputs": ["probability_logit"], "mean": [0.0], "scale": [1.0], "weights": [1.0], "bias": 0.0,
        "min_probability": 0.99995,
    }  # fmt: skip
    staged = segment_image(image, threshold_model(0.75, fp_reduction={"classifier": classifier}), options)
    assert len(staged.lesions) == 0 and len(staged.rejected) == 2
    for rejected in staged.rejected:
        expected = float(probability[found == rejected.features.label].astype(np.float64).mean())
        assert rejected.features.mean_probability == pytest.approx(expected, abs=1e-6)
        assert rejected.probability == pytest.approx(min(expected, 1 - 1e-4), abs=1e-6)


# --------------------------------------------------------------------------------------------------
# Splitting joined components
# --------------------------------------------------------------------------------------------------


def _labels(head: Head, mask: np.ndarray) -> sitk.Image:
    return _image(mask.astype(np.uint32), head.spacing, head.origin)


def test_a_lesion_joined_to_a_vessel_splits_into_the_ball_and_the_vessel() -> None:
    head = Head(spacing=(1.0, 1.0, 1.5))  # anisotropic: the ball is in millimetres
    ball = _ball(head, (20.0, 0.0, 5.0), 7.0)
    vessel = ((head.x - 20.0) ** 2 + (head.z - 5.0) ** 2 <= 1.5**2) & (np.abs(head.y) <= 35.0)
    pieces = sitk.GetArrayFromImage(split_joined(_labels(head, ball | vessel), 3.0, 50.0))
    assert set(np.unique(pieces)) == {0, 1, 2, 3}  # the ball, and the vessel on either side of it
    core = np.bincount(pieces[ball]).argmax()
    assert pieces[ball].min() > 0 and np.mean(pieces[ball] == core) == 1.0  # the whole ball is one piece
    # The vessel's pieces: beyond 3 mm of the ball's surface.
    beyond = vessel & ~_ball(head, (20.0, 0.0, 5.0), 7.0 + 3.0 + 1.0)
    assert (pieces[beyond] != core).all() and (pieces[beyond] > 0).all()
    np.testing.assert_array_equal(pieces > 0, ball | vessel)


def test_split_leaves_whole_what_has_no_thin_part_or_no_core() -> None:
    head = Head()
    ball = _ball(head, (-20.0, 0.0, 0.0), 8.0)
    tube = ((head.x - 25.0) ** 2 + (head.z - 5.0) ** 2 <= 2.0**2) & (np.abs(head.y) <= 30.0)
    stub = ball | (((head.x + 20.0) ** 2 + head.z**2 <= 2.0**2) & (head.y >= 0) & (head.y <= 11.0))
    lab = np.zeros(head.brain.shape, np.uint32)
    lab[stub] = 1
    lab[tube] = 2
    pieces = sitk.GetArrayFromImage(split_joined(_image(lab, head.spacing, head.origin), 3.0, 50.0))
    # The ball with a short stub (3 mm beyond the reach of its core: under 50 mm^3) stays whole; the
    # tube, thinner than the ball everywhere, has no core and stays whole.
    np.testing.assert_array_equal(pieces, lab)
    # Only the listed components are split.
    joined = _labels(head, ball | (((head.x + 20.0) ** 2 + head.z**2 <= 2.0**2) & (np.abs(head.y) <= 40.0)))
    assert int(sitk.GetArrayFromImage(split_joined(joined, 3.0, 50.0, only=frozenset())).max()) == 1
    assert int(sitk.GetArrayFromImage(split_joined(joined, 3.0, 50.0)).max()) == 3


def test_the_stage_drops_the_vessel_of_a_joined_lesion_and_keeps_its_pieces_one_lesion(  # type: ignore[no-untyped-def]
    threshold_model,
) -> None:
    head = Head()
    lesion = _ball(head, (25.0, 0.0, 5.0), 8.0)
    vessel = ((head.x - 25.0) ** 2 + (head.z - 5.0) ** 2 <= 2.5**2) & (np.abs(head.y) <= 40.0)
    lobe = _ball(head, (25.0, 12.0, 5.0), 6.0)  # a second lobe, through a neck: the same lesion
    head.add(lesion | vessel | lobe, 1.8)
    image = sitk.Cast(head.images()[0] * 500.0, sitk.sitkInt16)
    options = InferenceOptions(device="cpu", backend="torch")
    rules = {"max_elongation": 3.0}
    whole = segment_image(image, threshold_model(0.75, fp_reduction=rules), options)
    assert not whole.lesions and whole.rejected[0].reason == "elongation"  # the joined blob is lost

    split = segment_image(
        image, threshold_model(0.75, fp_reduction={**rules, "split_radius_mm": 3.0}), options
    )
    kept = sitk.GetArrayViewFromImage(split.labels)
    assert len(split.lesions) == 1 and int(kept.max()) == 1
    assert kept[lesion].all() and kept[lobe].all()  # the two lobes: one lesion again
    far = vessel & (np.abs(head.y) > 25.0)
    assert not kept[far].any()
    assert {r.reason for r in split.rejected} == {"elongation"} and len(split.rejected) == 2
    # With no rule on, the pieces are all kept and merge back into the component the network drew.
    idle = segment_image(image, threshold_model(0.75, fp_reduction={"split_radius_mm": 3.0}), options)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(idle.labels) == 1, lesion | vessel | lobe)
