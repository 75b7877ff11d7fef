"""Validation of a segmentation model against reference contours: per case and aggregate metrics with
bootstrap confidence intervals (the paper's Table 2, plus HD95, detection by lesion size, volume and LD
agreement, and the agreement of the RANO-BM responses for longitudinal cases).

Pure: arrays and SimpleITK images in, frozen dataclasses and JSON-ready dicts out. The voxel, surface
and lesion-wise metrics are :mod:`rano.metrics`'s; measurement is :mod:`rano.measure`'s (LD as RANO-BM
defines it); responses are :func:`rano.response.assess` on :func:`rano.pipeline.observe_visits`.

Conventions:
    - A reference lesion is a 26-connected component of the reference mask (components under
      ``min_lesion_volume_mm3`` dropped); it is *detected* when a predicted voxel overlaps it. Its size
      bin is that of its longest diameter (LD, mm): < 5, 5-10, 10-20, >= 20 mm (:data:`SIZE_BINS_MM`).
    - A predicted component overlapping no reference voxel is a false positive, binned by its own LD.
    - Volume and LD agreement pair each detected reference lesion with the union of the predicted
      components overlapping it (Lin's CCC, Bland-Altman bias and 95 % limits of agreement).
    - Confidence intervals: percentile bootstrap over *patients* (all cases and lesions of a patient are
      resampled together), :func:`scipy.stats.bootstrap`.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray
from scipy import ndimage, stats

from rano.errors import GeometryError, RanoError
from rano.measure import measure_lesions_array
from rano.metrics import cohens_kappa, lins_ccc, segmentation_agreement, variation_of_information
from rano.pipeline import observe_visits
from rano.response import Criteria, VisitInput, assess
from rano.settings import ResponseSettings

#: Upper edges (mm) of the lesion-size bins; the last bin is open: < 5, 5-10, 10-20, >= 20 mm.
SIZE_BINS_MM: tuple[float, ...] = (5.0, 10.0, 20.0)
SIZE_BIN_NAMES: tuple[str, ...] = ("<5 mm", "5-10 mm", "10-20 mm", ">20 mm")

#: Per-case metrics averaged over cases in the aggregate (the paper's Table 2 plus HD95).
CASE_METRICS: tuple[str, ...] = (
    "dice",
    "jaccard",
    "volume_overlap_error",
    "mean_surface_distance_mm",
    "hausdorff_mm",
    "hausdorff95_mm",
    "variation_of_information",
    "cosine_similarity",
    "lesion_f1",
)
_STRUCTURE_26 = np.ones((3, 3, 3), dtype=bool)


class ValidationInputError(RanoError):
    """The cases cannot be validated (no case, masks on different grids, ...)."""


def size_bin(ld_mm: float) -> str:
    """Name of the size bin of a lesion's longest diameter (mm)."""
    for edge, name in zip(SIZE_BINS_MM, SIZE_BIN_NAMES, strict=False):
        if ld_mm < edge:
            return name
    return SIZE_BIN_NAMES[-1]


@dataclass(frozen=True)
class ValidationCase:
    """One image with its reference mask and the model's mask, on the same grid.

    Attributes:
        case_id: Name of the case in the report (no PHI: a pseudonymous id or a file stem).
        patient_id: The patient it belongs to (bootstrap resamples patients); default the case id.
        reference: Reference lesion mask (binary or labelled).
        prediction: The model's lesion mask on the same grid.
        visit_date: Date of the visit, for longitudinal cases (responses need at least two visits of a
            patient, all dated); None otherwise.
        image: Optional intensity image (registration of follow-ups to baseline for the responses).
        reference_response: The response a reader signed at this visit (e.g. a radiologist's confirmed
            or overridden RANO-BM response). When every follow-up of a patient has one, they are the
            reference responses; otherwise the engine's responses on the reference masks are.
    """

    case_id: str
    reference: sitk.Image
    prediction: sitk.Image
    patient_id: str = ""
    visit_date: dt.date | None = None
    image: sitk.Image | None = None
    reference_response: str | None = None

    @property
    def patient(self) -> str:
        return self.patient_id or self.case_id


@dataclass(frozen=True)
class LesionResult:
    """A reference lesion: its size, whether the model found it, and the paired measurements."""

    case_id: str
    size_bin: str
    reference_ld_mm: float
    reference_volume_mm3: float
    detected: bool
    predicted_ld_mm: float | None
    predicted_volume_mm3: float | None


@dataclass(frozen=True)
class CaseResult:
    """Metrics of one case."""

    case_id: str
    patient_id: str
    visit_date: dt.date | None
    dice: float
    jaccard: float
    volume_overlap_error: float
    cosine_similarity: float
    variation_of_information: float
    mean_surface_distance_mm: float | None
    hausdorff_mm: float | None
    hausdorff95_mm: float | None
    lesion_precision: float | None
    lesion_recall: float | None
    lesion_f1: float | None
    reference_volume_mm3: float
    predicted_volume_mm3: float
    lesions: tuple[LesionResult, ...]
    false_positive_bins: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping (lesions as a list of dicts, the date as ISO text)."""
        out = asdict(self)
        out["visit_date"] = self.visit_date.isoformat() if self.visit_date else None
        out["lesions"] = [asdict(lesion) for lesion in self.lesions]
        out["false_positive_bins"] = list(self.false_positive_bins)
        return out


def _measure(mask: NDArray[np.bool_], spacing_mm: Sequence[float]) -> tuple[float, float]:
    """LD (mm) and volume (mm^3) of one lesion's voxels, measured as RANO-BM does (rano.measure)."""
    labels = mask.astype(np.uint8)
    measured = measure_lesions_array(
        labels, spacing_mm, settings=ResponseSettings(min_lesion_volume_mm3=0.0), relabel=False
    )
    if not measured:
        return 0.0, 0.0
    return float(measured[0].longest_diameter_mm), float(measured[0].volume_mm3)


def _components(mask: NDArray[np.bool_], voxel_mm3: float, min_volume_mm3: float) -> list[NDArray[np.bool_]]:
    labels, n = ndimage.label(mask, structure=_STRUCTURE_26)
    if n == 0:
        return []
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    return [labels == k for k in range(1, n + 1) if sizes[k] * voxel_mm3 >= min_volume_mm3]


def _crop(
    a: NDArray[np.bool_], b: NDArray[np.bool_], margin: int = 2
) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """Both masks cut to the bounding box of their union, grown by ``margin`` voxels (kept in the grid)."""
    union = a | b
    if not union.any():
        return a[:1, :1, :1], b[:1, :1, :1]
    box = []
    for axis in range(union.ndim):
        other = tuple(i for i in range(union.ndim) if i != axis)
        hits = np.flatnonzero(union.any(axis=other))
        box.append(slice(max(int(hits[0]) - margin, 0), int(hits[-1]) + margin + 1))
    window = tuple(box)
    return a[window], b[window]


def evaluate_case(case: ValidationCase, *, min_lesion_volume_mm3: float = 0.0) -> CaseResult:
    """All metrics of one case.

    Raises:
        GeometryError: The two masks are not on the same grid.
    """
    ref_img, pred_img = case.reference, case.prediction
    if ref_img.GetSize() != pred_img.GetSize() or not np.allclose(
        ref_img.GetSpacing(), pred_img.GetSpacing(), atol=1e-5
    ):
        raise GeometryError(f"case {case.case_id}: prediction and reference are not on the same grid")
    spacing = ref_img.GetSpacing()
    voxel = float(np.prod(spacing))
    full_ref = sitk.GetArrayFromImage(ref_img) != 0
    full_pred = sitk.GetArrayFromImage(pred_img) != 0
    # Every metric but VI is unchanged by cropping to the lesions with a margin (edges never touch the
    # crop), and a crop makes a case of a whole head cost a fraction of a second.
    ref, pred = _crop(full_ref, full_pred)
    cropped = [sitk.GetImageFromArray(a.astype(np.uint8)) for a in (pred, ref)]
    for image in cropped:
        image.SetSpacing(spacing)
    agreement = segmentation_agreement(*cropped, min_lesion_volume_mm3=min_lesion_volume_mm3)
    # VI counts background voxels: on the whole grid, as the paper computes it.
    vi = variation_of_information(full_pred, full_ref)
    pred_labels, _ = ndimage.label(pred, structure=_STRUCTURE_26)
    lesions = []
    for component in _components(ref, voxel, min_lesion_volume_mm3):
        ref_ld, ref_volume = _measure(component, spacing)
        hit = np.unique(pred_labels[component & pred])
        hit = hit[hit != 0]
        if hit.size:
            pred_ld, pred_volume = _measure(np.isin(pred_labels, hit), spacing)
            lesions.append(
                LesionResult(case.case_id, size_bin(ref_ld), ref_ld, ref_volume, True, pred_ld, pred_volume)
            )
        else:
            lesions.append(
                LesionResult(case.case_id, size_bin(ref_ld), ref_ld, ref_volume, False, None, None)
            )
    false_positives = tuple(
        size_bin(_measure(component, spacing)[0])
        for component in _components(pred, voxel, min_lesion_volume_mm3)
        if not (component & ref).any()
    )
    det = agreement.detection
    return CaseResult(
        case_id=case.case_id,
        patient_id=case.patient,
        visit_date=case.visit_date,
        dice=agreement.dice,
        jaccard=agreement.jaccard,
        volume_overlap_error=agreement.volume_overlap_error,
        cosine_similarity=agreement.cosine_similarity,
        variation_of_information=vi,
        mean_surface_distance_mm=agreement.mean_surface_distance_mm,
        hausdorff_mm=agreement.hausdorff_mm,
        hausdorff95_mm=agreement.hausdorff95_mm,
        lesion_precision=det.precision,
        lesion_recall=det.recall,
        lesion_f1=det.f1,
        reference_volume_mm3=float(ref.sum()) * voxel,
        predicted_volume_mm3=float(pred.sum()) * voxel,
        lesions=tuple(lesions),
        false_positive_bins=false_positives,
    )


# ------------------------------------------------------------------------------------------- aggregate


@dataclass(frozen=True)
class Agreement:
    """Agreement of paired measurements: Lin's CCC, Bland-Altman bias and 95 % limits (pred - ref)."""

    n: int
    ccc: float | None
    bias: float | None
    lower_limit: float | None
    upper_limit: float | None


def paired_agreement(reference: Sequence[float], predicted: Sequence[float]) -> Agreement:
    """Lin's CCC and Bland-Altman (bias = mean difference, limits = bias +/- 1.96 SD, ddof 1)."""
    ref = np.asarray(reference, dtype=np.float64)
    pred = np.asarray(predicted, dtype=np.float64)
    if ref.size < 2:
        return Agreement(int(ref.size), None, None, None, None)
    diff = pred - ref
    bias = float(diff.mean())
    sd = float(diff.std(ddof=1))
    ccc = lins_ccc(ref.tolist(), pred.tolist())
    return Agreement(int(ref.size), ccc, bias, bias - 1.96 * sd, bias + 1.96 * sd)


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(kept)) if kept else None


def detection_by_size(cases: Sequence[CaseResult]) -> dict[str, dict[str, float | int | None]]:
    """Per size bin: reference lesions, detected, sensitivity, false positives and FP per case."""
    out: dict[str, dict[str, float | int | None]] = {}
    n_cases = len(cases)
    for name in SIZE_BIN_NAMES:
        lesions = [lesion for case in cases for lesion in case.lesions if lesion.size_bin == name]
        detected = sum(1 for lesion in lesions if lesion.detected)
        fps = sum(case.false_positive_bins.count(name) for case in cases)
        out[name] = {
            "reference_lesions": len(lesions),
            "detected": detected,
            "sensitivity": detected / len(lesions) if lesions else None,
            "false_positives": fps,
            "false_positives_per_case": fps / n_cases if n_cases else None,
        }
    return out


def aggregate(cases: Sequence[CaseResult]) -> dict[str, float | None]:
    """Scalar summary of a set of cases: mean per-case metrics, pooled lesion-wise detection, volume and
    LD agreement. Each value is what the bootstrap resamples."""
    out: dict[str, float | None] = {name: _mean([getattr(c, name) for c in cases]) for name in CASE_METRICS}
    lesions = [lesion for case in cases for lesion in case.lesions]
    detected = [lesion for lesion in lesions if lesion.detected]
    predicted = sum(len([x for x in c.lesions if x.detected]) for c in cases)  # matched reference lesions
    fps = sum(len(c.false_positive_bins) for c in cases)
    sensitivity = len(detected) / len(lesions) if lesions else None
    out["lesion_sensitivity"] = sensitivity
    out["false_positives_per_case"] = fps / len(cases) if cases else None
    # Pooled lesion-wise F1 of the whole set (per-case F1 is undefined on cases without lesions).
    precision = predicted / (predicted + fps) if predicted + fps else None
    out["pooled_lesion_f1"] = (
        2 * precision * sensitivity / (precision + sensitivity)
        if precision is not None and sensitivity is not None and precision + sensitivity > 0
        else None
    )
    volume = paired_agreement(
        [x.reference_volume_mm3 for x in detected], [x.predicted_volume_mm3 or 0.0 for x in detected]
    )
    ld = paired_agreement([x.reference_ld_mm for x in detected], [x.predicted_ld_mm or 0.0 for x in detected])
    case_volume = paired_agreement(
        [c.reference_volume_mm3 for c in cases], [c.predicted_volume_mm3 for c in cases]
    )
    out.update(
        {
            "volume_ccc": volume.ccc,
            "volume_bias_mm3": volume.bias,
            "volume_loa_lower_mm3": volume.lower_limit,
            "volume_loa_upper_mm3": volume.upper_limit,
            "ld_ccc": ld.ccc,
            "ld_bias_mm": ld.bias,
            "ld_loa_lower_mm": ld.lower_limit,
            "ld_loa_upper_mm": ld.upper_limit,
            "case_volume_ccc": case_volume.ccc,
        }
    )
    return out


def bootstrap_ci(
    groups: Sequence[Sequence[Any]],
    statistic: Callable[[list[Any]], Sequence[float | None]],
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> list[tuple[float | None, float | None]]:
    """Percentile bootstrap CIs of the values of ``statistic``, whole groups (patients) resampled.

    Args:
        groups: One sequence of items (cases) per patient.
        statistic: Items of a resample -> values (None where undefined on that resample); all values
            come from the same resamples.

    Returns:
        One (low, high) per value; (None, None) with fewer than two patients, or where the value is
        undefined on any resample (a percentile of only the defined ones would be biased).
    """
    width = len(statistic([item for group in groups for item in group]))
    if len(groups) < 2:
        return [(None, None)] * width

    def on_patients(indices: NDArray[np.float64]) -> NDArray[np.float64]:
        values = statistic([item for i in indices.astype(int) for item in groups[i]])
        return np.array([np.nan if v is None else float(v) for v in values])

    # scipy.stats.bootstrap resamples the patient indices; the statistic pools those patients' cases.
    result = stats.bootstrap(
        (np.arange(len(groups), dtype=np.float64),),
        on_patients,
        vectorized=False,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    lows = np.atleast_1d(result.confidence_interval.low)
    highs = np.atleast_1d(result.confidence_interval.high)
    return [
        (None, None) if math.isnan(low) or math.isnan(high) else (float(low), float(high))
        for low, high in zip(lows, highs, strict=True)
    ]


# ----------------------------------------------------------------------------------- responses


@dataclass(frozen=True)
class ResponseAgreement:
    """Per-visit RANO-BM overall responses of the model against the reference read."""

    pairs: tuple[tuple[str, str, str, str], ...]  # (patient, visit date, reference, model)
    kappa: float | None
    categories: tuple[str, ...]
    confusion: tuple[tuple[int, ...], ...]  # rows: reference, columns: model


def response_agreement(
    cases: Sequence[ValidationCase], settings: ResponseSettings | None = None
) -> ResponseAgreement:
    """RANO-BM responses from the reference and from the model's masks, for every patient with two or
    more dated visits (baseline excluded from the comparison: it has no response).

    The reference response of a follow-up is the one a reader signed (``reference_response``) when each
    follow-up of the patient has one, else the engine's on the reference masks. The model's is always the
    engine's on the model's masks, with ``settings`` (the trial's criteria settings where known)."""
    settings = settings or ResponseSettings()
    by_patient: dict[str, list[ValidationCase]] = {}
    for case in cases:
        if case.visit_date is not None:
            by_patient.setdefault(case.patient, []).append(case)
    pairs: list[tuple[str, str, str, str]] = []
    for patient, visits in sorted(by_patient.items()):
        if len(visits) < 2:
            continue
        visits = sorted(visits, key=lambda c: c.visit_date or dt.date.min)
        answers = []
        for attr in ("reference", "prediction"):
            masks = [getattr(v, attr) for v in visits]
            images = [v.image for v in visits] if all(v.image is not None for v in visits) else None
            observed = observe_visits(masks, images, settings)
            inputs = [
                VisitInput(visit=v.case_id, date=v.visit_date or dt.date.min, observations=o.observations)
                for v, o in zip(visits, observed, strict=True)
            ]
            result = assess(inputs, settings=settings, criteria=Criteria.RANO_BM)
            answers.append(
                [str(a.overall_response.value) if a.overall_response else "" for a in result.visits]
            )
        signed = [v.reference_response for v in visits[1:]]
        if all(signed):
            answers[0][1:] = [str(r) for r in signed]
        for visit, ref, pred in zip(visits[1:], answers[0][1:], answers[1][1:], strict=True):
            pairs.append((patient, (visit.visit_date or dt.date.min).isoformat(), ref, pred))
    categories = tuple(sorted({p[2] for p in pairs} | {p[3] for p in pairs}))
    index = {c: i for i, c in enumerate(categories)}
    table = [[0] * len(categories) for _ in categories]
    for _, _, ref, pred in pairs:
        table[index[ref]][index[pred]] += 1
    kappa = cohens_kappa([p[2] for p in pairs], [p[3] for p in pairs]) if pairs else None
    return ResponseAgreement(tuple(pairs), kappa, categories, tuple(tuple(row) for row in table))


# --------------------------------------------------------------------------------------- report


@dataclass(frozen=True)
class ValidationResult:
    """Everything of a validation: per case, aggregate with CIs, detection by size, responses."""

    cases: tuple[CaseResult, ...]
    aggregate: dict[str, float | None]
    ci95: dict[str, tuple[float | None, float | None]]
    detection_by_size: dict[str, dict[str, float | int | None]]
    responses: ResponseAgreement | None
    n_patients: int
    n_resamples: int
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping."""
        return {
            "cases": [case.to_dict() for case in self.cases],
            "aggregate": self.aggregate,
            "ci95": {name: list(value) for name, value in self.ci95.items()},
            "detection_by_size": self.detection_by_size,
            "responses": asdict(self.responses) if self.responses is not None else None,
            "n_patients": self.n_patients,
            "n_resamples": self.n_resamples,
        }


def validate(
    cases: Sequence[ValidationCase],
    *,
    min_lesion_volume_mm3: float = 0.0,
    n_resamples: int = 1000,
    seed: int = 0,
    settings: ResponseSettings | None = None,
) -> ValidationResult:
    """Validate a model's masks against the reference: per case, aggregate, 95 % CIs, responses.

    Raises:
        ValidationInputError: No case. GeometryError: a case's masks are on different grids.
    """
    if not cases:
        raise ValidationInputError("no case to validate")
    results = tuple(evaluate_case(case, min_lesion_volume_mm3=min_lesion_volume_mm3) for case in cases)
    summary = aggregate(results)
    groups: dict[str, list[CaseResult]] = {}
    for result in results:
        groups.setdefault(result.patient_id, []).append(result)
    names = list(summary)
    intervals = bootstrap_ci(
        list(groups.values()),
        lambda items: [aggregate(items)[name] for name in names],
        n_resamples=n_resamples,
        seed=seed,
    )
    ci95 = dict(zip(names, intervals, strict=True))
    longitudinal = any(case.visit_date is not None for case in cases)
    responses = response_agreement(cases, settings) if longitudinal else None
    return ValidationResult(
        cases=results,
        aggregate=summary,
        ci95=ci95,
        detection_by_size=detection_by_size(results),
        responses=responses,
        n_patients=len(groups),
        n_resamples=n_resamples,
    )


__all__ = [
    "CASE_METRICS",
    "SIZE_BINS_MM",
    "SIZE_BIN_NAMES",
    "Agreement",
    "CaseResult",
    "LesionResult",
    "ResponseAgreement",
    "ValidationCase",
    "ValidationInputError",
    "ValidationResult",
    "aggregate",
    "bootstrap_ci",
    "detection_by_size",
    "evaluate_case",
    "paired_agreement",
    "response_agreement",
    "size_bin",
    "validate",
]
