"""False-positive reduction, lesion-wise: ``python -m bench fp_reduction``.

1. The shipped demo model on held-out phantoms WITH distractors (sinus, falx, dura, cortical and deep
   veins, choroid plexus; :func:`segmentation.phantoms.make_phantom`, 2 mm grid): every predicted
   component gets its features once (:func:`segmentation.fp_reduction.component_features`).
2. Thresholds chosen on the tuning phantoms (seeds 6000..), from a grid over every rule: the setting
   with the highest lesion-wise precision at the sensitivity of the model without the stage (no lesion
   the model found may be lost), fewest active rules on ties.
3. Reported on the test phantoms (seeds 5000..), never used for the choice: precision, sensitivity and
   false positives per study without and with the stage; the precision at fixed sensitivity is the
   precision of the chosen setting, whose test sensitivity is printed next to the baseline's.
4. The real MRI (../shared/data BraTS-MET-00110-000 t1c, never used for tuning): components without and
   with the chosen stage, what it rejected and why, and whether the largest lesion is kept.

Lesion-wise counting as :func:`segmentation.train.lesion_counts`: a reference lesion (equivalent
diameter >= 5 mm) is found when a kept component overlaps it; a kept component overlapping no reference
lesion is a false positive. ``METTRACK_FP_PHANTOMS`` sets the phantoms per set (default 20);
``METTRACK_FP_CACHE`` names a pickle file where the phantoms' components and features are kept (read
when it exists), to study other rule grids without running the network again. ``METTRACK_FP_STYLE=
realistic`` draws the phantoms in the realistic style instead (:mod:`segmentation.phantom_realism`:
dural sinuses, falx, tentorium, cortical veins, choroid plexus, pituitary, nasal mucosa and fat, scanner
variety, each at the voxel size it draws); the default is the basic style on the 2 mm grid.
"""

from __future__ import annotations

import itertools
import math
import os
import pickle
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from bench import DEFAULT_MRI

TUNE_SEED, TEST_SEED = 6000, 5000
#: Grid of every rule (None: rule off); midline width and sigmas stay at their defaults.
GRID: dict[str, list[float | None]] = {
    "max_tubularity": [None, 0.3, 0.4, 0.5, 0.6],
    "max_elongation": [None, 2.5, 3.0, 4.0, 5.0, 6.0],
    "midline_distance_mm": [None, 3.0, 5.0, 8.0],
    "min_depth_mm": [None, 2.0, 4.0, 6.0, 8.0],
    "min_shell_contrast": [None, 1.1, 1.2, 1.3],
    "keep_volume_mm3": [None, 1000.0, 4000.0],
}


@dataclass(frozen=True)
class Case:
    """One phantom's predicted components: features, and which reference lesions each overlaps."""

    seed: int
    features: tuple  # of ComponentFeatures
    overlaps: tuple[frozenset[int], ...]  # per component, reference lesion ids (>= 5 mm) it touches
    touches_any: tuple[bool, ...]  # per component, overlaps any reference lesion (of any size)
    reference: frozenset[int]  # reference lesions >= 5 mm equivalent diameter


def _style() -> str:
    return os.environ.get("METTRACK_FP_STYLE", "basic")


def without_component_stages(model: Any) -> Any:
    """``model`` with false-positive reduction, rim completion and small-lesion detection off: the
    network's components."""
    return model.with_postprocessing(fp_reduction=None, rim_completion=None, small_lesions=None)


def _case(seed: int, model, fp_config) -> Case:
    from segmentation.fp_reduction import reduce_false_positives
    from segmentation.inference import InferenceOptions, segment_image
    from segmentation.phantoms import make_phantom
    from segmentation.preprocess import preprocess

    if _style() == "realistic":
        phantom = make_phantom(seed, style="realistic")
    else:
        phantom = make_phantom(seed, geometry="axial_2mm")
    # The components as the stage sees them in the pipeline: before rim completion (which runs after it).
    result = segment_image(phantom.image, without_component_stages(model), InferenceOptions(device="cpu"))
    pre = preprocess(phantom.image, model.config.preprocessing)
    # The stage itself with no rule on: every component's features, as the pipeline computes them.
    features = reduce_false_positives(phantom.image, result.labels, pre, fp_config).features
    truth, n_t = ndi.label(sitk.GetArrayFromImage(phantom.mask) > 0, np.ones((3, 3, 3), bool))
    voxel_mm3 = float(np.prod(phantom.image.GetSpacing()))
    diam = np.cbrt(6.0 * np.bincount(truth.ravel(), minlength=n_t + 1) * voxel_mm3 / math.pi)
    reference = frozenset(i for i in range(1, n_t + 1) if diam[i] >= 5.0)
    lab = sitk.GetArrayViewFromImage(result.labels)
    overlaps, touches = [], []
    for f in features:
        hit = set(np.unique(truth[(lab == f.label) & (truth > 0)]).tolist())
        overlaps.append(frozenset(hit & reference))
        touches.append(bool(hit))
    return Case(seed, features, tuple(overlaps), tuple(touches), reference)


def _counts(cases: list[Case], config) -> tuple[int, int, int]:
    """(found, missed, false positives) over the cases with the rules of ``config`` (None: no stage)."""
    from segmentation.fp_reduction import rules_that_reject

    tp = fn = fp = 0
    for case in cases:
        found: set[int] = set()
        for f, hit, touch in zip(case.features, case.overlaps, case.touches_any, strict=True):
            if config is not None and rules_that_reject(f, config):
                continue
            found |= hit
            fp += int(not touch)
        tp += len(found)
        fn += len(case.reference - found)
    return tp, fn, fp


def _figures(counts: tuple[int, int, int], n_cases: int) -> str:
    tp, fn, fp = counts
    precision = tp / (tp + fp) if tp + fp else float("nan")
    sensitivity = tp / (tp + fn) if tp + fn else float("nan")
    return (
        f"precision {precision:.3f}, sensitivity {sensitivity:.3f} ({tp}/{tp + fn}), "
        f"false positives {fp} ({fp / n_cases:.2f} per study)"
    )


#: Rules on shape and place only: a cystic or necrotic metastasis is darker than its surroundings
#: (the real MRI's large lesion: shell contrast 0.9), so the contrast rule can remove a real lesion.
GEOMETRY_ONLY = {name: values for name, values in GRID.items() if name != "min_shell_contrast"}


def _choose(cases: list[Case], grid: dict[str, list[float | None]] = GRID):
    """The grid setting with the best precision at the baseline's sensitivity (fewest rules on ties)."""
    from segmentation.model import FpReductionConfig

    base_tp, _, _ = _counts(cases, None)
    best, best_key = None, None
    names = list(grid)
    for values in itertools.product(*(grid[n] for n in names)):
        kwargs: dict[str, Any] = dict(zip(names, values, strict=True))
        if all(v is None for k, v in kwargs.items() if k != "keep_volume_mm3") and kwargs["keep_volume_mm3"]:
            continue
        config = FpReductionConfig(**kwargs)
        tp, _, fp = _counts(cases, config)
        if tp < base_tp:
            continue
        n_rules = sum(v is not None for v in values)
        key = (-fp, -n_rules)
        if best_key is None or key > best_key:
            best, best_key = config, key
    return best


#: Axial slices (array's first index) of the large frontal lesion of the real MRI (../shared/data README).
LESION_SLICES = (55, 100)


def _real_mri(model: Any, config: Any) -> None:
    """Every component on the real MRI without the stage, its features and slices, and the stage's verdict.

    The large lesion is the largest component lying within :data:`LESION_SLICES` (the data README's
    description), not the largest component: on this image that is the superior sagittal sinus.
    """
    from segmentation.fp_reduction import reduce_false_positives, rules_that_reject
    from segmentation.inference import InferenceOptions, segment_image
    from segmentation.model import FpReductionConfig
    from segmentation.preprocess import preprocess

    path = Path(os.environ.get("METTRACK_MRI", DEFAULT_MRI))
    if not path.is_file():
        print(f"real MRI: {path} not found, skipped")
        return
    image = sitk.ReadImage(str(path))
    base = segment_image(image, without_component_stages(model), InferenceOptions(device="cpu"))
    staged = segment_image(
        image, model.with_postprocessing(fp_reduction=config), InferenceOptions(device="cpu")
    )
    # Features of every component (the stage with no rule), to show why each one stays or goes.
    pre = preprocess(image, model.config.preprocessing)
    features = reduce_false_positives(image, base.labels, pre, FpReductionConfig()).features
    lab = sitk.GetArrayViewFromImage(base.labels)
    slices = {
        f.label: (int(z.min()), int(z.max())) for f in features for z in [np.nonzero(lab == f.label)[0]]
    }
    inside = [
        f
        for f in features
        if LESION_SLICES[0] - 5 <= slices[f.label][0] and slices[f.label][1] <= LESION_SLICES[1] + 5
    ]
    lesion = max(inside, key=lambda f: f.volume_mm3) if inside else None
    verdicts = {f.label: rules_that_reject(f, config) for f in features}
    kept_lesion = lesion is not None and not verdicts[lesion.label]
    others = len(staged.lesions) - int(kept_lesion)
    print(f"real MRI {path.name}: without the stage {len(base.lesions)} components ({len(base.lesions) - int(lesion is not None)} "
          f"besides the large lesion); with it {len(staged.lesions)} ({others} besides it); large lesion kept: "
          f"{kept_lesion}; stage {staged.timings_s.get('fp_reduction', 0.0):.2f} s")  # fmt: skip
    for f in features:
        rules = verdicts[f.label]
        what = "LARGE LESION" if lesion is not None and f.label == lesion.label else "other"
        print(f"  L{f.label} {what} slices {slices[f.label][0]}-{slices[f.label][1]}: {f.volume_mm3:.0f} mm3, "
              f"elongation {f.elongation:.1f}, tubularity {f.tubularity:.2f}, midline {f.midline_distance_mm:.1f} mm "
              f"(width {f.midline_width_mm:.1f}), depth {f.depth_mm:.1f} mm, shell {f.contrast_to_shell:.2f}, "
              f"brain {f.contrast_to_brain:.2f} -> {'rejected by ' + rules[0] if rules else 'kept'}")  # fmt: skip


def _load_sets(model: Any, n: int) -> dict[str, list[Case]]:
    """The tuning and test phantoms' components (from ``METTRACK_FP_CACHE`` when it exists)."""
    from segmentation.model import FpReductionConfig

    sets: dict[str, list[Case]] = {}
    cache = Path(os.environ["METTRACK_FP_CACHE"]) if os.environ.get("METTRACK_FP_CACHE") else None
    if cache is not None and cache.is_file():
        sets = pickle.loads(cache.read_bytes())  # noqa: S301 - a file this bench wrote itself
        print(f"components and features read from {cache}")
    for name, start in (("tuning", TUNE_SEED), ("test", TEST_SEED)):
        if name in sets:
            continue
        t = time.perf_counter()
        sets[name] = [_case(seed, model, FpReductionConfig()) for seed in range(start, start + n)]
        n_comp = sum(len(c.features) for c in sets[name])
        print(f"{name} phantoms ({_style()} style) seeds {start}..{start + n - 1}: {n_comp} components, "
              f"{time.perf_counter() - t:.0f} s", flush=True)  # fmt: skip
    if cache is not None and not cache.is_file():
        cache.write_bytes(pickle.dumps(sets))
    return sets


def _print_components(sets: dict[str, list[Case]]) -> None:
    """Each false positive's features, and the range of the true positives' features."""
    for name, cases in sets.items():
        for case in cases:
            for f, touch in zip(case.features, case.touches_any, strict=True):
                if not touch:
                    print(f"  {name} seed {case.seed} false positive: {f.volume_mm3:.0f} mm3, "
                          f"elongation {f.elongation:.1f}, tubularity {f.tubularity:.2f}, "
                          f"midline {f.midline_distance_mm:.1f} mm (width {f.midline_width_mm:.1f}), "
                          f"depth {f.depth_mm:.1f} mm, shell {f.contrast_to_shell:.2f}, "
                          f"brain {f.contrast_to_brain:.2f}")  # fmt: skip
        tps = [f for c in cases for f, t in zip(c.features, c.touches_any, strict=True) if t]
        if tps:
            print(f"  {name} true positives: elongation max {max(f.elongation for f in tps):.1f}, "
                  f"tubularity max {max(f.tubularity for f in tps):.2f}, "
                  f"midline min {min(f.midline_distance_mm for f in tps):.1f} mm, "
                  f"depth min {min(f.depth_mm for f in tps):.1f} mm, "
                  f"shell contrast min {min(f.contrast_to_shell for f in tps):.2f}")  # fmt: skip


def main() -> None:
    from segmentation.model import load_model

    model = load_model()
    sets = _load_sets(model, int(os.environ.get("METTRACK_FP_PHANTOMS", "20")))
    _print_components(sets)
    for title, grid in (("every rule", GRID), ("shape and place rules only", GEOMETRY_ONLY)):
        t = time.perf_counter()
        choice = _choose(sets["tuning"], grid)
        print(f"{title}: chosen on the tuning set ({time.perf_counter() - t:.0f} s): "
              f"{choice.to_dict() if choice else None}")  # fmt: skip
        for name, cases in sets.items():
            without, with_stage = _counts(cases, None), _counts(cases, choice)
            print(f"  {name} ({len(cases)} studies) without the stage: {_figures(without, len(cases))}")
            print(f"  {name} ({len(cases)} studies) with the stage:    {_figures(with_stage, len(cases))}")
        if choice is not None:
            _real_mri(model, choice)
