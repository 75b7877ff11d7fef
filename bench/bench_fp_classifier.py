"""Second-stage lesion classifier, lesion-wise: ``python -m bench fp_classifier``.

1. The shipped demo model, its component stages off, segments phantoms of both styles: realistic
   (:mod:`segmentation.phantom_realism`, skull on odd seeds) and basic (2 mm grid), tuning seeds 6000..
   and held-out seeds 5000... Each phantom's image, probability map (compact, as the pipeline keeps it)
   and truth are written once to ``METTRACK_FPC_CACHE`` (a folder; read when present).
2. For each of :data:`VARIANTS` (split radius, hysteresis detection threshold, smallest component,
   before or after rim completion) the components are the model's thresholds applied to the
   probability map, as the pipeline draws them, then completed by the demo's rim completion or not,
   split or not; every component or piece gets its features
   (:func:`segmentation.fp_reduction.component_features`). One touching a true lesion (any size) is a
   lesion, one touching none a distractor.
3. For each of :data:`FITS` (the inputs: the image features alone or with the network's mean
   probability; the share of the tuning lesions the threshold keeps: all, or 0.97),
   :func:`segmentation.fp_classifier.fit_classifier` fits the logistic regression on the tuning
   phantoms' components (both styles) that the ``outside_brain`` rule keeps (:data:`MIN_BRAIN_FRACTION`;
   every fit is judged with that rule before it) and sets its threshold at that sensitivity (reference lesions >= 5 mm found
   by that variant's components). The same fit is cross-validated on the tuning phantoms
   (:data:`FOLDS` folds by study: each fold judged by a classifier and threshold fitted on the others).
4. Reported on the held-out phantoms, never used for the fit or the choice: precision, sensitivity
   (lesions >= 5 mm, and apart the 3-5 mm ones), lesion-wise F1 (>= 5 mm) and false positives per
   study without and with the classifier. Kept pieces that touch count as one lesion (the stage merges
   them).
5. The choice (a rule fixed before the run, on the tuning phantoms only): among the variants and fits
   with at most one cross-validated false positive per tuning study (issue 21's target), the highest
   cross-validated lesion-wise F1 for lesions >= 5 mm (its headline figure); on ties the most 3-5 mm
   lesions found, then the earlier one; only the fits of :data:`CHOSEN_FROM`. In-sample tuning figures
   are optimistic (a threshold that may lose the hardest 3 % of the tuning lesions fits them by
   construction), hence the cross-validation.
   Then the real MRI (../shared/data BraTS-MET-00110-000 t1c, never used for the fit or the choice)
   without and with the chosen stage.

``METTRACK_FPC_TUNING`` and ``METTRACK_FPC_TEST`` set the phantoms per style and set (default 40 and
30); ``METTRACK_FPC_OUT`` names a file where the chosen detection threshold, smallest component and
``fp_reduction`` section are written as JSON.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi
from scipy.cluster.hierarchy import DisjointSet

from bench import DEFAULT_MRI
from bench.bench_fp_reduction import LESION_SLICES, without_component_stages
from segmentation.model import FP_CLASSIFIER_INPUTS

TUNE_SEED, TEST_SEED = 6000, 5000
STYLES = ("realistic", "basic")


@dataclass(frozen=True)
class Component:
    """One predicted component (or piece of one): its features and what it touches in the truth."""

    features: Any  # ComponentFeatures
    lesions: frozenset[int]  # reference lesions (>= 5 mm) it overlaps
    is_lesion: bool  # overlaps any true lesion
    small: frozenset[int] = frozenset()  # 3-5 mm lesions it overlaps


@dataclass(frozen=True)
class Study:
    style: str
    seed: int
    components: tuple[Component, ...]
    reference: frozenset[int]
    touching: tuple[tuple[int, int], ...] = ()  # pairs of touching pieces (indices into components)
    small: frozenset[int] = frozenset()  # true lesions of 3-5 mm (equivalent-sphere diameter)


def _phantom(style: str, seed: int) -> Any:
    from segmentation.phantoms import make_phantom

    if style == "realistic":
        return make_phantom(seed, style="realistic", skull=bool(seed % 2))
    return make_phantom(seed, geometry="axial_2mm")


def _cached(
    folder: Path,
    style: str,
    seed: int,
    model: Any,
    detection_threshold: float | None,
    min_volume_mm3: float | None = None,
) -> tuple[sitk.Image, sitk.Image, sitk.Image, sitk.Image]:
    """(image, components, truth labels, probability) of one phantom. The network's probability map
    (compact, as the pipeline keeps it) is computed once and kept in ``folder``; the components are the
    model's thresholds applied to it, with ``detection_threshold`` for the hysteresis seed and
    ``min_volume_mm3`` (default: the model's) for the smallest component kept."""
    from segmentation.inference import InferenceOptions, lesion_components, segment_image

    here = folder / f"{style}-{seed}"
    names = ("image.mha", "probability.mha", "truth.mha")
    if not all((here / n).is_file() for n in names):
        phantom = _phantom(style, seed)
        options = InferenceOptions(device="cpu", keep_probability=True)
        result = segment_image(phantom.image, without_component_stages(model), options)
        here.mkdir(parents=True, exist_ok=True)
        for name, image in zip(names, (phantom.image, result.probability, phantom.labels), strict=True):
            sitk.WriteImage(image, str(here / name))
    image, probability, truth = (sitk.ReadImage(str(here / n)) for n in names)
    post = replace(model.config.postprocessing, detection_threshold=detection_threshold)
    smallest = post.min_lesion_volume_mm3 if min_volume_mm3 is None else min_volume_mm3
    return image, lesion_components(probability, post, smallest), truth, probability


def _touching(pieces: np.ndarray, labels: list[int]) -> tuple[tuple[int, int], ...]:
    """Pairs (indices into ``labels``) of 26-adjacent pieces."""
    index = {label: i for i, label in enumerate(labels)}
    pairs: set[tuple[int, int]] = set()
    for label, box in enumerate(ndi.find_objects(pieces), start=1):
        if box is None or label not in index:
            continue
        grown = tuple(slice(max(0, b.start - 1), b.stop + 1) for b in box)
        around = pieces[grown][ndi.binary_dilation(pieces[grown] == label, np.ones((3, 3, 3), bool))]
        for other in np.unique(around):
            if other > label and int(other) in index:
                pairs.add((index[label], index[int(other)]))
    return tuple(sorted(pairs))


#: Each phantom's preprocessing and brain masks (model and native grid), the same for every variant.
_BRAINS: dict[tuple[str, int], tuple[Any, sitk.Image, sitk.Image]] = {}


def _brain(style: str, seed: int, image: sitk.Image, model: Any) -> tuple[Any, sitk.Image, sitk.Image]:
    from segmentation.fp_reduction import brain_mask, native_brain
    from segmentation.preprocess import preprocess

    if (style, seed) not in _BRAINS:
        pre = preprocess(image, model.config.preprocessing)
        brain_model = brain_mask(pre.model_space, pre.head_mask)
        _BRAINS[style, seed] = (pre, brain_model, native_brain(brain_model, pre))
    return _BRAINS[style, seed]


def _study(
    style: str,
    seed: int,
    model: Any,
    folder: Path,
    split_radius_mm: float | None,
    detection: float | None,
    min_volume_mm3: float | None = None,
    after_rim: bool = False,
) -> Study:
    from segmentation.fp_reduction import reduce_false_positives
    from segmentation.model import FpReductionConfig
    from segmentation.rim_completion import complete_rims

    image, components, truth_image, probability = _cached(
        folder, style, seed, model, detection, min_volume_mm3
    )
    pre, brain_model, brain = _brain(style, seed, image, model)
    if after_rim:  # the components as the demo's rim completion extends them, as the pipeline would
        components = complete_rims(
            image, components, brain, model.config.postprocessing.rim_completion
        ).labels
    # The stage with no rule: the features of every component (or piece), as the pipeline computes them.
    config = FpReductionConfig(split_radius_mm=split_radius_mm)
    staged = reduce_false_positives(image, components, pre, config, brain_model, brain, probability)
    truth, n_t = ndi.label(sitk.GetArrayFromImage(truth_image) > 0, np.ones((3, 3, 3), bool))
    voxel_mm3 = float(np.prod(image.GetSpacing()))
    diam = np.cbrt(6.0 * np.bincount(truth.ravel(), minlength=n_t + 1) * voxel_mm3 / math.pi)
    reference = frozenset(i for i in range(1, n_t + 1) if diam[i] >= 5.0)
    small = frozenset(i for i in range(1, n_t + 1) if 3.0 <= diam[i] < 5.0)
    lab = sitk.GetArrayFromImage(staged.described if staged.described is not None else components)
    out = []
    for f in staged.features:
        hit = set(np.unique(truth[(lab == f.label) & (truth > 0)]).tolist())
        out.append(Component(f, frozenset(hit & reference), bool(hit), frozenset(hit & small)))
    touching = _touching(lab, [f.label for f in staged.features]) if split_radius_mm else ()
    return Study(style, seed, tuple(out), reference, touching, small)


def load_studies(
    model: Any,
    folder: Path,
    first: int,
    n: int,
    split_radius_mm: float | None,
    detection: float | None,
    min_volume_mm3: float | None = None,
    after_rim: bool = False,
) -> list[Study]:
    """Both styles' studies of seeds ``first..first + n - 1``."""
    studies = []
    for style in STYLES:
        started = time.perf_counter()
        studies += [
            _study(style, seed, model, folder, split_radius_mm, detection, min_volume_mm3, after_rim)
            for seed in range(first, first + n)
        ]
        print(f"  {style} seeds {first}..{first + n - 1}: {time.perf_counter() - started:.0f} s", flush=True)
    return studies


def counts(studies: list[Study], keep: Any = None) -> tuple[int, int, int]:
    """(found, missed, false positives) of the lesions the stage outputs; ``keep(features) -> bool``
    decides each component or piece (None: all kept). Kept pieces that touch are one output lesion (the
    stage merges them), a false positive when none of them touches a true lesion."""
    tp = fn = fp = 0
    for study in studies:
        kept = [keep is None or keep(c.features) for c in study.components]
        groups = DisjointSet(range(len(study.components)))
        for a, b in study.touching:
            if kept[a] and kept[b]:
                groups.merge(a, b)
        found: set[int] = set()
        touches: dict[int, bool] = {}
        for i, c in enumerate(study.components):
            if kept[i]:
                found |= c.lesions
                touches[groups[i]] = touches.get(groups[i], False) or c.is_lesion
        tp += len(found)
        fn += len(study.reference - found)
        fp += sum(not t for t in touches.values())
    return tp, fn, fp


def small_found(studies: list[Study], keep: Any = None) -> tuple[int, int]:
    """(found, all) of the 3-5 mm true lesions: found when a kept component or piece overlaps it."""
    found = total = 0
    for study in studies:
        hit: set[int] = set()
        for c in study.components:
            if keep is None or keep(c.features):
                hit |= c.small
        found += len(hit & study.small)
        total += len(study.small)
    return found, total


def f1(c: tuple[int, int, int]) -> float:
    """Lesion-wise F1 of (found, missed, false positives)."""
    tp, fn, fp = c
    return 2 * tp / max(2 * tp + fn + fp, 1)


def figures(c: tuple[int, int, int], n: int, small: tuple[int, int] | None = None) -> str:
    tp, fn, fp = c
    precision = tp / (tp + fp) if tp + fp else float("nan")
    text = (
        f"precision {precision:.3f}, sensitivity {tp / max(tp + fn, 1):.3f} ({tp}/{tp + fn}), "
        f"F1 {f1(c):.3f}, false positives {fp} ({fp / max(n, 1):.2f} per study)"
    )
    if small is not None:
        text += f", 3-5 mm found {small[0]}/{small[1]} ({small[0] / max(small[1], 1):.3f})"
    return text


def _real_mri(model: Any, config: Any) -> None:
    """The real MRI without the stage and with the chosen one (the demo's rim completion in both)."""
    from segmentation.inference import InferenceOptions, segment_image

    path = Path(os.environ.get("METTRACK_MRI", DEFAULT_MRI))
    if not path.is_file():
        print(f"real MRI: {path} not found, skipped")
        return
    image = sitk.ReadImage(str(path))
    runs = {}
    for name, fp in (("without the stage", None), ("with the chosen stage", config)):
        runs[name] = segment_image(
            image, model.with_postprocessing(fp_reduction=fp), InferenceOptions(device="cpu")
        )
    for name, result in runs.items():
        lab = sitk.GetArrayViewFromImage(result.labels)
        inside = {}
        for m in result.lesions:
            z = np.nonzero(lab == m.label)[0]
            inside[m.label] = LESION_SLICES[0] - 5 <= z.min() and z.max() <= LESION_SLICES[1] + 5
        # The large lesion: the largest component within its slices (the data README's description).
        lesion = max((m for m in result.lesions if inside[m.label]), key=lambda m: m.volume_mm3, default=None)
        print(f"real MRI {path.name}, {name}: {len(result.lesions)} lesions; large lesion kept: "
              f"{lesion is not None}"
              f"{f' (LD {lesion.longest_diameter_mm:.1f} mm)' if lesion else ''}; others: "
              f"{len(result.lesions) - int(lesion is not None)} (stage "
              f"{result.timings_s.get('fp_reduction', 0.0):.1f} s)")  # fmt: skip
        for m in result.lesions:
            z = np.nonzero(lab == m.label)[0]
            print(f"  L{m.label} slices {z.min()}-{z.max()}{' (the lesion slices)' if inside[m.label] else ''}: "
                  f"{m.volume_mm3:.0f} mm3, LD {m.longest_diameter_mm:.1f} mm")  # fmt: skip
        for r in result.rejected:
            f = r.features
            print(f"  rejected ({r.reason}, p {r.probability if r.probability is not None else float('nan'):.3f}): "
                  f"{f.volume_mm3:.0f} mm3, elongation {f.elongation:.1f}, depth {f.depth_mm:.1f} mm, "
                  f"midline {f.midline_distance_mm:.1f} mm")  # fmt: skip


#: Variants tried: (split radius, hysteresis detection threshold, smallest component in mm^3); None:
#: no splitting, the model's own detection threshold and smallest component. A lower detection
#: threshold finds more small lesions (their peak probability stays under the demo's 0.98) and more
#: distractors, which the classifier may then remove; 14 mm^3 (a 3 mm sphere) lets 3-5 mm lesions
#: through the demo's 65 mm^3 floor. Splitting (2 and 3 mm) was measured before (docs/benchmarks.md)
#: and is left out: it found no more lesions for many more false positives. The fourth field: the
#: components described after the demo's rim completion (``fp_reduction.after_rim_completion``), each
#: threshold pair both ways. ``METTRACK_FPC_VARIANTS`` (indices, comma-separated) runs a subset.
_THRESHOLDS: tuple[tuple[float | None, float | None], ...] = (
    (None, None), (0.9, None), (0.7, None), (0.9, 14.0), (0.7, 14.0), (0.5, 14.0),
)  # fmt: skip
VARIANTS: tuple[tuple[float | None, float | None, float | None, bool], ...] = tuple(
    (None, detection, smallest, after_rim)
    for after_rim in (False, True)
    for detection, smallest in _THRESHOLDS
)


#: Classifier fits tried on each variant's components: (name, inputs, sensitivity). ``image`` leaves
#: out the network's mean probability (the inputs of the demo's first classifier); the sensitivity is
#: the share of the tuning lesions found that the threshold keeps (1: all, the demo's rule).
_IMAGE_INPUTS = tuple(n for n in FP_CLASSIFIER_INPUTS if n != "probability_logit")
FITS: tuple[tuple[str, tuple[str, ...], float], ...] = (
    ("image, all", _IMAGE_INPUTS, 1.0),
    ("image, 0.97", _IMAGE_INPUTS, 0.97),
    ("image + probability, all", FP_CLASSIFIER_INPUTS, 1.0),
    ("image + probability, 0.97", FP_CLASSIFIER_INPUTS, 0.97),
)
#: The fits the choice is made from. The network's probability as an input put the real cystic lesion
#: under its threshold in every run so far (docs/benchmarks.md): the real scan informed this exclusion,
#: no number was fitted on it. Those fits are still reported.
CHOSEN_FROM = ("image, all", "image, 0.97")


def _report(name: str, studies: list[Study], keep: Any = None) -> None:
    for style in (*STYLES, "both"):
        subset = [s for s in studies if style in (s.style, "both")]
        print(f"    {name}, {style} ({len(subset)} studies): "
              f"{figures(counts(subset, keep), len(subset), small_found(subset, keep))}")  # fmt: skip


#: The ``outside_brain`` rule of every fit (``fp_reduction.min_brain_fraction``): a component with less
#: than half its bright voxels in the brain mask is rejected before the classifier, which is fitted on the rest.
#: A prior, not tuned: a lesion lies in the brain, and those the phantoms place at the surface keep more
#: than three quarters of their voxels in it.
MIN_BRAIN_FRACTION = 0.5


def _in_brain(features: Any) -> bool:
    return not features.brain_fraction < MIN_BRAIN_FRACTION


def _fit(studies: list[Study], inputs: tuple[str, ...], sensitivity: float, fitted_on: str = "") -> Any:
    """The classifier fitted on the components of ``studies`` that the ``outside_brain`` rule keeps
    (lesion keys unique across studies)."""
    from segmentation.fp_classifier import fit_classifier

    components = [(s, c) for s in studies for c in s.components if _in_brain(c.features)]
    return fit_classifier(
        [c.features for _, c in components],
        [c.is_lesion for _, c in components],
        [{(s.style, s.seed, lesion) for lesion in c.lesions} for s, c in components],
        inputs=inputs,
        sensitivity=sensitivity,
        fitted_on=fitted_on,
    )


def _keeper(classifier: Any) -> Any:
    from segmentation.fp_reduction import lesion_probability

    return lambda f: _in_brain(f) and lesion_probability(f, classifier) >= classifier.min_probability


#: Folds of the cross-validation on the tuning studies (by study; every fold holds both styles).
FOLDS = 5


def cross_validated(
    studies: list[Study], inputs: tuple[str, ...], sensitivity: float
) -> tuple[tuple[int, int, int], int]:
    """(found, missed, false positives) and 3-5 mm lesions found, summed over the folds: each fold's
    studies judged by the classifier (and threshold) fitted on the other folds' studies alone."""
    total, small = np.zeros(3, dtype=int), 0
    for k in range(FOLDS):
        fold = [s for i, s in enumerate(studies) if i % FOLDS == k]
        keep = _keeper(_fit([s for i, s in enumerate(studies) if i % FOLDS != k], inputs, sensitivity))
        total += counts(fold, keep)
        small += small_found(fold, keep)[0]
    return (int(total[0]), int(total[1]), int(total[2])), small


def main() -> None:
    from segmentation.model import FpReductionConfig, load_model

    model = load_model()
    folder = Path(os.environ.get("METTRACK_FPC_CACHE") or tempfile.mkdtemp(prefix="fpc-"))
    n_tune = int(os.environ.get("METTRACK_FPC_TUNING", "40"))
    n_test = int(os.environ.get("METTRACK_FPC_TEST", "30"))
    results = []
    post = model.config.postprocessing
    subset = os.environ.get("METTRACK_FPC_VARIANTS")
    chosen_variants = [VARIANTS[int(i)] for i in subset.split(",")] if subset else list(VARIANTS)
    for radius, detection, smallest, after_rim in chosen_variants:
        detection = post.detection_threshold if detection is None else detection
        smallest = post.min_lesion_volume_mm3 if smallest is None else smallest
        print(f"split radius {radius} mm, detection threshold {detection}, smallest component {smallest} "
              f"mm3, {'after' if after_rim else 'before'} rim completion; phantoms in {folder}: tuning "
              f"({n_tune} per style)", flush=True)  # fmt: skip
        tuning = load_studies(model, folder, TUNE_SEED, n_tune, radius, detection, smallest, after_rim)
        print(f"held out ({n_test} per style)", flush=True)
        test = load_studies(model, folder, TEST_SEED, n_test, radius, detection, smallest, after_rim)
        components = [c for s in tuning for c in s.components]
        print(f"tuning components: {sum(c.is_lesion for c in components)} lesions, "
              f"{sum(not c.is_lesion for c in components)} false positives")  # fmt: skip
        _report("tuning without the stage", tuning)
        _report("held out without the stage", test)
        for fit_name, inputs, sensitivity in FITS:
            fitted_on = (
                f"demo model components on phantoms of seeds {TUNE_SEED}-{TUNE_SEED + n_tune - 1}, "
                f"{' and '.join(STYLES)} styles, detection threshold {detection}, smallest component "
                f"{smallest} mm3, {'after' if after_rim else 'before'} rim completion, fit {fit_name} "
                "(python -m bench fp_classifier)"
            )
            classifier = _fit(tuning, inputs, sensitivity, fitted_on)
            print(f"  fit {fit_name}: {json.dumps(classifier.to_dict())}")
            keep = _keeper(classifier)
            validated, small = cross_validated(tuning, inputs, sensitivity)
            print(f"    tuning, {FOLDS}-fold cross-validated ({len(tuning)} studies): "
                  f"{figures(validated, len(tuning), (small, sum(len(s.small) for s in tuning)))}")  # fmt: skip
            _report("tuning, fitted on all", tuning, keep)
            _report("held out", test, keep)
            results.append(
                (
                    f1(validated),
                    small,
                    validated[2] / len(tuning),
                    radius,
                    detection,
                    smallest,
                    after_rim,
                    fit_name,
                    classifier,
                )
            )
    # Rule fixed before this run (after the previous run's held-out figures had been seen): among the
    # variants and fits with at most one cross-validated false positive per tuning study, the highest
    # cross-validated F1 (lesions >= 5 mm); on ties the most 3-5 mm lesions found, then the earlier one
    # (the model's own thresholds and the demo's fit first). The classifier written out is the chosen
    # fit on every tuning study.
    eligible = [r for r in results if r[2] <= 1.0 and r[-2] in CHOSEN_FROM] or results[:1]
    best = max(eligible, key=lambda r: (round(r[0], 6), r[1], -results.index(r)))
    *_, radius, detection, smallest, after_rim, fit_name, classifier = best
    chosen = FpReductionConfig(
        min_brain_fraction=MIN_BRAIN_FRACTION,
        classifier=classifier,
        split_radius_mm=radius,
        after_rim_completion=after_rim,
    )
    print(f"chosen: split radius {radius} mm, detection threshold {detection}, smallest component "
          f"{smallest} mm3, {'after' if after_rim else 'before'} rim completion, fit {fit_name}; section: "
          f"{json.dumps(chosen.to_dict())}")  # fmt: skip
    if os.environ.get("METTRACK_FPC_OUT"):
        choice = {"detection_threshold": detection, "min_lesion_volume_mm3": smallest}
        Path(os.environ["METTRACK_FPC_OUT"]).write_text(
            json.dumps({**choice, "fp_reduction": chosen.to_dict()}, indent=2) + "\n"
        )
    model = model.with_postprocessing(detection_threshold=detection, min_lesion_volume_mm3=smallest)
    _real_mri(model, chosen)


if __name__ == "__main__":  # pragma: no cover
    main()
