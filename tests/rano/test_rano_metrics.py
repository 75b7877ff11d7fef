"""Agreement metrics against SimpleITK's overlap / Hausdorff filters, MONAI and textbook values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance
from scipy import ndimage, stats

from rano.errors import GeometryError
from rano.metrics import (
    MetricInputError,
    cohens_kappa,
    cosine_similarity,
    dice,
    hausdorff_mm,
    jaccard,
    lesion_detection,
    lins_ccc,
    mean_surface_distance,
    segmentation_agreement,
    variation_of_information,
    volume_overlap_error,
)

SPACING = (0.8, 1.0, 1.5)  # x, y, z


def random_mask(seed: int, shape=(24, 32, 32), q: float = 0.85) -> np.ndarray:
    field = ndimage.gaussian_filter(np.random.default_rng(seed).random(shape), 2.0)
    return (field > np.quantile(field, q)).astype(np.uint8)


def to_image(arr: np.ndarray) -> sitk.Image:
    img = sitk.GetImageFromArray(arr.astype(np.uint8))
    img.SetSpacing(SPACING)
    return img


PAIRS = [(random_mask(s), random_mask(s + 100)) for s in range(3)] + [
    (random_mask(7), ndimage.binary_dilation(random_mask(7)).astype(np.uint8))
]


@pytest.mark.parametrize(("pred", "ref"), PAIRS)
def test_overlap_metrics_match_simpleitk(pred, ref) -> None:
    f = sitk.LabelOverlapMeasuresImageFilter()
    f.Execute(to_image(ref), to_image(pred))
    assert dice(pred, ref) == pytest.approx(f.GetDiceCoefficient(), abs=1e-12)
    assert jaccard(pred, ref) == pytest.approx(f.GetJaccardCoefficient(), abs=1e-12)
    assert volume_overlap_error(pred, ref) == pytest.approx(1 - f.GetJaccardCoefficient(), abs=1e-12)
    a, b = pred.ravel().astype(float), ref.ravel().astype(float)
    assert cosine_similarity(pred, ref) == pytest.approx(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.mark.parametrize(("pred", "ref"), PAIRS)
def test_surface_metrics_match_monai(pred, ref) -> None:
    def onehot(m):
        return torch.from_numpy(np.stack([1 - m, m])[None].astype(np.float32))

    spacing_zyx = SPACING[::-1]
    hd = compute_hausdorff_distance(onehot(pred), onehot(ref), spacing=spacing_zyx).item()
    hd95 = compute_hausdorff_distance(onehot(pred), onehot(ref), percentile=95, spacing=spacing_zyx).item()
    asd = compute_average_surface_distance(
        onehot(pred), onehot(ref), symmetric=True, spacing=spacing_zyx
    ).item()
    assert hausdorff_mm(pred, ref, SPACING) == pytest.approx(hd, abs=1e-4)
    assert hausdorff_mm(pred, ref, SPACING, percentile=95) == pytest.approx(hd95, abs=1e-3)
    assert mean_surface_distance(pred, ref, SPACING) == pytest.approx(asd, abs=1e-4)


@pytest.mark.parametrize(("pred", "ref"), PAIRS)
def test_hausdorff_agrees_with_simpleitk_filter(pred, ref) -> None:
    """SimpleITK measures between all voxels, MONAI/ours between edge voxels. The farthest voxel of one
    mask from the other is an edge voxel outside it, so both agree unless one mask's edge lies deep
    inside the other; allow one voxel diagonal for that."""
    f = sitk.HausdorffDistanceImageFilter()
    f.Execute(to_image(pred), to_image(ref))
    ours = hausdorff_mm(pred, ref, SPACING)
    assert abs(ours - f.GetHausdorffDistance()) <= math.sqrt(sum(s * s for s in SPACING)) + 1e-9


@pytest.mark.parametrize(("pred", "ref"), PAIRS)
def test_variation_of_information_against_entropies(pred, ref) -> None:
    joint = np.histogram2d(pred.ravel(), ref.ravel(), bins=2)[0].ravel()
    h_joint = stats.entropy(joint)
    h_a = stats.entropy(np.bincount(pred.ravel(), minlength=2))
    h_b = stats.entropy(np.bincount(ref.ravel(), minlength=2))
    assert variation_of_information(pred, ref) == pytest.approx(2 * h_joint - h_a - h_b, abs=1e-9)
    assert variation_of_information(pred, ref, base=2) == pytest.approx(
        (2 * h_joint - h_a - h_b) / math.log(2)
    )
    assert variation_of_information(pred, pred) == pytest.approx(0.0, abs=1e-12)


def test_identical_and_empty_masks() -> None:
    m = random_mask(1)
    assert dice(m, m) == jaccard(m, m) == cosine_similarity(m, m) == 1.0
    assert hausdorff_mm(m, m, SPACING) == 0.0 and mean_surface_distance(m, m, SPACING) == 0.0
    empty = np.zeros_like(m)
    assert dice(empty, empty) == 1.0 and dice(m, empty) == 0.0 and cosine_similarity(m, empty) == 0.0


def test_lesion_detection_counts() -> None:
    ref = np.zeros((20, 40, 40), np.uint8)
    ref[5:10, 5:10, 5:10] = 1  # detected
    ref[5:10, 20:25, 5:10] = 1  # detected
    ref[12:16, 30:35, 30:35] = 1  # missed
    pred = np.zeros_like(ref)
    pred[6:9, 6:9, 6:9] = 1
    pred[5:10, 22:28, 5:10] = 1
    pred[15:18, 5:8, 30:33] = 1  # false positive
    d = lesion_detection(pred, ref)
    assert (
        d.reference_lesions,
        d.predicted_lesions,
        d.detected_reference_lesions,
        d.true_positive_predictions,
    ) == (
        3,
        3,
        2,
        2,
    )
    assert (
        d.precision == pytest.approx(2 / 3)
        and d.recall == pytest.approx(2 / 3)
        and d.f1 == pytest.approx(2 / 3)
    )
    # Both 27-voxel predictions (one TP, one FP) fall under 30 mm^3; the 150-voxel one stays.
    assert lesion_detection(pred, ref, min_volume_mm3=30).predicted_lesions == 1
    none = lesion_detection(np.zeros_like(ref), ref)
    assert none.precision is None and none.recall == 0.0 and none.f1 is None


def test_lins_ccc_against_pearson_form() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(20, 5, 40)
    y = 0.9 * x + rng.normal(1, 2, 40)
    r = stats.pearsonr(x, y).statistic
    sx, sy = x.std(), y.std()
    expected = 2 * r * sx * sy / (sx**2 + sy**2 + (x.mean() - y.mean()) ** 2)
    assert lins_ccc(x, y) == pytest.approx(expected, rel=1e-12)
    assert lins_ccc(x, x) == pytest.approx(1.0)
    assert lins_ccc(x, x + 10) < 1.0  # concordance, unlike correlation, penalises a shift


def test_cohens_kappa_textbook_example() -> None:
    """50 items: yes/yes 20, yes/no 5, no/yes 10, no/no 15 -> kappa 0.4 (Cohen 1960 style example)."""
    a = ["yes"] * 25 + ["no"] * 25
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert cohens_kappa(a, b) == pytest.approx(0.4)
    responses = ["CR", "PR", "SD", "PD", "SD"]
    assert cohens_kappa(responses, responses) == pytest.approx(1.0)


def test_segmentation_agreement_bundle() -> None:
    pred, ref = PAIRS[0]
    m = segmentation_agreement(to_image(pred), to_image(ref))
    assert m.dice == pytest.approx(dice(pred, ref)) and m.hausdorff_mm == pytest.approx(
        hausdorff_mm(pred, ref, SPACING)
    )
    assert m.hausdorff95_mm == pytest.approx(hausdorff_mm(pred, ref, SPACING, 95))
    assert m.to_dict()["detection"]["reference_lesions"] >= 1
    empty = segmentation_agreement(to_image(np.zeros_like(pred)), to_image(ref))
    assert empty.hausdorff_mm is None and empty.dice == 0.0


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: dice(np.zeros((2, 2, 2)), np.zeros((2, 2, 3))), MetricInputError, "shapes"),
        (lambda: hausdorff_mm(np.zeros((4, 4, 4)), np.ones((4, 4, 4))), MetricInputError, "empty"),
        (
            lambda: hausdorff_mm(np.ones((4, 4, 4)), np.ones((4, 4, 4)), percentile=101),
            MetricInputError,
            "percentile",
        ),
        (lambda: hausdorff_mm(np.ones((4, 4, 4)), np.ones((4, 4, 4)), (1, 1)), GeometryError, "spacing"),
        (lambda: lins_ccc([1, 2], [1, 2, 3]), MetricInputError, "same length"),
        (lambda: lins_ccc([1], [1]), MetricInputError, "two pairs"),
        (lambda: cohens_kappa([], []), MetricInputError, "non-empty"),
        (
            lambda: segmentation_agreement(
                sitk.Image(4, 4, 4, sitk.sitkUInt8), sitk.Image(4, 4, 5, sitk.sitkUInt8)
            ),
            GeometryError,
            "same grid",
        ),
    ],
)
def test_bad_input(call, error, message) -> None:
    with pytest.raises(error, match=message):
        call()
