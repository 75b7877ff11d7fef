"""Agreement metrics for validating a segmentation against a reference (the paper's Table 2).

Overlap: Dice, Jaccard, volume overlap error (VOE = 1 - Jaccard), cosine similarity, variation of
information. Surface distances in mm (MONAI's convention: edge voxels are the mask minus its
6-connected erosion; distances from each edge voxel to the nearest edge voxel of the other mask):
mean (average symmetric) surface distance, Hausdorff and 95th-percentile Hausdorff. Lesion-wise
detection precision / recall / F1 (a lesion is detected when a 26-connected component of the other
mask overlaps it). Agreement of numbers and categories: Lin's concordance correlation coefficient
and Cohen's kappa.

Masks are numpy arrays laid out (z, y, x) as SimpleITK's GetArrayFromImage, with spacing given in
SimpleITK's (x, y, z) order; :func:`segmentation_agreement` takes two SimpleITK images.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray
from scipy import ndimage
from scipy.spatial import cKDTree

from rano.errors import GeometryError, RanoError

_STRUCTURE_26 = np.ones((3, 3, 3), dtype=bool)


class MetricInputError(RanoError):
    """Inputs to an agreement metric are unusable (shapes differ, too few values, ...)."""


def _pair(pred: NDArray[np.generic], ref: NDArray[np.generic]) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    a, b = np.asarray(pred) != 0, np.asarray(ref) != 0
    if a.shape != b.shape:
        raise MetricInputError(f"masks have different shapes: {a.shape} vs {b.shape}")
    return a, b


def dice(pred: NDArray[np.generic], ref: NDArray[np.generic]) -> float:
    """Dice coefficient 2|A and B| / (|A| + |B|); 1.0 when both masks are empty."""
    a, b = _pair(pred, ref)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.count_nonzero(a & b)) / total


def jaccard(pred: NDArray[np.generic], ref: NDArray[np.generic]) -> float:
    """Jaccard index |A and B| / |A or B|; 1.0 when both masks are empty."""
    a, b = _pair(pred, ref)
    union = int(np.count_nonzero(a | b))
    return 1.0 if union == 0 else int(np.count_nonzero(a & b)) / union


def volume_overlap_error(pred: NDArray[np.generic], ref: NDArray[np.generic]) -> float:
    """Volume overlap error, 1 - Jaccard."""
    return 1.0 - jaccard(pred, ref)


def cosine_similarity(pred: NDArray[np.generic], ref: NDArray[np.generic]) -> float:
    """Cosine of the two masks as binary vectors, |A and B| / sqrt(|A| |B|); 1.0 when both are empty."""
    a, b = _pair(pred, ref)
    na, nb = int(a.sum()), int(b.sum())
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return int(np.count_nonzero(a & b)) / math.sqrt(na * nb)


def variation_of_information(
    pred: NDArray[np.generic], ref: NDArray[np.generic], *, base: float = math.e
) -> float:
    """Variation of information H(A|B) + H(B|A) of the two binary labelings over all voxels.

    Args:
        base: Logarithm base (e for nats, 2 for bits).
    """
    a, b = _pair(pred, ref)
    n = a.size
    if n == 0:
        raise MetricInputError("variation of information needs at least one voxel")
    joint = (
        np.array(
            [
                [np.count_nonzero(~a & ~b), np.count_nonzero(~a & b)],
                [np.count_nonzero(a & ~b), np.count_nonzero(a & b)],
            ],
            dtype=np.float64,
        )
        / n
    )
    pa, pb = joint.sum(axis=1), joint.sum(axis=0)

    def h(p: NDArray[np.float64]) -> float:
        p = p[p > 0]
        return float(-(p * np.log(p)).sum())

    mutual = sum(
        joint[i, j] * math.log(joint[i, j] / (pa[i] * pb[j]))
        for i in range(2)
        for j in range(2)
        if joint[i, j] > 0
    )
    return (h(pa) + h(pb) - 2.0 * mutual) / math.log(base)


def _edges(mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    return mask ^ ndimage.binary_erosion(mask)


def _directed_distances(
    from_edges: NDArray[np.bool_], to_edges: NDArray[np.bool_], spacing_zyx: NDArray[np.float64]
) -> NDArray[np.float64]:
    src = np.argwhere(from_edges) * spacing_zyx
    dst = np.argwhere(to_edges) * spacing_zyx
    distances, _ = cKDTree(dst).query(src)
    return np.asarray(distances, dtype=np.float64)


def surface_distances(
    pred: NDArray[np.generic], ref: NDArray[np.generic], spacing_mm: Sequence[float] = (1.0, 1.0, 1.0)
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Distances (mm) from each edge voxel of ``pred`` to ``ref``'s edge, and from ``ref`` to ``pred``.

    Raises:
        MetricInputError: When either mask is empty (distances are undefined).
    """
    a, b = _pair(pred, ref)
    if len(spacing_mm) != a.ndim or any(s <= 0 for s in spacing_mm):
        raise GeometryError(f"spacing must give {a.ndim} positive values (x, y, z order), got {spacing_mm}")
    if not a.any() or not b.any():
        raise MetricInputError("surface distances are undefined when a mask is empty")
    spacing_zyx = np.asarray(spacing_mm, dtype=np.float64)[::-1]
    ea, eb = _edges(a), _edges(b)
    return _directed_distances(ea, eb, spacing_zyx), _directed_distances(eb, ea, spacing_zyx)


def mean_surface_distance(
    pred: NDArray[np.generic], ref: NDArray[np.generic], spacing_mm: Sequence[float] = (1.0, 1.0, 1.0)
) -> float:
    """Average symmetric surface distance (mm): mean over the edge voxels of both masks."""
    d1, d2 = surface_distances(pred, ref, spacing_mm)
    return float(np.concatenate([d1, d2]).mean())


def hausdorff_mm(
    pred: NDArray[np.generic],
    ref: NDArray[np.generic],
    spacing_mm: Sequence[float] = (1.0, 1.0, 1.0),
    percentile: float | None = None,
) -> float:
    """Symmetric Hausdorff distance (mm), or its ``percentile`` version (95 for HD95).

    The percentile is taken per direction and the larger is returned (MONAI's convention).
    """
    if percentile is not None and not 0 <= percentile <= 100:
        raise MetricInputError(f"percentile must lie in [0, 100], got {percentile}")
    d1, d2 = surface_distances(pred, ref, spacing_mm)
    if percentile is None:
        return float(max(d1.max(), d2.max()))
    return float(max(np.percentile(d1, percentile), np.percentile(d2, percentile)))


@dataclass(frozen=True)
class Detection:
    """Lesion-wise detection counts and scores (None where undefined: nothing to divide by)."""

    reference_lesions: int
    predicted_lesions: int
    detected_reference_lesions: int
    true_positive_predictions: int
    precision: float | None
    recall: float | None
    f1: float | None


def lesion_detection(
    pred: NDArray[np.generic],
    ref: NDArray[np.generic],
    spacing_mm: Sequence[float] = (1.0, 1.0, 1.0),
    min_volume_mm3: float = 0.0,
) -> Detection:
    """Lesion-wise precision, recall and F1 over 26-connected components.

    A reference lesion is detected when any predicted voxel overlaps it; a predicted component is a
    true positive when it overlaps any reference voxel. Components smaller than ``min_volume_mm3``
    are ignored in both masks.
    """
    a, b = _pair(pred, ref)
    voxel = float(np.prod(spacing_mm))

    def components(mask: NDArray[np.bool_]) -> tuple[NDArray[np.int32], list[int]]:
        labels, n = ndimage.label(mask, structure=_STRUCTURE_26)
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        keep = [k for k in range(1, n + 1) if sizes[k] * voxel >= min_volume_mm3]
        return labels, keep

    la, keep_a = components(a)
    lb, keep_b = components(b)
    hit_ref = set(np.unique(lb[a & b]).tolist())
    hit_pred = set(np.unique(la[a & b]).tolist())
    detected = sum(1 for k in keep_b if k in hit_ref)
    tp = sum(1 for k in keep_a if k in hit_pred)
    precision = tp / len(keep_a) if keep_a else None
    recall = detected / len(keep_b) if keep_b else None
    if precision is None or recall is None:
        f1 = None
    elif precision + recall == 0:
        f1 = 0.0
    else:
        f1 = 2 * precision * recall / (precision + recall)
    return Detection(len(keep_b), len(keep_a), detected, tp, precision, recall, f1)


def lins_ccc(x: Sequence[float], y: Sequence[float]) -> float:
    """Lin's concordance correlation coefficient of paired measurements (population moments)."""
    xa, ya = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if xa.shape != ya.shape or xa.ndim != 1:
        raise MetricInputError("Lin's CCC needs two 1D sequences of the same length")
    if xa.size < 2:
        raise MetricInputError("Lin's CCC needs at least two pairs")
    mx, my = xa.mean(), ya.mean()
    vx, vy = xa.var(), ya.var()
    cov = float(((xa - mx) * (ya - my)).mean())
    denominator = vx + vy + (mx - my) ** 2
    if denominator == 0:
        return 1.0  # identical constant series agree perfectly
    return 2.0 * cov / float(denominator)


def cohens_kappa(rater_a: Sequence[Hashable], rater_b: Sequence[Hashable]) -> float:
    """Cohen's kappa of two raters' categories (e.g. response categories per visit).

    Returns 1.0 when both raters use one and the same category throughout (no disagreement possible).
    """
    if len(rater_a) != len(rater_b) or not rater_a:
        raise MetricInputError("Cohen's kappa needs two non-empty rating lists of the same length")
    categories = sorted(set(rater_a) | set(rater_b), key=str)
    index = {c: i for i, c in enumerate(categories)}
    table = np.zeros((len(categories), len(categories)))
    for ra, rb in zip(rater_a, rater_b, strict=True):
        table[index[ra], index[rb]] += 1
    n = table.sum()
    observed = np.trace(table) / n
    expected = float((table.sum(axis=1) * table.sum(axis=0)).sum() / n**2)
    if expected == 1.0:
        return 1.0
    return float((observed - expected) / (1.0 - expected))


@dataclass(frozen=True)
class AgreementMetrics:
    """Segmentation agreement of a prediction with a reference (surface metrics None if a mask is empty)."""

    dice: float
    jaccard: float
    volume_overlap_error: float
    cosine_similarity: float
    variation_of_information: float
    mean_surface_distance_mm: float | None
    hausdorff_mm: float | None
    hausdorff95_mm: float | None
    detection: Detection

    def to_dict(self) -> dict[str, object]:
        """JSON-ready mapping."""
        return asdict(self)


def segmentation_agreement(
    pred: sitk.Image, ref: sitk.Image, *, min_lesion_volume_mm3: float = 0.0
) -> AgreementMetrics:
    """All voxel, surface and lesion-wise metrics of two masks on the same grid.

    Raises:
        GeometryError: When the two images are not on the same grid.
    """
    if pred.GetSize() != ref.GetSize() or not np.allclose(pred.GetSpacing(), ref.GetSpacing(), atol=1e-5):
        raise GeometryError("prediction and reference masks must lie on the same grid")
    a, b = sitk.GetArrayViewFromImage(pred) != 0, sitk.GetArrayViewFromImage(ref) != 0
    spacing = pred.GetSpacing()
    surface: tuple[float | None, float | None, float | None] = (None, None, None)
    if a.any() and b.any():
        d1, d2 = surface_distances(a, b, spacing)
        surface = (
            float(np.concatenate([d1, d2]).mean()),
            float(max(d1.max(), d2.max())),
            float(max(np.percentile(d1, 95), np.percentile(d2, 95))),
        )
    return AgreementMetrics(
        dice=dice(a, b),
        jaccard=jaccard(a, b),
        volume_overlap_error=volume_overlap_error(a, b),
        cosine_similarity=cosine_similarity(a, b),
        variation_of_information=variation_of_information(a, b),
        mean_surface_distance_mm=surface[0],
        hausdorff_mm=surface[1],
        hausdorff95_mm=surface[2],
        detection=lesion_detection(a, b, spacing, min_lesion_volume_mm3),
    )
