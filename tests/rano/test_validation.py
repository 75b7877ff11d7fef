"""``rano.validation`` against values computed independently: MONAI's metrics (Dice, Hausdorff, HD95,
average surface distance), SciPy (entropies, component labelling), scikit-learn (kappa, confusion) and
numpy formulas; a simulation that the patient bootstrap's 95 % CI covers the truth.

The cases are synthetic masks with known lesions (spheres of chosen radii on an anisotropic grid), small
enough that every test runs in about a second.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.metrics import compute_average_surface_distance, compute_dice, compute_hausdorff_distance
from scipy import ndimage, stats
from sklearn.metrics import cohen_kappa_score, confusion_matrix

from rano.validation import (
    ValidationCase,
    bootstrap_ci,
    evaluate_case,
    paired_agreement,
    response_agreement,
    size_bin,
    validate,
)

SPACING_XYZ = (0.9, 1.1, 1.5)  # mm, SimpleITK order
SHAPE_ZYX = (36, 56, 60)


def _balls(
    centres_zyx: list[tuple[int, int, int]], radii_mm: list[float], shape=SHAPE_ZYX, spacing=SPACING_XYZ
):  # type: ignore[no-untyped-def]
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    sx, sy, sz = spacing
    mask = np.zeros(shape, dtype=bool)
    for (cz, cy, cx), r in zip(centres_zyx, radii_mm, strict=True):
        mask |= ((z - cz) * sz) ** 2 + ((y - cy) * sy) ** 2 + ((x - cx) * sx) ** 2 <= r * r
    return mask


def _image(mask: np.ndarray, spacing=SPACING_XYZ) -> sitk.Image:  # type: ignore[no-untyped-def]
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.SetSpacing(spacing)
    return image


def _onehot(mask: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(mask.astype(np.float32))
    return torch.stack([1 - t, t])[None]  # (batch 1, background + lesion, z, y, x)


@pytest.fixture(scope="module")
def case_masks() -> tuple[np.ndarray, np.ndarray]:
    """Reference: lesions of 3, 7 and 12 mm radius. Model: the small one missed, the middle one shifted
    by one voxel, the large one grown by 1 mm, one false positive."""
    ref = _balls([(10, 15, 15), (20, 30, 40), (20, 20, 20)], [1.6, 3.5, 6.0])
    pred = _balls([(21, 30, 40), (20, 20, 20), (30, 45, 50)], [3.5, 7.0, 2.5])
    return ref, pred


def test_case_metrics_equal_monai_and_scipy(case_masks: tuple[np.ndarray, np.ndarray]) -> None:
    ref, pred = case_masks
    result = evaluate_case(ValidationCase("c1", _image(ref), _image(pred)))
    spacing_zyx = SPACING_XYZ[::-1]
    y_pred, y = _onehot(pred), _onehot(ref)

    assert result.dice == pytest.approx(float(compute_dice(y_pred, y, include_background=False)), abs=1e-6)
    hd = compute_hausdorff_distance(y_pred, y, spacing=spacing_zyx)
    hd95 = compute_hausdorff_distance(y_pred, y, percentile=95, spacing=spacing_zyx)
    msd = compute_average_surface_distance(y_pred, y, symmetric=True, spacing=spacing_zyx)
    # Same edge convention (mask minus its erosion) and exact distances: equal to rounding.
    assert result.hausdorff_mm == pytest.approx(float(hd), abs=1e-4)
    assert result.hausdorff95_mm == pytest.approx(float(hd95), abs=1e-4)
    assert result.mean_surface_distance_mm == pytest.approx(float(msd), abs=1e-4)

    inter, a, b = (ref & pred).sum(), pred.sum(), ref.sum()
    union = (ref | pred).sum()
    assert result.jaccard == pytest.approx(inter / union, abs=1e-9)
    assert result.volume_overlap_error == pytest.approx(1 - inter / union, abs=1e-9)
    assert result.cosine_similarity == pytest.approx(inter / np.sqrt(a * b), abs=1e-9)
    # VI = H(A) + H(B) - 2 I(A;B), from the joint distribution of the two binary labels (nats).
    joint = np.histogram2d(pred.ravel().astype(int), ref.ravel().astype(int), bins=2)[0] / ref.size
    h_joint = stats.entropy(joint.ravel())
    vi = 2 * h_joint - stats.entropy(joint.sum(axis=0)) - stats.entropy(joint.sum(axis=1))
    assert result.variation_of_information == pytest.approx(vi, abs=1e-9)

    # Lesion-wise: 3 reference lesions, 2 found; 3 predicted components, 1 false positive.
    structure = np.ones((3, 3, 3), bool)
    n_ref = ndimage.label(ref, structure)[1]
    n_pred = ndimage.label(pred, structure)[1]
    assert (n_ref, n_pred) == (3, 3)
    precision, recall = 2 / 3, 2 / 3
    assert result.lesion_f1 == pytest.approx(2 * precision * recall / (precision + recall))
    assert [lesion.detected for lesion in result.lesions].count(False) == 1
    assert len(result.false_positive_bins) == 1
    voxel = float(np.prod(SPACING_XYZ))
    assert result.reference_volume_mm3 == pytest.approx(b * voxel)


def test_detection_by_size_bins_each_lesion_by_its_longest_diameter(
    case_masks: tuple[np.ndarray, np.ndarray],
) -> None:
    ref, pred = case_masks
    result = validate([ValidationCase("c1", _image(ref), _image(pred))], n_resamples=50)
    by_ld = sorted(result.cases[0].lesions, key=lambda lesion: lesion.reference_ld_mm)
    # Diameters 3.2, 7 and 12 mm (voxelised: within a voxel diagonal) fall in three bins.
    assert [lesion.size_bin for lesion in by_ld] == ["<5 mm", "5-10 mm", "10-20 mm"]
    assert [lesion.detected for lesion in by_ld] == [False, True, True]
    assert by_ld[2].reference_ld_mm == pytest.approx(12.0, abs=2.0)
    table = result.detection_by_size
    assert table["<5 mm"]["sensitivity"] == 0.0 and table["10-20 mm"]["sensitivity"] == 1.0
    assert table[">20 mm"]["reference_lesions"] == 0 and table[">20 mm"]["sensitivity"] is None
    assert sum(row["false_positives"] for row in table.values()) == 1  # type: ignore[misc]
    assert (size_bin(4.99), size_bin(5.0), size_bin(19.9), size_bin(20.0)) == (
        "<5 mm",
        "5-10 mm",
        "10-20 mm",
        ">20 mm",
    )


def test_volume_and_ld_agreement_equal_numpy_formulas() -> None:
    cases = []
    for k, (r_ref, r_pred) in enumerate([(4.0, 4.5), (6.0, 5.2), (8.0, 8.8), (5.0, 5.0), (7.0, 6.1)]):
        ref = _balls([(18, 28, 30)], [r_ref])
        pred = _balls([(18, 28, 30)], [r_pred])
        cases.append(ValidationCase(f"c{k}", _image(ref), _image(pred), patient_id=f"p{k}"))
    result = validate(cases, n_resamples=200)
    lesions = [lesion for case in result.cases for lesion in case.lesions]
    ref_v = np.array([lesion.reference_volume_mm3 for lesion in lesions])
    pred_v = np.array([lesion.predicted_volume_mm3 for lesion in lesions])
    # The volumes are voxel counts times the voxel volume.
    voxel = float(np.prod(SPACING_XYZ))
    assert ref_v[0] == pytest.approx(_balls([(18, 28, 30)], [4.0]).sum() * voxel)
    cov = np.cov(ref_v, pred_v, bias=True)
    ccc = 2 * cov[0, 1] / (cov[0, 0] + cov[1, 1] + (ref_v.mean() - pred_v.mean()) ** 2)
    diff = pred_v - ref_v
    agg = result.aggregate
    assert agg["volume_ccc"] == pytest.approx(ccc, rel=1e-9)
    assert agg["volume_bias_mm3"] == pytest.approx(diff.mean(), rel=1e-9)
    assert agg["volume_loa_upper_mm3"] == pytest.approx(diff.mean() + 1.96 * diff.std(ddof=1), rel=1e-9)
    assert agg["volume_loa_lower_mm3"] == pytest.approx(diff.mean() - 1.96 * diff.std(ddof=1), rel=1e-9)
    ld = paired_agreement([x.reference_ld_mm for x in lesions], [x.predicted_ld_mm or 0.0 for x in lesions])
    assert agg["ld_ccc"] == ld.ccc and ld.n == 5
    # The CI of the mean Dice brackets the estimate and stays within [0, 1].
    low, high = result.ci95["dice"]
    assert low is not None and high is not None and 0 <= low <= agg["dice"] <= high <= 1  # type: ignore[operator]


def test_response_agreement_equals_sklearn_kappa_and_confusion() -> None:
    """Two patients followed twice: the reference shrinks a 20 mm lesion to 12 mm (PR); the model sees
    it shrink for one patient (PR) and not for the other (SD)."""
    spacing = (1.0, 1.0, 1.0)
    shape = (40, 48, 48)
    dates = [dt.date(2025, 1, 6), dt.date(2025, 3, 3), dt.date(2025, 5, 5)]
    cases = []
    for patient, model_fu in (("P1", [6.0, 6.0]), ("P2", [9.5, 9.5])):
        ref_radii, pred_radii = [10.0, 6.0, 6.0], [10.0, *model_fu]
        for visit, (r_ref, r_pred, date) in enumerate(zip(ref_radii, pred_radii, dates, strict=True)):
            ref = _image(_balls([(20, 24, 24)], [r_ref], shape, spacing), spacing)
            pred = _image(_balls([(20, 24, 24)], [r_pred], shape, spacing), spacing)
            cases.append(ValidationCase(f"{patient}-v{visit}", ref, pred, patient, date))
    agreement = response_agreement(cases)
    reference = [pair[2] for pair in agreement.pairs]
    model = [pair[3] for pair in agreement.pairs]
    assert len(agreement.pairs) == 4 and set(reference) == {"PR"}
    assert model.count("SD") == 2
    assert agreement.kappa == pytest.approx(cohen_kappa_score(reference, model))
    labels = list(agreement.categories)
    assert [list(row) for row in agreement.confusion] == confusion_matrix(
        reference, model, labels=labels
    ).tolist()


def test_signed_responses_are_the_reference_where_every_follow_up_has_one() -> None:
    """The reference masks shrink a lesion (the engine says PR), but the reader signed PD at each
    follow-up of P1 (e.g. on clinical grounds): P1's signed answers are the reference. P2 has a signed
    answer at one follow-up only, so its reference stays the engine's on the reference masks."""
    spacing = (1.0, 1.0, 1.0)
    shape = (40, 48, 48)
    dates = [dt.date(2025, 1, 6), dt.date(2025, 3, 3), dt.date(2025, 5, 5)]
    signed = {"P1": [None, "PD", "PD"], "P2": [None, "PD", None]}
    cases = []
    for patient in ("P1", "P2"):
        for visit, (radius, date) in enumerate(zip([10.0, 6.0, 6.0], dates, strict=True)):
            mask = _image(_balls([(20, 24, 24)], [radius], shape, spacing), spacing)
            cases.append(
                ValidationCase(
                    f"{patient}-v{visit}",
                    mask,
                    mask,
                    patient,
                    date,
                    reference_response=signed[patient][visit],
                )
            )
    pairs = response_agreement(cases).pairs
    assert [(p[0], p[2], p[3]) for p in pairs] == [
        ("P1", "PD", "PR"),
        ("P1", "PD", "PR"),
        ("P2", "PR", "PR"),
        ("P2", "PR", "PR"),
    ]


def test_patient_bootstrap_ci_covers_the_true_mean_in_a_simulation() -> None:
    """200 simulated studies of 20 patients (1-3 cases each, per-case values ~ N(0.7, 0.1)): the 95 %
    CI of the mean should hold 0.7 in about 95 % of them (percentile bootstrap: a little under)."""
    rng = np.random.default_rng(7)
    covered = 0
    runs = 200
    for run in range(runs):
        groups = [list(rng.normal(0.7, 0.1, size=rng.integers(1, 4))) for _ in range(20)]
        ((low, high),) = bootstrap_ci(
            groups, lambda items: [float(np.mean(items))], n_resamples=200, seed=run
        )
        assert low is not None and high is not None
        covered += low <= 0.7 <= high
    assert 0.88 <= covered / runs <= 0.99


def test_bootstrap_needs_two_patients() -> None:
    assert bootstrap_ci([[1.0, 2.0]], lambda items: [float(np.mean(items))]) == [(None, None)]
