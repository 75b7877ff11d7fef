"""Small-lesion detection: bright blobs of 2-6 mm that the network's grid cannot resolve.

The demo network works on 2 mm voxels: a 3-5 mm metastasis covers one or two of them, its probability
stays low and its component, if any, falls under the smallest volume kept. This stage looks for such
lesions on the image itself, at a finer isotropic grid, in the manner of template matching for brain
metastases (Ambrosini et al., JMRI 2010) with a Hessian blob test in place of the templates:

1. The image inside the brain is resampled (linear) onto an isotropic grid of ``spacing_mm`` covering
   the brain and divided by the brain's median intensity.
2. Blob response: the scale-normalised negative Laplacian of Gaussian, ``-sigma^2 * LoG``, at each of
   ``sigmas_mm`` (SimpleITK's recursive Gaussian), the largest over the scales. A bright sphere of
   radius ``r`` answers most at ``sigma = r / sqrt(3)`` (Lindeberg).
3. Candidates: local maxima of the response (26-neighbourhood) inside the brain, at least
   ``min_response``, outside the components the network found (kept or rejected) grown by
   ``exclude_mm``.
4. Features of each candidate (:class:`Candidate`):

   * ``response``: the blob response at the peak (in units of the brain's median).
   * ``blobness``: from the Hessian at the peak at the scale that answered most, the smallest over the
     largest eigenvalue magnitude when all three curvatures are negative (a bright ball: near 1; a
     bright tube: near 0, its axis has no curvature; a sheet: near 0), else 0.
   * ``brightness``: the brightest voxel of the fine grid next to the peak (x brain median): a
     metastasis enhances, a patch of white matter beside darker grey matter or CSF does not.
   * ``depth_mm``: depth below the brain surface (cortical veins and the dura lie on it).
   * ``contrast``: ``brightness`` over the upper quartile of a shell 1-3 mm beyond the blob's radius
     (``sigma * sqrt(3)``) inside the brain: the blob stands above the brightest of its surroundings.
   * ``probability``: the network's largest lesion probability within that radius of the peak.
   * ``diameter_mm``: the equivalent-sphere diameter of its mask (below), once drawn.

   The shell and the probability are measured only for peaks that pass the rules on the features
   before them (on a real MRI most peaks are noise or the bend of a vessel).
5. The rules of :class:`~segmentation.model.SmallLesionConfig` (:data:`SMALL_LESION_RULES`, in order)
   keep a candidate; in order of falling response, each kept candidate's mask is drawn on the native
   grid (:func:`draw_mask`): the voxels brighter than half-way between its ``brightness`` and its
   shell's median, connected to the peak, away from every lesion drawn so far. A mask reaching farther
   than ``max_diameter_mm / 2`` from the peak is a larger bright structure (a vessel, a sinus, the wall
   of a larger lesion) and is refused, and so is one under ``min_diameter_mm``.

The filters are SimpleITK's; what is written here is the peak search and the Hessian at the peaks
only (:func:`segmentation.fp_reduction.hessian_at`): a whole-volume blob measure (SimpleITK's
``ObjectnessMeasure`` with object dimension 0) would evaluate every voxel of the brain at every scale
for the few hundred peaks the features need. The rules were chosen on phantoms by
``python -m bench small_lesions`` (README "Small-lesion detection"). Pure: no Django, arrays and images in, frozen dataclasses out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray
from scipy import ndimage as ndi

from segmentation.fp_reduction import hessian_at, logit, rounded_record
from segmentation.model import SMALL_LESION_INPUTS, SmallLesionConfig
from segmentation.probability import to_float


@dataclass(frozen=True)
class Candidate:
    """One bright blob the detector looked at (module docstring for the features).

    Attributes:
        center_mm: The peak in patient coordinates.
        sigma_mm: The scale that answered most.
        response: Scale-normalised blob response at the peak (x brain median).
        blobness: Smallest over largest Hessian eigenvalue magnitude (0-1).
        brightness: The brightest voxel next to the peak (x brain median).
        contrast: ``brightness`` over the upper quartile of the surrounding shell.
        depth_mm: Depth below the brain surface.
        probability: The network's largest lesion probability near the peak (NaN: not given).
        diameter_mm: Equivalent-sphere diameter of its mask on the native grid (0: no mask drawn).
        lesion_probability: The stage's classifier's probability that it is a lesion (NaN: not judged
            by a classifier).
        reason: The first rule that refused it, or "" when it is kept.
    """

    center_mm: tuple[float, float, float]
    sigma_mm: float
    response: float
    blobness: float
    brightness: float
    contrast: float
    depth_mm: float
    probability: float
    diameter_mm: float = 0.0
    lesion_probability: float = float("nan")
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping, rounded for reading (:func:`~segmentation.fp_reduction.rounded_record`)."""
        return rounded_record(self)


@dataclass(frozen=True)
class SmallLesionResult:
    """Output of :func:`detect_small_lesions`.

    Attributes:
        labels: The input labels with the kept candidates added after them (labels n+1, ...).
        added: The kept candidates, in the order of their new labels.
        candidates: Every candidate looked at (kept or not), for reports and tuning.
    """

    labels: sitk.Image
    added: tuple[Candidate, ...]
    candidates: tuple[Candidate, ...]


def _work_grid(image: sitk.Image, brain: sitk.Image, spacing_mm: float) -> tuple[sitk.Image, sitk.Image]:
    """The image and the brain mask resampled onto an isotropic grid over the brain's box (the
    image's direction, ``spacing_mm``, 4 mm margin)."""
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(brain)
    x0, y0, z0, sx, sy, sz = stats.GetBoundingBox(1)
    margin = [int(math.ceil(4.0 / s)) for s in image.GetSpacing()]
    lo = [max(0, v - m) for v, m in zip((x0, y0, z0), margin, strict=True)]
    hi = [
        min(n, v + s + m)
        for v, s, m, n in zip((x0, y0, z0), (sx, sy, sz), margin, image.GetSize(), strict=True)
    ]
    box = image[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    size = [
        max(1, int(round(n * s / spacing_mm))) for n, s in zip(box.GetSize(), box.GetSpacing(), strict=True)
    ]
    # The grid's first voxel centre sits half a voxel inside the box's corner.
    corner = np.asarray(box.TransformContinuousIndexToPhysicalPoint([-0.5, -0.5, -0.5]))
    direction = np.asarray(box.GetDirection()).reshape(3, 3)
    origin = corner + direction @ np.full(3, 0.5 * spacing_mm)
    ref = sitk.Image(size, sitk.sitkFloat32)
    ref.SetSpacing((spacing_mm,) * 3)
    ref.SetDirection(box.GetDirection())
    ref.SetOrigin(tuple(float(v) for v in origin))
    work = sitk.Resample(sitk.Cast(box, sitk.sitkFloat32), ref, sitk.Transform(), sitk.sitkLinear, 0.0)
    mask = sitk.Resample(brain, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    return work, mask


def blobness(eigenvalues: NDArray[np.floating[Any]]) -> NDArray[np.float64]:
    """Smallest over largest eigenvalue magnitude where all three are negative (a bright blob), else 0."""
    bright = np.all(eigenvalues < 0.0, axis=1)
    mag = np.abs(eigenvalues)
    ratio = mag.min(axis=1) / np.maximum(mag.max(axis=1), 1e-12)
    return np.where(bright, ratio, 0.0)


def find_candidates(
    image: sitk.Image,
    brain: sitk.Image,
    exclude: sitk.Image,
    config: SmallLesionConfig,
    probability: sitk.Image | None = None,
) -> tuple[list[Candidate], list[tuple[float, float]], float]:
    """Every candidate (steps 1-4 of the module docstring), with each one's (peak intensity, shell
    median) on the brain-median scale, for its mask, and the brain's median intensity that scale is
    of (1 without a brain)."""
    arr_brain = sitk.GetArrayViewFromImage(brain) > 0
    if not arr_brain.any():
        return [], [], 1.0
    native = sitk.GetArrayViewFromImage(image)
    median = float(np.median(native[arr_brain][:: max(1, int(arr_brain.sum()) // 500_000)]))
    work, mask = _work_grid(image, brain, config.spacing_mm)
    work = work / max(median, 1e-6)
    inside = sitk.GetArrayFromImage(mask) > 0
    h = config.spacing_mm
    responses = []
    smooths = []
    for sigma in config.sigmas_mm:
        smooth = sitk.SmoothingRecursiveGaussian(work, float(sigma))
        smooths.append(sitk.GetArrayFromImage(smooth))
        log = sitk.GetArrayFromImage(sitk.LaplacianRecursiveGaussian(work, float(sigma)))
        responses.append(-(float(sigma) ** 2) * log)
    stack = np.stack(responses)
    best = stack.max(axis=0)
    scale = stack.argmax(axis=0)
    # Excluded: the network's components (kept and rejected), grown by exclude_mm.
    ex = sitk.Resample(exclude, work, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    ex_arr = sitk.GetArrayViewFromImage(ex) > 0
    if config.exclude_mm > 0 and ex_arr.any():
        ex_arr = ndi.binary_dilation(ex_arr, iterations=max(1, int(round(config.exclude_mm / h))))
    peaks = (best == ndi.maximum_filter(best, size=3)) & inside & ~ex_arr & (best >= config.min_response)
    points = np.argwhere(peaks)
    if len(points) == 0:
        return [], [], median
    depth = ndi.distance_transform_edt(inside, sampling=h)
    # The stored (compact) map as it is: only each candidate's neighbourhood is converted.
    prob_arr = None if probability is None else sitk.GetArrayViewFromImage(probability)
    # The Hessian at each peak at the scale that answered most there (one padded copy per scale).
    scales = scale[tuple(points.T)]
    blob = np.zeros(len(points))
    for k in np.unique(scales):
        chosen = scales == k
        blob[chosen] = blobness(
            np.linalg.eigvalsh(hessian_at(smooths[int(k)], points[chosen], np.full(3, h)))
        )
    work_arr = sitk.GetArrayViewFromImage(work)
    peak = ndi.maximum_filter(work_arr, size=3)[tuple(points.T)]
    depth = depth[tuple(points.T)]
    # The shell and the network's probability (a loop in Python) only for the peaks that pass the
    # rules on the features above: on a real MRI most peaks are noise or a vessel's bend.
    cheap_pass = (
        (blob >= config.min_blobness) & (peak >= config.min_brightness) & (depth >= config.min_depth_mm)
    )
    out: list[Candidate] = []
    levels: list[tuple[float, float]] = []
    for i, p in enumerate(points):
        sigma = float(config.sigmas_mm[int(scales[i])])
        radius = sigma * math.sqrt(3.0)
        centre = work.TransformIndexToPhysicalPoint([int(v) for v in p[::-1]])
        shell = upper = prob = float("nan")
        if cheap_pass[i]:
            shell, upper = _shell_levels(work_arr, inside, p, radius + 1.0, radius + 3.0, h)
            if prob_arr is not None and probability is not None:
                prob = _max_near(prob_arr, probability, centre, radius)
        candidate = Candidate(
            center_mm=(float(centre[0]), float(centre[1]), float(centre[2])),
            sigma_mm=sigma,
            response=float(best[tuple(p)]),
            blobness=float(blob[i]),
            brightness=float(peak[i]),
            contrast=float(peak[i]) / max(upper, 1e-6) if cheap_pass[i] else float("nan"),
            depth_mm=float(depth[i]),
            probability=prob,
        )
        out.append(replace(candidate, reason=refusal(candidate, config)) if not cheap_pass[i] else candidate)
        levels.append((float(peak[i]), shell))
    return out, levels, median


def _shell_levels(
    arr: NDArray[Any], inside: NDArray[np.bool_], p: NDArray[np.intp], r0: float, r1: float, h: float
) -> tuple[float, float]:
    """Median and upper quartile of ``arr`` in the brain between ``r0`` and ``r1`` mm of ``p``."""
    n = int(math.ceil(r1 / h))
    lo = np.maximum(p - n, 0)
    hi = np.minimum(p + n + 1, arr.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    grid = np.ogrid[box]
    d2 = sum((g - c) ** 2 for g, c in zip(grid, p, strict=True)) * h * h
    ring = (d2 >= r0 * r0) & (d2 <= r1 * r1) & inside[box]
    values = arr[box][ring]
    if not values.size:
        return float("nan"), float("nan")
    median, upper = np.percentile(values, (50, 75))
    return float(median), float(upper)


def _max_near(prob: NDArray[Any], image: sitk.Image, centre: tuple[float, ...], radius: float) -> float:
    idx = np.asarray(image.TransformPhysicalPointToContinuousIndex(centre))[::-1]
    spacing = np.asarray(image.GetSpacing())[::-1]
    n = np.ceil(radius / spacing).astype(int)
    c = np.round(idx).astype(int)
    lo = np.maximum(c - n, 0)
    hi = np.minimum(c + n + 1, prob.shape)
    if np.any(hi <= lo):
        return 0.0
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    return float(to_float(prob[box]).max())


#: The rules of :class:`~segmentation.model.SmallLesionConfig`, in the order a refusal is named by.
SMALL_LESION_RULES = ("blobness", "brightness", "depth", "contrast", "probability", "size", "classifier")

#: Why a candidate that passed the rules has no mask: its peak lies in a lesion drawn before it.
OVERLAP = "overlap"


def refusal(candidate: Candidate, config: SmallLesionConfig) -> str:
    """The first rule (:data:`SMALL_LESION_RULES` order) that refuses ``candidate`` on its features, or ""
    (the mask's ``size`` rule is judged when the mask is drawn). A feature that could not be measured
    (NaN) fails its rule."""
    if not candidate.blobness >= config.min_blobness:
        return "blobness"
    if not candidate.brightness >= config.min_brightness:
        return "brightness"
    if not candidate.depth_mm >= config.min_depth_mm:
        return "depth"
    if not candidate.contrast >= config.min_contrast:
        return "contrast"
    if config.min_probability is not None and not candidate.probability >= config.min_probability:
        return "probability"
    return ""


def classifier_inputs(candidate: Candidate) -> dict[str, float]:
    """The :data:`~segmentation.model.SMALL_LESION_INPUTS` of a candidate whose mask is drawn: logarithms
    of its ratios and sizes, its depth capped at 20 mm (deeper means nothing more), the logit of the
    network's probability (clipped to 1e-4 .. 1 - 1e-4). A feature that was not measured stays NaN."""
    inputs = {
        "log_response": _log(candidate.response),
        "blobness": candidate.blobness,
        "log_brightness": _log(candidate.brightness),
        "log_contrast": _log(candidate.contrast),
        "depth": min(candidate.depth_mm, 20.0),
        "probability_logit": logit(candidate.probability),
        "sigma": candidate.sigma_mm,
        "log_diameter": _log(candidate.diameter_mm),
    }
    return {name: inputs[name] for name in SMALL_LESION_INPUTS}


def _log(value: float) -> float:
    return math.log(value) if value > 0 else math.nan


def draw_mask(
    image: sitk.Image,
    median: float,
    candidate: Candidate,
    level: float,
    occupied: NDArray[np.bool_],
    max_diameter_mm: float,
) -> tuple[tuple[slice, ...], NDArray[np.bool_]] | str:
    """A candidate's mask on the native grid of ``image`` (its box and the mask in it), or why there is
    none: ``"size"`` when the mask reaches farther than ``max_diameter_mm / 2`` from the peak (a larger
    bright structure), ``"overlap"`` when no voxel near the peak is free and bright enough (it belongs
    to a lesion drawn before).

    The voxels not in ``occupied`` whose intensity (over ``median``, smoothed at half a millimetre
    against noise) reaches ``level``, connected (26) to the brightest of them within a voxel of the
    peak, looked for up to two voxels beyond that distance."""
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)[::-1]
    limit = 0.5 * max_diameter_mm
    radius = limit + 2.0 * float(spacing.max())
    centre = np.asarray(image.TransformPhysicalPointToContinuousIndex(candidate.center_mm))[::-1]
    shape = np.asarray(image.GetSize())[::-1]
    n = np.ceil(radius / spacing).astype(int) + 1
    c = np.round(centre).astype(int)
    lo, hi = np.maximum(c - n, 0), np.minimum(c + n + 1, shape)
    if np.any(hi <= lo):
        return OVERLAP
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    values = sitk.GetArrayViewFromImage(image)[box].astype(np.float32) / max(median, 1e-6)
    values = ndi.gaussian_filter(values, sigma=0.5 / spacing, mode="nearest")
    grid = np.ogrid[box]
    d2 = sum(((g - x) * s) ** 2 for g, x, s in zip(grid, centre, spacing, strict=True))
    within = d2 <= radius * radius
    bright = (values >= level) & within & ~occupied[box]
    near = bright & (d2 <= float((spacing**2).sum()))
    if not near.any():
        return OVERLAP
    seed = np.unravel_index(int(np.argmax(np.where(near, values, -np.inf))), values.shape)
    pieces, _ = ndi.label(bright, np.ones((3, 3, 3), bool))
    mask = pieces == pieces[seed]
    # Beyond the limit: the bright region goes on past the largest size kept.
    if (mask & (d2 > limit * limit)).any():
        return "size"
    return box, mask


def detect_small_lesions(
    image: sitk.Image,
    labels: sitk.Image,
    exclude: sitk.Image,
    brain: sitk.Image,
    config: SmallLesionConfig,
    probability: sitk.Image | None = None,
) -> SmallLesionResult:
    """The pipeline stage: candidates away from ``exclude`` (the network's components, kept or rejected),
    the rules, and each kept candidate's mask added to ``labels`` as a new label (after the existing
    ones, in order of falling blob response).

    Args:
        image: The MRI in its native geometry.
        labels: The lesion labels so far (native grid).
        exclude: Where not to look (native grid, nonzero: the network's components).
        brain: The brain mask (native grid, :func:`segmentation.fp_reduction.native_brain`).
        config: The detector's settings and rules.
        probability: The network's probability map (native grid), for the ``probability`` feature.
    """
    candidates, levels, median = find_candidates(image, brain, exclude, config, probability)
    out = sitk.GetArrayFromImage(labels).astype(np.uint32)
    occupied = (out > 0) | (sitk.GetArrayViewFromImage(exclude) > 0)
    next_label = int(out.max()) + 1
    voxel_mm3 = float(np.prod(image.GetSpacing()))
    judged: list[Candidate] = []
    added: list[Candidate] = []
    order = sorted(range(len(candidates)), key=lambda i: -candidates[i].response)
    for i in order:
        cand = candidates[i]
        reason = refusal(cand, config)
        if reason:
            judged.append(replace(cand, reason=reason))
            continue
        peak, shell = levels[i]
        drawn = draw_mask(image, median, cand, 0.5 * (peak + shell), occupied, config.max_diameter_mm)
        if isinstance(drawn, str):
            judged.append(replace(cand, reason=drawn))
            continue
        box, mask = drawn
        diameter = float(np.cbrt(6.0 * mask.sum() * voxel_mm3 / math.pi))
        if diameter < config.min_diameter_mm:
            judged.append(replace(cand, diameter_mm=diameter, reason="size"))
            continue
        kept = replace(cand, diameter_mm=diameter)
        if config.classifier is not None:
            kept = replace(kept, lesion_probability=config.classifier.probability(classifier_inputs(kept)))
            if kept.lesion_probability < config.classifier.min_probability:
                judged.append(replace(kept, reason="classifier"))
                continue
        out[box][mask] = next_label
        occupied[box] |= mask
        next_label += 1
        added.append(kept)
        judged.append(kept)
    result = sitk.GetImageFromArray(out)
    result.CopyInformation(labels)
    return SmallLesionResult(labels=result, added=tuple(added), candidates=tuple(judged))
