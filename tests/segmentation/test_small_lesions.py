"""Small-lesion detection: analytic balls, tubes and Hessians, the rules, config parsing, and the stage
inside segment_image. Oracles: analytic quadratics (exact central-difference Hessians), balls of known
diameter and position, and rano.measure on the drawn mask."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk

from segmentation.errors import ModelConfigError
from segmentation.fp_reduction import hessian_at
from segmentation.inference import InferenceOptions, segment_image
from segmentation.model import (
    SMALL_LESION_INPUTS,
    ModelConfig,
    SmallLesionClassifierConfig,
    SmallLesionConfig,
)
from segmentation.small_lesions import (
    SMALL_LESION_RULES,
    Candidate,
    blobness,
    classifier_inputs,
    detect_small_lesions,
    refusal,
)

SPACING = (0.9, 0.9, 1.2)  # x, y, z: anisotropic, so millimetres and voxels differ along z
HALF_MM = 30.0


class Brain:
    """A block of brain (intensity 500 with seeded noise) on an anisotropic grid centred at the origin,
    its brain mask 3 mm inside the block."""

    def __init__(self, noise: float = 0.02) -> None:
        size = [int(2 * HALF_MM / s) + 1 for s in SPACING]
        self.origin = tuple(-HALF_MM for _ in range(3))
        zi, yi, xi = np.meshgrid(*[np.arange(n) for n in size[::-1]], indexing="ij")
        self.x, self.y, self.z = (self.origin[a] + i * SPACING[a] for a, i in ((0, xi), (1, yi), (2, zi)))
        inner = HALF_MM - 3.0
        self.brain = (np.abs(self.x) < inner) & (np.abs(self.y) < inner) & (np.abs(self.z) < inner)
        self.intensity = np.where(self.brain, 1.0, 0.2) + np.random.default_rng(5).normal(
            0, noise, self.brain.shape
        )
        self.labels = np.zeros(self.brain.shape, dtype=np.uint32)

    def r(self, centre: tuple[float, float, float]) -> np.ndarray:
        return np.sqrt((self.x - centre[0]) ** 2 + (self.y - centre[1]) ** 2 + (self.z - centre[2]) ** 2)

    def ball(self, centre: tuple[float, float, float], diameter_mm: float, value: float = 2.0) -> np.ndarray:
        inside = self.r(centre) <= diameter_mm / 2.0
        self.intensity[inside] = value
        return inside

    def image(self, array: np.ndarray) -> sitk.Image:
        out = sitk.GetImageFromArray(array)
        out.SetSpacing(SPACING)
        out.SetOrigin(self.origin)
        return out

    def detect(self, config: SmallLesionConfig | None = None, exclude: np.ndarray | None = None) -> Any:
        exclude = self.labels if exclude is None else exclude
        return detect_small_lesions(
            self.image((self.intensity * 500.0).astype(np.int16)),
            self.image(self.labels),
            self.image(exclude.astype(np.uint8)),
            self.image(self.brain.astype(np.uint8)),
            config or SmallLesionConfig(),
        )


def _centre_error_mm(candidate: Candidate, centre: tuple[float, float, float]) -> float:
    return float(np.linalg.norm(np.subtract(candidate.center_mm, centre)))


# --------------------------------------------------------------------------------------------------
# Hessian and blobness
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "coefficients", [(1.0, 1.0, 1.0), (0.2, 1.0, 3.0), (0.0, 2.0, 2.0), (-1.0, 1.0, 1.0)]
)
def test_hessian_of_a_quadratic_is_exact_and_blobness_is_its_eigenvalue_ratio(
    coefficients: tuple[float, float, float],
) -> None:
    # f = -(a z^2 + b y^2 + c x^2) on a 2 mm grid: the central-difference Hessian is diag(-2a, -2b, -2c).
    a, b, c = coefficients
    h = 2.0
    z, y, x = np.meshgrid(*(np.arange(-4, 5) * h,) * 3, indexing="ij")
    f = -(a * z**2 + b * y**2 + c * x**2)
    points = np.argwhere(np.ones(f.shape, bool))[::97]
    eig = np.linalg.eigvalsh(hessian_at(f, points[(points > 0).all(1) & (points < 8).all(1)], np.full(3, h)))
    np.testing.assert_allclose(eig, np.tile(np.sort([-2 * a, -2 * b, -2 * c]), (len(eig), 1)), atol=1e-9)
    expected = min(a, b, c) / max(a, b, c) if min(a, b, c) > 0 else 0.0
    np.testing.assert_allclose(blobness(eig), expected, atol=1e-12)


# --------------------------------------------------------------------------------------------------
# Detection on analytic shapes
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("diameter", "centre"), [(3.0, (4.3, -6.1, 2.2)), (4.0, (-8.0, 5.5, -3.7)), (5.5, (0.4, 9.0, 6.0))]
)
def test_a_small_bright_ball_is_found_where_it_is_with_its_size(
    diameter: float, centre: tuple[float, float, float]
) -> None:
    brain = Brain()
    truth = brain.ball(centre, diameter)
    result = brain.detect()
    assert len(result.added) == 1
    found = result.added[0]
    assert _centre_error_mm(found, centre) <= 1.0
    assert found.blobness > 0.5 and found.brightness > 1.5 and found.reason == ""
    labels = sitk.GetArrayViewFromImage(result.labels)
    assert set(np.unique(labels).tolist()) == {0, 1}
    # The mask is the ball to within a voxel layer: half-way between the ball and the brain around it.
    mask = labels == 1
    dice = 2.0 * np.count_nonzero(mask & truth) / (np.count_nonzero(mask) + np.count_nonzero(truth))
    assert dice >= 0.6
    assert found.diameter_mm == pytest.approx(diameter, abs=1.0)


def test_a_bright_tube_and_a_plate_are_refused_as_not_blobs() -> None:
    brain = Brain()
    # A vessel along y and a dural sheet in the x = 12 mm plane, as bright as a lesion.
    brain.intensity[(np.hypot(brain.x + 6.0, brain.z - 2.0) <= 1.2) & brain.brain] = 2.0
    brain.intensity[(np.abs(brain.x - 12.0) <= 0.8) & brain.brain] = 2.0
    result = brain.detect()
    assert result.added == ()
    # Candidates on the tube and the plate (bright enough) are refused for their shape or their size.
    on_them = [c for c in result.candidates if c.brightness >= 1.5]
    assert on_them and {c.reason for c in on_them} <= {"blobness", "size"}
    assert sitk.GetArrayViewFromImage(result.labels).max() == 0


def test_a_ball_at_the_brain_surface_is_refused_by_depth_and_found_deeper() -> None:
    brain = Brain()
    brain.ball((0.0, 0.0, HALF_MM - 4.5), 3.5)  # 1.5 mm below the surface
    result = brain.detect(SmallLesionConfig(min_depth_mm=3.0))
    assert result.added == ()
    assert any(
        c.reason == "depth" and _centre_error_mm(c, (0.0, 0.0, HALF_MM - 4.5)) <= 1.5
        for c in result.candidates
    )
    assert len(brain.detect(SmallLesionConfig(min_depth_mm=0.0)).added) == 1


def test_a_faint_ball_is_refused_by_brightness_and_a_large_one_by_size() -> None:
    faint = Brain()
    faint.ball((0.0, 0.0, 0.0), 4.0, value=1.3)
    result = faint.detect()
    assert result.added == () and "brightness" in {c.reason for c in result.candidates}
    large = Brain()
    large.ball((0.0, 0.0, 0.0), 12.0)
    assert large.detect().added == ()


def test_where_the_network_drew_nothing_is_looked_at_and_existing_labels_are_kept() -> None:
    brain = Brain()
    brain.ball((8.0, 8.0, 0.0), 4.0)
    big = brain.ball((-10.0, -8.0, 0.0), 12.0, value=1.8)
    brain.labels[big] = 1
    # A rejected component (the network drew it, the false-positive stage removed it): not looked at.
    rejected = brain.ball((10.0, -10.0, 8.0), 4.0)
    exclude = brain.labels.copy()
    exclude[rejected] = 1
    result = brain.detect(exclude=exclude)
    assert len(result.added) == 1 and _centre_error_mm(result.added[0], (8.0, 8.0, 0.0)) <= 1.0
    labels = sitk.GetArrayViewFromImage(result.labels)
    assert np.array_equal(labels == 1, big)
    assert set(np.unique(labels).tolist()) == {0, 1, 2}
    assert not labels[rejected].any()


def test_no_brain_no_candidates_and_noise_alone_adds_nothing() -> None:
    brain = Brain(noise=0.05)
    assert brain.detect().added == ()
    brain.brain[:] = False
    empty = brain.detect()
    assert empty.added == () and empty.candidates == ()


# --------------------------------------------------------------------------------------------------
# Rules
# --------------------------------------------------------------------------------------------------


def _candidate(**changes: float) -> Candidate:
    values: dict[str, Any] = {
        "center_mm": (0.0, 0.0, 0.0), "sigma_mm": 1.0, "response": 0.5, "blobness": 0.8,
        "brightness": 2.0, "contrast": 1.5, "depth_mm": 20.0, "probability": 0.05,
    }  # fmt: skip
    return Candidate(**{**values, **changes})


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({}, ""),
        ({"blobness": 0.1}, "blobness"),
        ({"brightness": 1.2}, "brightness"),
        ({"contrast": 1.0}, "contrast"),
        ({"depth_mm": 1.0}, "depth"),
        ({"blobness": 0.1, "depth_mm": 1.0}, "blobness"),
        ({"contrast": 1.0, "depth_mm": 1.0}, "depth"),
    ],
)
def test_refusal_names_the_first_rule_in_order(changes: dict[str, float], reason: str) -> None:
    assert refusal(_candidate(**changes), SmallLesionConfig()) == reason
    assert reason == "" or reason in SMALL_LESION_RULES


def test_the_probability_rule_applies_only_when_configured_and_refuses_a_missing_map() -> None:
    config = SmallLesionConfig(min_probability=0.1)
    assert refusal(_candidate(probability=0.05), SmallLesionConfig()) == ""
    assert refusal(_candidate(probability=0.05), config) == "probability"
    assert refusal(_candidate(probability=float("nan")), config) == "probability"
    assert refusal(_candidate(probability=0.2), config) == ""


def test_candidate_to_dict_is_json_ready() -> None:
    out = _candidate(probability=float("nan")).to_dict()
    assert out["probability"] is None and out["center_mm"] == [0.0, 0.0, 0.0] and out["reason"] == ""


def test_classifier_inputs_are_the_named_transforms_in_order() -> None:
    inputs = classifier_inputs(_candidate(diameter_mm=3.0, depth_mm=35.0, probability=0.2))
    assert tuple(inputs) == SMALL_LESION_INPUTS
    expected = {
        "log_response": math.log(0.5), "blobness": 0.8, "log_brightness": math.log(2.0),
        "log_contrast": math.log(1.5), "depth": 20.0, "probability_logit": math.log(0.2 / 0.8),
        "sigma": 1.0, "log_diameter": math.log(3.0),
    }  # fmt: skip
    assert inputs == pytest.approx(expected, abs=1e-12)
    unmeasured = classifier_inputs(_candidate(probability=float("nan"), contrast=float("nan")))
    assert math.isnan(unmeasured["probability_logit"]) and math.isnan(unmeasured["log_contrast"])
    assert math.isnan(unmeasured["log_diameter"])  # no mask drawn


def _size_classifier(min_probability: float) -> SmallLesionClassifierConfig:
    """p = d / (d + 3) for a mask of equivalent diameter d mm (logistic in log d, bias -log 3)."""
    return SmallLesionClassifierConfig(
        inputs=("log_diameter",), mean=(0.0,), scale=(1.0,), weights=(1.0,), bias=-math.log(3.0),
        min_probability=min_probability,
    )  # fmt: skip


@pytest.mark.parametrize(("min_probability", "kept"), [(0.5, True), (0.7, False)])
def test_the_classifier_judges_each_drawn_mask_after_the_rules(min_probability: float, kept: bool) -> None:
    brain = Brain()
    brain.ball((4.3, -6.1, 2.2), 4.0)
    result = brain.detect(SmallLesionConfig(classifier=_size_classifier(min_probability)))
    judged = [c for c in result.candidates if math.isfinite(c.lesion_probability)]
    assert len(judged) == 1
    ball = judged[0]
    assert ball.lesion_probability == pytest.approx(ball.diameter_mm / (ball.diameter_mm + 3.0), abs=1e-9)
    assert 0.5 < ball.lesion_probability < 0.7  # a 4 mm mask: about 0.57
    assert (result.added == (ball,)) is kept
    assert ball.reason == ("" if kept else "classifier")
    assert bool(sitk.GetArrayViewFromImage(result.labels).max() == 1) is kept
    # Without a classifier no candidate carries a lesion probability.
    assert all(math.isnan(c.lesion_probability) for c in brain.detect().candidates)


# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------


def test_config_absent_means_disabled_and_round_trips(small_config_dict) -> None:  # type: ignore[no-untyped-def]
    assert ModelConfig.from_dict(small_config_dict()).postprocessing.small_lesions is None
    assert "small_lesions" not in ModelConfig.from_dict(small_config_dict()).to_dict()["postprocessing"]
    cfg = ModelConfig.from_dict(
        small_config_dict(small_lesions={"sigmas_mm": [1.0, 2.0], "min_probability": 0.1})
    )
    assert cfg.postprocessing.small_lesions == SmallLesionConfig(sigmas_mm=(1.0, 2.0), min_probability=0.1)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert ModelConfig.from_dict(small_config_dict(small_lesions={})).postprocessing.small_lesions == (
        SmallLesionConfig()
    )
    with_classifier = ModelConfig.from_dict(
        small_config_dict(small_lesions={"classifier": _size_classifier(0.4).to_dict()})
    )
    assert with_classifier.postprocessing.small_lesions == SmallLesionConfig(classifier=_size_classifier(0.4))
    assert ModelConfig.from_dict(with_classifier.to_dict()) == with_classifier


@pytest.mark.parametrize(
    ("small_lesions", "field"),
    [
        ({"spacing_mm": 0}, "spacing_mm"),
        ({"sigmas_mm": []}, "sigmas_mm"),
        ({"sigmas_mm": [1.0, -1.0]}, "sigmas_mm"),
        ({"min_blobness": 1.5}, "min_blobness"),
        ({"min_brightness": "2"}, "min_brightness"),
        ({"min_depth_mm": float("nan")}, "min_depth_mm"),
        ({"min_probability": 2.0}, "min_probability"),
        ({"max_diameter_mm": True}, "max_diameter_mm"),
        ({"radius": 3}, "unknown keys"),
        ([1.0], "must be a mapping"),
        ({"classifier": [1.0]}, "small_lesions.classifier must be a mapping"),
        # An input of the false-positive stage's classifier is not one of this stage's.
        (
            {"classifier": {**_size_classifier(0.4).to_dict(), "inputs": ["log_volume"]}},
            "small_lesions.classifier.inputs must name distinct inputs of",
        ),
        (
            {"classifier": {**_size_classifier(0.4).to_dict(), "min_probability": 1.0}},
            "small_lesions.classifier.min_probability",
        ),
    ],  # fmt: skip
)
def test_bad_config_values_are_refused_with_the_field_named(  # type: ignore[no-untyped-def]
    small_lesions: Any, field: str, small_config_dict
) -> None:
    with pytest.raises(ModelConfigError, match=field):
        ModelConfig.from_dict(small_config_dict(small_lesions=small_lesions))


# --------------------------------------------------------------------------------------------------
# The stage in segment_image
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def head_with_small_lesion() -> tuple[sitk.Image, np.ndarray, np.ndarray]:
    """A head-sized block with a large lesion (which the "network" finds) and a 4 mm one (which it does
    not: its threshold is above the small lesion's intensity)."""
    rng = np.random.default_rng(11)
    spacing = (1.0, 1.0, 1.0)
    n = 141
    zi, yi, xi = np.meshgrid(*(np.arange(n) - n // 2,) * 3, indexing="ij")
    head = (np.abs(xi) < 62) & (np.abs(yi) < 62) & (np.abs(zi) < 62)
    arr = np.where(head, 1.0, 0.0) + rng.normal(0, 0.02, head.shape)
    large = np.sqrt((xi - 20) ** 2 + (yi + 10) ** 2 + zi**2) <= 10.0
    small = np.sqrt((xi + 15.3) ** 2 + (yi - 18.6) ** 2 + (zi - 6.2) ** 2) <= 2.0
    arr[large] = 2.6
    arr[small] = 2.0
    image = sitk.GetImageFromArray((arr * 500.0).astype(np.int16))
    image.SetSpacing(spacing)
    return image, large, small


def test_segment_image_with_the_stage_adds_the_small_lesion_after_the_network_ones(  # type: ignore[no-untyped-def]
    head_with_small_lesion, threshold_model
) -> None:
    image, large, small = head_with_small_lesion
    options = InferenceOptions(device="cpu", backend="torch")
    without = segment_image(image, threshold_model(0.85), options)
    assert (
        len(without.lesions) == 1 and without.small_lesions == {} and "small_lesions" not in without.timings_s
    )
    staged = segment_image(image, threshold_model(0.85, small_lesions={}), options)
    labels = sitk.GetArrayViewFromImage(staged.labels)
    assert "small_lesions" in staged.timings_s
    assert [m.label for m in staged.lesions] == [1, 2]
    assert set(staged.small_lesions) == {2}
    assert np.array_equal(labels == 1, sitk.GetArrayViewFromImage(without.labels) == 1)
    found = labels == 2
    assert np.count_nonzero(found & small) >= 0.6 * np.count_nonzero(small)
    # The lesion table measures the added lesion like any other (rano.measure on its mask).
    added = staged.lesions[1]
    assert added.volume_mm3 == pytest.approx(float(np.count_nonzero(found)), rel=1e-6)
    assert added.longest_diameter_mm == pytest.approx(4.0, abs=1.5)
    assert np.array_equal(sitk.GetArrayViewFromImage(staged.mask), (labels > 0).astype(np.uint8))
    assert math.isfinite(staged.small_lesions[2].probability)


@pytest.mark.parametrize("compact", [True, False])
def test_the_probability_feature_is_the_largest_network_probability_near_the_peak(compact: bool) -> None:
    brain = Brain()
    centre = (4.0, -3.0, 2.0)
    brain.ball(centre, 4.0)
    near = brain.r(centre) <= 1.0
    far = brain.r((-15.0, 10.0, -10.0)) <= 2.0  # higher, but far from the ball: not counted
    if compact:  # the pipeline's stored type: probability x 65535 in uint16
        prob = np.zeros(brain.brain.shape, np.uint16)
        prob[near], prob[far] = 32768, 65535
        expected = 32768 / 65535
    else:
        prob = np.zeros(brain.brain.shape, np.float32)
        prob[near], prob[far] = 0.25, 0.9
        expected = 0.25
    result = detect_small_lesions(
        brain.image((brain.intensity * 500.0).astype(np.int16)),
        brain.image(brain.labels),
        brain.image(brain.labels.astype(np.uint8)),
        brain.image(brain.brain.astype(np.uint8)),
        SmallLesionConfig(),
        brain.image(prob),
    )
    assert len(result.added) == 1
    assert result.added[0].probability == pytest.approx(expected, abs=1e-6)
