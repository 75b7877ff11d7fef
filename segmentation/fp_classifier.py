"""Fitting the lesion classifiers (of the false-positive and small-lesion stages) on labelled candidates.

The classifier is a logistic regression on standardised :func:`~segmentation.fp_reduction.classifier_inputs`
(scikit-learn's :class:`~sklearn.linear_model.LogisticRegression`, L2-regularised, classes balanced: the
phantoms give more distractors than lesions). A linear model on eight named inputs keeps every verdict
explainable (each weight says how much one feature moves the odds) and its config is a handful of
numbers, so the pipeline needs no scikit-learn at run time (:func:`~segmentation.fp_reduction.
lesion_probability` is one dot product). The small-lesion stage's classifier is fitted the same way on
its candidates' :func:`~segmentation.small_lesions.classifier_inputs`.

The threshold is set at fixed sensitivity: the highest ``min_probability`` at which a set share of the
reference lesions found on the fitting components stays found (a lesion is found while any component
overlapping it is kept); by default every one of them. Pure: no Django.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Hashable, Mapping, Sequence
from dataclasses import replace
from typing import TypeVar

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from segmentation.fp_reduction import ComponentFeatures, classifier_inputs
from segmentation.model import FP_CLASSIFIER_INPUTS, FpClassifierConfig, LesionClassifierConfig

C = TypeVar("C", bound=LesionClassifierConfig)


class ClassifierFitError(ValueError):
    """The components cannot fit a classifier (one class only, no lesion found, mismatched lengths)."""


def fit_classifier(
    features: Sequence[ComponentFeatures],
    is_lesion: Sequence[bool],
    found: Sequence[Collection[Hashable]],
    *,
    inputs: Sequence[str] = FP_CLASSIFIER_INPUTS,
    regularisation: float = 1.0,
    sensitivity: float = 1.0,
    fitted_on: str = "",
) -> FpClassifierConfig:
    """Fit the false-positive stage's classifier on network components (:func:`fit_linear` on their
    :func:`~segmentation.fp_reduction.classifier_inputs`; its arguments)."""
    return fit_linear(
        FpClassifierConfig,
        [classifier_inputs(f) for f in features],
        is_lesion,
        found,
        inputs=inputs,
        regularisation=regularisation,
        sensitivity=sensitivity,
        fitted_on=fitted_on,
    )


def fit_linear(
    config_type: type[C],
    rows: Sequence[Mapping[str, float]],
    is_lesion: Sequence[bool],
    found: Sequence[Collection[Hashable]],
    *,
    inputs: Sequence[str],
    regularisation: float = 1.0,
    sensitivity: float = 1.0,
    fitted_on: str = "",
) -> C:
    """Fit a lesion classifier and its threshold.

    Args:
        config_type: The :class:`~segmentation.model.LesionClassifierConfig` to make (it says which
            inputs are allowed).
        rows: Per candidate, its inputs by name.
        is_lesion: Per candidate, whether it overlaps a true lesion (of any size).
        found: Per candidate, the reference lesions it overlaps (keys unique across studies); the
            threshold keeps every one of them found.
        inputs: The names in ``rows`` to use.
        regularisation: scikit-learn's ``C`` (inverse L2 strength).
        sensitivity: The share (0-1] of the found reference lesions the threshold keeps: 1 keeps every
            one; below 1 the least probable may go, so that one lesion the features cannot tell from the
            distractors does not pull the threshold down for every study.
        fitted_on: What the candidates came from, for the model card.

    Raises:
        ClassifierFitError: On mismatched lengths, a single class, or no reference lesion found.
    """
    if not len(rows) == len(is_lesion) == len(found):
        raise ClassifierFitError("features, is_lesion and found must have one entry per component")
    if not 0.0 < sensitivity <= 1.0:
        raise ClassifierFitError(f"sensitivity must be in (0, 1], got {sensitivity!r}")
    y = np.asarray(is_lesion, dtype=bool)
    if y.all() or not y.any():
        raise ClassifierFitError("the components must include both lesions and false positives")
    lesions = {key for keys in found for key in keys}
    if not lesions:
        raise ClassifierFitError("no reference lesion is found by the components: no threshold to keep")
    x = np.asarray([[row[name] for name in inputs] for row in rows], dtype=np.float64)
    scaler = StandardScaler().fit(x)
    model = LogisticRegression(C=regularisation, class_weight="balanced", max_iter=10_000)
    model.fit(scaler.transform(x), y)
    unthresholded = config_type(
        inputs=tuple(inputs),
        mean=tuple(float(v) for v in scaler.mean_),
        scale=tuple(float(v) for v in scaler.scale_),
        weights=tuple(float(v) for v in model.coef_[0]),
        bias=float(model.intercept_[0]),
        min_probability=0.0,
        fitted_on=fitted_on,
    )
    probabilities = [unthresholded.probability(row) for row in rows]
    # Each lesion stays found while its most probable overlapping candidate is kept.
    best = {
        key: max(p for p, keys in zip(probabilities, found, strict=True) if key in keys) for key in lesions
    }
    # The threshold keeps the ceil(sensitivity x n) most probable lesions: the least probable of them
    # sets it, rounded down to four decimals so that the stored threshold still keeps it.
    ordered = sorted(best.values(), reverse=True)
    kept = max(1, math.ceil(round(sensitivity * len(ordered), 9)))
    threshold = math.floor(ordered[kept - 1] * 1e4) / 1e4
    return replace(unthresholded, min_probability=threshold)
