"""Rim completion: analytic cystic and solid lesions, vessels and neighbours, config parsing, and the stage
inside segment_image. Oracles: analytic balls and shells, and rano.measure on the analytic mask."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage as ndi

from rano.measure import measure_lesions
from segmentation.errors import ModelConfigError
from segmentation.inference import InferenceOptions, segment_image
from segmentation.model import ModelConfig, RimCompletionConfig
from segmentation.rim_completion import complete_rims, fill_holes

SPACING = (1.0, 1.0, 1.2)  # x, y, z: anisotropic, so millimetres and voxels differ along z


class Block:
    """A block of brain (intensity 1, seeded noise) on an anisotropic grid, centred at the origin."""

    def __init__(self, half_mm: float = 34.0) -> None:
        size = [int(2 * half_mm / s) + 1 for s in SPACING]
        self.origin = tuple(-half_mm for _ in range(3))
        zi, yi, xi = np.meshgrid(*[np.arange(n) for n in size[::-1]], indexing="ij")
        self.x, self.y, self.z = (self.origin[a] + i * SPACING[a] for a, i in ((0, xi), (1, yi), (2, zi)))
        self.brain = (
            (np.abs(self.x) < half_mm - 3) & (np.abs(self.y) < half_mm - 3) & (np.abs(self.z) < half_mm - 3)
        )
        self.intensity = np.where(self.brain, 1.0, 0.0) + np.random.default_rng(3).normal(
            0, 0.02, self.brain.shape
        )
        self.labels = np.zeros(self.brain.shape, dtype=np.uint32)

    def r(self, centre: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> np.ndarray:
        return np.sqrt((self.x - centre[0]) ** 2 + (self.y - centre[1]) ** 2 + (self.z - centre[2]) ** 2)

    def image(self, array: np.ndarray) -> sitk.Image:
        out = sitk.GetImageFromArray(array)
        out.SetSpacing(SPACING)
        out.SetOrigin(self.origin)
        return out

    def complete(self, config: RimCompletionConfig | None = None) -> tuple[np.ndarray, dict[int, float]]:
        result = complete_rims(
            self.image(self.intensity.astype(np.float32)),
            self.image(self.labels),
            self.image(self.brain.astype(np.uint8)),
            config or RimCompletionConfig(),
        )
        return sitk.GetArrayFromImage(result.labels), result.added_mm3


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float(np.count_nonzero(a & b)) / float(np.count_nonzero(a) + np.count_nonzero(b))


def _ld(block: Block, mask: np.ndarray) -> float:
    (m,) = measure_lesions(block.image(mask.astype(np.uint8)))
    return m.longest_diameter_mm


def test_a_cyst_outlined_inside_its_cavity_is_extended_to_the_outer_edge_of_its_rim() -> None:
    block = Block()
    r = block.r()
    block.intensity[r <= 16.0] = 1.8  # enhancing rim 2-3 mm thick (uneven: thicker on one side)...
    block.intensity[(r <= 13.0) | ((r <= 14.0) & (block.x < 0))] = 0.35  # ...around a cyst of fluid
    block.intensity[(r > 16.0) & (r <= 20.0)] = 0.85  # T1-dark oedema: never part of the lesion
    block.labels[r <= 6.0] = 1  # what a network trained on phantoms outlines: the cavity's inside
    truth = r <= 16.0
    labels, added = block.complete()
    assert set(np.unique(labels)) == {0, 1}
    assert _dice(labels == 1, truth) >= 0.97
    # The longest diameter reaches the rim's outer edge: as rano.measure measures the analytic lesion
    # (within a voxel), against 12 mm for the component the stage was given.
    assert _ld(block, labels == 1) == pytest.approx(_ld(block, truth), abs=1.0)
    assert _ld(block, truth) == pytest.approx(32.0, abs=1.5)
    voxel_mm3 = float(np.prod(SPACING))
    assert added[1] == pytest.approx(float(np.count_nonzero((labels == 1) & (r > 6.0))) * voxel_mm3)
    # Nothing of the oedema is taken.
    assert not (labels[(r > 17.0)] > 0).any()


def test_without_the_cavity_step_a_cyst_keeps_its_inside_only() -> None:
    block = Block()
    r = block.r()
    block.intensity[r <= 16.0] = 1.8
    block.intensity[r <= 13.0] = 0.35
    block.labels[r <= 4.0] = 1
    # The wall lies 9 mm out, beyond rim_mm of the small inside: without the cavity step
    # nothing enhancing is near it; with it, the fluid joins first and the wall is then next to it.
    labels, added = block.complete(RimCompletionConfig(max_cavity_intensity=None))
    assert added == {1: 0.0} and np.array_equal(labels == 1, r <= 4.0)
    labels, _ = block.complete()
    assert _dice(labels == 1, r <= 16.0) >= 0.97


def test_a_ring_lesion_found_whole_does_not_grow_into_the_csf_beside_it() -> None:
    """A component holding its wall and a large necrotic centre is dark on average, but its border is
    the bright wall: no cavity step, so the dark ventricle it touches is not taken."""
    block = Block()
    r = block.r()
    block.intensity[r <= 12.0] = 1.8
    block.intensity[r <= 10.0] = 0.3  # necrosis: most of the lesion's voxels
    ventricle = (
        (block.x > 11.0) & (block.x < 26.0) & (np.abs(block.y) < 4.0) & (np.abs(block.z) < 8.0) & (r > 12.0)
    )
    block.intensity[ventricle] = 0.3  # CSF touching the wall
    block.labels[r <= 12.0] = 1
    labels, added = block.complete()
    assert not (labels[ventricle] > 0).any()
    assert added[1] <= 0.05 * float(np.count_nonzero(r <= 12.0)) * float(np.prod(SPACING))


def test_a_solid_lesion_already_covered_gains_only_its_partial_volume_edge() -> None:
    block = Block()
    r = block.r()
    block.intensity[r <= 9.0] = 1.8
    block.intensity = ndi.gaussian_filter(block.intensity, 0.6)  # partial volume at the edge
    block.labels[block.intensity >= 1.4] = 1  # a network's outline at its own threshold
    before = int(np.count_nonzero(block.labels))
    labels, added = block.complete()
    assert np.count_nonzero(labels) >= before
    assert added[1] <= 0.15 * before * float(np.prod(SPACING))
    assert not (labels[r > 10.5] > 0).any()


def test_enhancing_tissue_beyond_unenhancing_brain_is_not_taken_and_components_never_merge() -> None:
    block = Block()
    r = block.r((-8.0, 0.0, 0.0))
    block.intensity[r <= 6.0] = 1.8
    block.labels[r <= 6.0] = 1
    # A vessel 3 mm from the lesion, within rim_mm, with normal brain between.
    vessel = ((block.x + 8.0) ** 2 + (block.z - 0.0) ** 2 <= 1.5**2) & (block.y > 9.0) & (block.y < 25.0)
    block.intensity[vessel] = 1.9
    # A second lesion whose edge is 2 mm from the first.
    other = block.r((8.0, 0.0, 0.0)) <= 6.0
    block.intensity[other] = 1.8
    block.labels[other] = 2
    # A vessel touching the lesion: taken, but never beyond rim_mm.
    touching = ((block.y - 0.0) ** 2 + (block.z - 0.0) ** 2 <= 1.5**2) & (block.x < -13.5) & (block.x > -30.0)
    block.intensity[touching] = 1.9
    config = RimCompletionConfig(rim_mm=6.0, max_cavity_intensity=None)
    labels, added = block.complete(config)
    assert not (labels[vessel] > 0).any()
    assert np.array_equal(labels == 2, other)
    assert set(added) == {1, 2} and added[2] == 0.0
    grown = (labels == 1) & ~(r <= 6.0)
    assert grown.any()
    distance = ndi.distance_transform_edt(~(r <= 6.0), sampling=SPACING[::-1])
    assert float(distance[grown].max()) <= config.rim_mm


@pytest.mark.parametrize("seed", range(4))
def test_fill_holes_equals_scipy_in_3d_and_plane_by_plane(seed: int) -> None:
    # Oracle: scipy's binary_fill_holes on the volume, and on each plane in turn.
    rng = np.random.default_rng(seed)
    filled_any = False
    for _ in range(40):
        shape = tuple(int(n) for n in rng.integers(1, 16, size=3))
        mask = ndi.binary_dilation(
            rng.random(shape) < rng.uniform(0.05, 0.5), iterations=int(rng.integers(0, 2))
        )
        holes_3d = ndi.binary_fill_holes(mask)
        assert np.array_equal(fill_holes(mask), holes_3d), shape
        for axis in range(3):  # a 3-D hole is a hole of every plane through it (_fill_planes)
            assert not (holes_3d & ~fill_holes(mask, across=axis)).any()
        for axis in range(3):
            planes = [ndi.binary_fill_holes(plane) for plane in np.moveaxis(mask, axis, 0)]
            expected = np.moveaxis(np.stack(planes), 0, axis)
            assert np.array_equal(fill_holes(mask, across=axis), expected), (shape, axis)
            filled_any |= bool((expected & ~mask).any())
    assert filled_any  # the masks had holes to fill


def test_no_component_no_change() -> None:
    block = Block()
    labels, added = block.complete()
    assert added == {} and not labels.any()


# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------


def test_config_absent_means_disabled_and_round_trips(small_config_dict) -> None:  # type: ignore[no-untyped-def]
    _config_dict = small_config_dict
    assert ModelConfig.from_dict(_config_dict()).postprocessing.rim_completion is None
    assert "rim_completion" not in ModelConfig.from_dict(_config_dict()).to_dict()["postprocessing"]
    cfg = ModelConfig.from_dict(_config_dict(rim_completion={"rim_mm": 4, "max_cavity_intensity": None}))
    assert cfg.postprocessing.rim_completion == RimCompletionConfig(rim_mm=4, max_cavity_intensity=None)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert ModelConfig.from_dict(_config_dict(rim_completion={})).postprocessing.rim_completion == (
        RimCompletionConfig()
    )


@pytest.mark.parametrize(
    ("rim_completion", "field"),
    [
        ({"rim_mm": 0}, "rim_mm"),
        ({"cavity_mm": "8"}, "cavity_mm"),
        ({"min_enhancement": 1.0}, "min_enhancement"),
        ({"min_enhancement": True}, "min_enhancement"),
        ({"reference_mm": float("inf")}, "reference_mm"),
        ({"max_cavity_intensity": -0.5}, "max_cavity_intensity"),
        ({"search": 8}, "unknown keys"),
        ([8.0], "must be a mapping"),
    ],
)
def test_bad_config_values_are_refused_with_the_field_named(  # type: ignore[no-untyped-def]
    rim_completion: Any, field: str, small_config_dict
) -> None:
    _config_dict = small_config_dict
    with pytest.raises(ModelConfigError, match=field):
        ModelConfig.from_dict(_config_dict(rim_completion=rim_completion))


# --------------------------------------------------------------------------------------------------
# The stage in segment_image
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ring_lesion() -> tuple[sitk.Image, np.ndarray, np.ndarray]:
    """A head-sized block with a ring-enhancing lesion: its 3 mm bright wall and its dark centre."""
    block = Block(half_mm=70.0)
    r = block.r((10.0, -5.0, 0.0))
    wall = (r <= 14.0) & (r > 11.0)
    block.intensity[r <= 14.0] = 1.8
    block.intensity[r <= 11.0] = 0.35
    image = block.image((block.intensity * 500.0).astype(np.int16))
    return image, wall, r <= 14.0


def test_segment_image_with_the_stage_fills_the_cavity_of_a_ring(ring_lesion, threshold_model) -> None:  # type: ignore[no-untyped-def]
    image, wall, lesion = ring_lesion
    options = InferenceOptions(device="cpu", backend="torch")
    # The "network" marks the bright wall only: a ring around an unmarked centre.
    without = segment_image(image, threshold_model(0.75), options)
    found = sitk.GetArrayViewFromImage(without.labels)
    assert len(without.lesions) == 1 and without.rim_added_mm3 == {}
    assert "rim_completion" not in without.timings_s
    assert found[wall].mean() > 0.8 and found[lesion & ~wall].mean() < 0.05

    staged = segment_image(image, threshold_model(0.75, rim_completion={}), options)
    kept = sitk.GetArrayViewFromImage(staged.labels)
    assert len(staged.lesions) == 1 and "rim_completion" in staged.timings_s
    assert _dice(kept > 0, lesion) >= 0.95
    assert np.array_equal(sitk.GetArrayViewFromImage(staged.mask), (kept > 0).astype(np.uint8))
    # What was added is the centre, and the lesion table measures the completed lesion.
    voxel_mm3 = float(np.prod(SPACING))
    added = float(np.count_nonzero((kept > 0) & (found == 0))) * voxel_mm3
    assert staged.rim_added_mm3 == {1: pytest.approx(added)}
    assert staged.lesions[0].volume_mm3 == pytest.approx(without.lesions[0].volume_mm3 + added)
    assert staged.lesions[0].longest_diameter_mm == pytest.approx(
        without.lesions[0].longest_diameter_mm, abs=1.0
    )


def test_judged_after_rim_completion_the_false_positive_stage_sees_the_completed_lesion(  # type: ignore[no-untyped-def]
    ring_lesion, threshold_model
) -> None:
    """The "network" marks the ring's bright wall (mean 1.8 x the brain); completed with its dark centre
    the lesion's mean is about 1.1 x the brain (analytic: volumes of the wall and the centre). A rule at
    1.4 keeps the wall as drawn and rejects the completed lesion: the stage judged what rim completion
    made of it."""
    image, wall, lesion = ring_lesion
    options = InferenceOptions(device="cpu", backend="torch")
    rule = {"min_brain_contrast": 1.4}
    before = segment_image(image, threshold_model(0.75, fp_reduction=rule, rim_completion={}), options)
    assert len(before.lesions) == 1 and before.rejected == ()
    assert _dice(sitk.GetArrayViewFromImage(before.labels) > 0, lesion) >= 0.95

    after = threshold_model(0.75, fp_reduction={**rule, "after_rim_completion": True}, rim_completion={})
    judged = segment_image(image, after, options)
    assert judged.lesions == [] and judged.rim_added_mm3 == {}
    (rejected,) = judged.rejected
    voxel_mm3 = float(np.prod(SPACING))
    assert rejected.reason == "brain_contrast"
    assert rejected.features.volume_mm3 == pytest.approx(
        float(np.count_nonzero(lesion)) * voxel_mm3, rel=0.05
    )
    wall_mm3, centre_mm3 = 4.0 / 3.0 * np.pi * (14.0**3 - 11.0**3), 4.0 / 3.0 * np.pi * 11.0**3
    assert rejected.features.contrast_to_brain == pytest.approx(
        (1.8 * wall_mm3 + 0.35 * centre_mm3) / (wall_mm3 + centre_mm3), abs=0.1
    )
    assert {"rim_completion", "fp_reduction"} <= judged.timings_s.keys()


def test_after_rim_completion_a_kept_lesion_is_the_same_and_its_added_volume_too(  # type: ignore[no-untyped-def]
    ring_lesion, threshold_model
) -> None:
    image, _, _ = ring_lesion
    options = InferenceOptions(device="cpu", backend="torch")
    rule = {"min_brain_contrast": 0.5}
    before = segment_image(image, threshold_model(0.75, fp_reduction=rule, rim_completion={}), options)
    after = threshold_model(0.75, fp_reduction={**rule, "after_rim_completion": True}, rim_completion={})
    judged = segment_image(image, after, options)
    assert np.array_equal(
        sitk.GetArrayViewFromImage(judged.labels), sitk.GetArrayViewFromImage(before.labels)
    )
    assert judged.rim_added_mm3 == pytest.approx(before.rim_added_mm3) and judged.rim_added_mm3[1] > 1000.0
    assert judged.lesions == before.lesions
