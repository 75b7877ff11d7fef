"""The second-stage lesion classifier: its inputs, its probability against scikit-learn's own
prediction and a hand computation, the threshold at fixed sensitivity, and its config."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from segmentation.errors import ModelConfigError
from segmentation.fp_classifier import ClassifierFitError, fit_classifier, fit_linear
from segmentation.fp_reduction import ComponentFeatures, apply_rules, classifier_inputs, lesion_probability
from segmentation.model import (
    FP_CLASSIFIER_INPUTS,
    FpClassifierConfig,
    FpReductionConfig,
    ModelConfig,
    SmallLesionClassifierConfig,
)


def _features(label: int = 1, **values: float) -> ComponentFeatures:
    base: dict[str, Any] = {
        "volume_mm3": 500.0,
        "centroid_mm": (0.0, 0.0, 0.0),
        "extents_mm": (12.0, 10.0, 9.0),
        "elongation": 1.3,
        "tubularity": 0.1,
        "midline_distance_mm": 30.0,
        "midline_width_mm": 10.0,
        "depth_mm": 25.0,
        "contrast_to_shell": 1.5,
        "contrast_to_brain": 1.6,
        "mean_probability": 0.9,
    }
    return ComponentFeatures(label=label, **{**base, **values})


def test_inputs_are_the_named_transforms_in_order() -> None:
    f = _features(volume_mm3=1000.0, elongation=math.e, midline_distance_mm=80.0, depth_mm=12.5)
    inputs = classifier_inputs(f)
    assert tuple(inputs) == FP_CLASSIFIER_INPUTS
    assert inputs["log_volume"] == pytest.approx(math.log(1000.0))
    assert inputs["log_elongation"] == pytest.approx(1.0)
    assert inputs["midline_distance"] == 60.0  # capped
    assert inputs["depth"] == 12.5
    assert inputs["log_shell_contrast"] == pytest.approx(math.log(1.5))
    # Infinite ratios (one voxel, no shell) stay finite.
    odd = classifier_inputs(_features(elongation=float("inf"), contrast_to_shell=float("inf")))
    assert all(math.isfinite(v) for v in odd.values())
    # The network's mean probability as log-odds, clipped at 1e-4 from 0 and 1.
    assert inputs["probability_logit"] == pytest.approx(math.log(0.9 / 0.1))
    assert classifier_inputs(_features(mean_probability=1.0))["probability_logit"] == pytest.approx(
        math.log(0.9999 / 1e-4)
    )


def test_a_classifier_on_the_probability_refuses_features_computed_without_it() -> None:
    classifier = FpClassifierConfig(
        inputs=("depth", "probability_logit"), mean=(20.0, 0.0), scale=(10.0, 1.0), weights=(1.0, 1.0),
        bias=0.0, min_probability=0.5,
    )  # fmt: skip
    assert 0.0 < lesion_probability(_features(), classifier) < 1.0
    with pytest.raises(ValueError, match=r"needs \['probability_logit'\], which component 7 lacks"):
        lesion_probability(_features(7, mean_probability=float("nan")), classifier)
    # A classifier without that input never looks at it.
    depth_only = replace(classifier, inputs=("depth",), mean=(20.0,), scale=(10.0,), weights=(1.0,))
    assert 0.0 < lesion_probability(_features(mean_probability=float("nan")), depth_only) < 1.0


def test_probability_by_hand() -> None:
    classifier = FpClassifierConfig(
        inputs=("depth", "tubularity"),
        mean=(20.0, 0.0),
        scale=(10.0, 0.5),
        weights=(2.0, -3.0),
        bias=0.5,
        min_probability=0.2,
    )
    f = _features(depth_mm=35.0, tubularity=0.25)
    z = 0.5 + 2.0 * (35.0 - 20.0) / 10.0 - 3.0 * 0.25 / 0.5
    assert lesion_probability(f, classifier) == pytest.approx(1.0 / (1.0 + math.exp(-z)), abs=1e-12)


def _population(seed: int = 3) -> tuple[list[ComponentFeatures], list[bool], list[set[str]]]:
    """Deep round lesions and shallow elongated distractors, overlapping; one lesion looks like a vessel."""
    rng = np.random.default_rng(seed)
    features, is_lesion, found = [], [], []
    for i in range(40):
        lesion = i < 15
        elongation = float(rng.lognormal(0.2 if lesion else 1.0, 0.3))
        depth = float(rng.normal(30.0 if lesion else 10.0, 6.0))
        if i == 0:  # a lesion joined to a vessel
            elongation, depth = 6.0, 12.0
        features.append(_features(i + 1, elongation=max(elongation, 1.0), depth_mm=max(depth, 0.5)))
        is_lesion.append(lesion)
        found.append({f"lesion-{i}"} if lesion else set())
    return features, is_lesion, found


def test_fit_matches_scikit_learn_and_keeps_every_found_lesion() -> None:
    features, is_lesion, found = _population()
    classifier = fit_classifier(
        features, is_lesion, found, inputs=("log_elongation", "depth"), fitted_on="test"
    )
    assert classifier.inputs == ("log_elongation", "depth") and classifier.fitted_on == "test"
    # The stored numbers give scikit-learn's own prediction.
    x = np.asarray([[classifier_inputs(f)[n] for n in classifier.inputs] for f in features])
    oracle = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=10_000))
    oracle.fit(x, is_lesion)
    expected = oracle.predict_proba(x)[:, 1]
    ours = np.asarray([lesion_probability(f, classifier) for f in features])
    np.testing.assert_allclose(ours, expected, atol=1e-9)
    # Fixed sensitivity: every found lesion is kept, and the threshold is the least probable lesion's.
    kept = ours >= classifier.min_probability
    assert all(kept[i] for i in range(15))
    assert classifier.min_probability == pytest.approx(float(ours[:15].min()), abs=1e-4)
    assert classifier.min_probability <= float(ours[:15].min())
    # The vessel-like lesion sets the threshold low, yet most distractors go.
    assert int(np.argmin(ours[:15])) == 0
    assert int((~kept[15:]).sum()) >= 10  # 13 of the 25 with this seed

    # Through the stage: the rule rejects below the threshold and reports the probability.
    labels_image = sitk.GetImageFromArray(np.arange(41, dtype=np.uint32).reshape(1, 1, 41))
    result = apply_rules(labels_image, tuple(features), FpReductionConfig(classifier=classifier))
    assert {r.features.label for r in result.rejected} == {
        f.label for f, k in zip(features, kept, strict=True) if not k
    }
    for r in result.rejected:
        assert r.reason == "classifier" and r.to_dict()["probability"] < classifier.min_probability


def test_fit_linear_makes_the_config_type_asked_for() -> None:
    """The small-lesion stage's classifier is fitted by the same function on its own inputs."""
    rng = np.random.default_rng(3)
    rows = [{"log_diameter": float(v), "blobness": float(b)} for v, b in rng.normal(size=(40, 2))]
    is_lesion = [row["log_diameter"] + 0.5 * row["blobness"] > 0 for row in rows]
    found = [{f"L{i}"} if lesion else set() for i, lesion in enumerate(is_lesion)]
    classifier = fit_linear(
        SmallLesionClassifierConfig, rows, is_lesion, found, inputs=("log_diameter", "blobness")
    )
    assert isinstance(classifier, SmallLesionClassifierConfig)
    probabilities = [classifier.probability(row) for row in rows]
    assert (
        min(p for p, lesion in zip(probabilities, is_lesion, strict=True) if lesion)
        >= classifier.min_probability
    )
    with pytest.raises(ModelConfigError, match="small_lesions.classifier.inputs"):
        fit_linear(SmallLesionClassifierConfig, [{"log_volume": 1.0}, {"log_volume": 2.0}], [True, False],
                   [{"a"}, set()], inputs=("log_volume",))  # fmt: skip


@pytest.mark.parametrize("lost", [1, 2, 5])
def test_a_sensitivity_below_one_lets_the_least_probable_lesions_go(lost: int) -> None:
    features, is_lesion, found = _population()
    inputs = ("log_elongation", "depth")
    every = fit_classifier(features, is_lesion, found, inputs=inputs)
    # 15 lesions: a share of (15 - lost) / 15, or less down to the next fifteenth, loses the `lost` least
    # probable (the count kept is rounded up).
    for share in ((15 - lost) / 15, (14.5 - lost) / 15):
        part = fit_classifier(features, is_lesion, found, inputs=inputs, sensitivity=share)
        assert part.weights == every.weights and part.bias == every.bias  # the same fit
        ours = np.asarray([lesion_probability(f, part) for f in features])
        ordered = np.sort(ours[:15])
        assert int((ours[:15] >= part.min_probability).sum()) == 15 - lost
        assert ordered[lost - 1] < part.min_probability <= ordered[lost]
        assert part.min_probability == pytest.approx(float(ordered[lost]), abs=1e-4)
    # Losing the vessel-like lesion (the least probable) raises the threshold and removes distractors.
    one = fit_classifier(features, is_lesion, found, inputs=inputs, sensitivity=14 / 15)
    assert one.min_probability > every.min_probability
    assert sum(lesion_probability(f, one) < one.min_probability for f in features[15:]) > sum(
        lesion_probability(f, every) < every.min_probability for f in features[15:]
    )


@pytest.mark.parametrize("share", [0.0, -0.1, 1.01, float("nan")])
def test_a_sensitivity_outside_zero_to_one_is_refused(share: float) -> None:
    features, is_lesion, found = _population()
    with pytest.raises(ClassifierFitError, match="sensitivity must be in"):
        fit_classifier(features, is_lesion, found, sensitivity=share)


def test_a_lesion_found_by_two_components_needs_only_one() -> None:
    features, is_lesion, found = _population()
    # Component 0 (the vessel-like lesion) shares its lesion with a deep round component.
    features.append(_features(99, elongation=1.1, depth_mm=35.0))
    is_lesion.append(True)
    found.append({"lesion-0"})
    alone = fit_classifier(features[:40], is_lesion[:40], found[:40], inputs=("log_elongation", "depth"))
    shared = fit_classifier(features, is_lesion, found, inputs=("log_elongation", "depth"))
    assert lesion_probability(features[0], shared) < shared.min_probability  # may go: its twin stays
    assert shared.min_probability > alone.min_probability


@pytest.mark.parametrize(
    ("is_lesion", "found", "message"),
    [
        ([True, True], [{"a"}, {"b"}], "both lesions and false positives"),
        ([True, False], [set(), set()], "no reference lesion"),
        ([True], [{"a"}, set()], "one entry per component"),
    ],
)
def test_fit_refuses_what_it_cannot_fit(is_lesion: list[bool], found: list[set[str]], message: str) -> None:
    with pytest.raises(ClassifierFitError, match=message):
        fit_classifier([_features(1), _features(2, elongation=5.0)], is_lesion, found)


def _classifier_dict(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "inputs": ["log_elongation", "depth"],
        "mean": [0.5, 20.0],
        "scale": [0.4, 8.0],
        "weights": [-1.5, 1.0],
        "bias": 0.2,
        "min_probability": 0.1,
        "fitted_on": "phantoms",
    }
    return {**base, **changes}


def test_config_round_trips(small_config_dict) -> None:  # type: ignore[no-untyped-def]
    cfg = ModelConfig.from_dict(small_config_dict(fp_reduction={"classifier": _classifier_dict()}))
    classifier = cfg.postprocessing.fp_reduction.classifier
    assert classifier == FpClassifierConfig(
        inputs=("log_elongation", "depth"), mean=(0.5, 20.0), scale=(0.4, 8.0), weights=(-1.5, 1.0),
        bias=0.2, min_probability=0.1, fitted_on="phantoms",
    )  # fmt: skip
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert replace(classifier, min_probability=0.3).min_probability == 0.3


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"inputs": ["log_elongation", "colour"]}, "inputs"),
        ({"inputs": ["depth", "depth"]}, "inputs"),
        ({"inputs": []}, "inputs"),
        ({"mean": [0.5]}, "mean"),
        ({"weights": [1.0, "x"]}, "weights"),
        ({"scale": [0.4, 0.0]}, "scale"),
        ({"bias": float("inf")}, "bias"),
        ({"min_probability": 1.0}, "min_probability"),
        ({"min_probability": -0.1}, "min_probability"),
        ({"colour": 1}, "unknown keys"),
    ],
)
def test_bad_classifier_config_is_refused_with_the_field_named(  # type: ignore[no-untyped-def]
    changes: dict[str, Any], field: str, small_config_dict
) -> None:
    with pytest.raises(ModelConfigError, match=field):
        ModelConfig.from_dict(small_config_dict(fp_reduction={"classifier": _classifier_dict(**changes)}))


def test_missing_classifier_keys_are_named(small_config_dict) -> None:  # type: ignore[no-untyped-def]
    data = _classifier_dict()
    del data["weights"]
    with pytest.raises(ModelConfigError, match="lacks \\['weights'\\]"):
        ModelConfig.from_dict(small_config_dict(fp_reduction={"classifier": data}))
    with pytest.raises(ModelConfigError, match="classifier must be a mapping"):
        ModelConfig.from_dict(small_config_dict(fp_reduction={"classifier": [1, 2]}))
