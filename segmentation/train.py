"""Training and fine-tuning of the UNETR lesion segmenter (``bm-train``).

As in Dessoude et al. (NeuroImage 2025): patients split 70/10/20 (every image of a patient in one
split), flips along the sagittal axis and 180-degree in-plane rotations, BCE-with-logits loss (Dice+BCE
as an option), and ``--freeze-encoder`` to train only the final 1x1x1 output block of a pretrained
network (``--init-from``). Full training is the default.

Data sources:

* ``--data DIR``: NIfTI pairs ``<name>_mask.nii.gz`` + ``<name>_t1c.nii.gz`` (or ``<name>.nii.gz`` /
  ``<name>_image.nii.gz``); the patient id is the part of ``<name>`` before the first ``_``, so
  ``P007_v1`` and ``P007_v2`` stay in one split; ``<name>_ai_mask.nii.gz`` files are ignored;
* ``--dicom DIR``: one sub-folder per case holding an MR series and its RTSTRUCT; ROIs whose name
  matches ``--roi-pattern`` (fnmatch, default ``GTV*``) are merged into the lesion mask; the patient id is
  the DICOM PatientID;
* ``--phantoms N``: N synthetic patients from :mod:`segmentation.phantoms` (the demo model);
  ``--phantom-style realistic`` draws them from :mod:`segmentation.phantom_realism` instead, ``mixed``
  alternates the two (the style is written into the model card's ``training.data``, next to the command
  line).

Every case is preprocessed once with the model's own preprocessing and cached (``<run>/cache``).
Training samples patches (lesion-centred with probability ``--positive-fraction``), validates after
each epoch with sliding-window inference (Dice and lesion-wise F1), writes ``<run>/last.pt`` every
epoch (``--resume`` continues from it, RNG states included), and exports the best model so far as a
complete model directory (``--export``), evaluated on the held-out test split.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import hashlib
import json
import logging
import math
import os
import platform
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from monai.inferers import sliding_window_inference
from scipy import ndimage as ndi
from tqdm import tqdm

from segmentation import phantoms
from segmentation.errors import ImagingError
from segmentation.model import (
    DeviceUnavailableError,
    ModelConfig,
    build_network,
    library_versions,
    load_model,
    load_state_dict_checked,
    resolve_device,
    save_model_dir,
)
from segmentation.modeldir import DEMO_LABEL
from segmentation.preprocess import PreprocessConfig, mask_to_model_space, preprocess

log = logging.getLogger("segmentation.train")


class TrainingError(ValueError):
    """Training cannot start or continue with the given data or options."""


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaseSource:
    """Where one training case comes from (before preprocessing).

    Attributes:
        case_id: Unique name of the case.
        patient_id: Patient it belongs to (splits are per patient).
        load: Returns ``(image, mask)`` on the native grid.
    """

    case_id: str
    patient_id: str
    load: Callable[[], tuple[sitk.Image, sitk.Image]]
    #: Identifies the source's content (file sizes and times): part of the cache key, so a corrected
    #: mask or another dataset with the same case names is not served from a stale cache.
    fingerprint: str = ""


def _files_fingerprint(paths: Sequence[Path]) -> str:
    parts = []
    for path in sorted(paths):
        stat = path.stat()
        parts.append(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class CachedCase:
    """A preprocessed case in model space.

    Attributes:
        case_id: Unique name.
        patient_id: Patient id.
        image: Network input (z, y, x), float32.
        mask: Lesion mask (z, y, x), uint8.
        spacing_mm: Model voxel size (x, y, z).
    """

    case_id: str
    patient_id: str
    image: np.ndarray
    mask: np.ndarray
    spacing_mm: tuple[float, float, float]


_IMAGE_SUFFIXES = ("_t1c.nii.gz", "_image.nii.gz", ".nii.gz", "_t1c.nii", "_image.nii", ".nii")


#: ``<name>_ai_mask.nii[.gz]``: the AI's original mask kept next to a reader-corrected one (MetTrack's
#: training sets); not a training pair.
AI_MASK_SUFFIX = re.compile(r".*_ai_mask\.nii(\.gz)?$")


def nifti_pair_sources(directory: str | Path) -> list[CaseSource]:
    """Find ``<name>_mask.nii[.gz]`` files and their images in ``directory`` (``<name>_ai_mask.nii[.gz]``
    files, an AI's mask kept for comparison, are not masks to train on).

    Raises:
        TrainingError: When the folder has no mask, or a mask has no image.
    """
    root = Path(directory)
    masks = [
        path
        for path in sorted(root.glob("*_mask.nii.gz")) + sorted(root.glob("*_mask.nii"))
        if not AI_MASK_SUFFIX.match(path.name)
    ]
    if not masks:
        raise TrainingError(f"no <name>_mask.nii.gz files in {root}")
    out = []
    for mask_path in masks:
        name = re.sub(r"_mask\.nii(\.gz)?$", "", mask_path.name)
        found = next((root / f"{name}{s}" for s in _IMAGE_SUFFIXES if (root / f"{name}{s}").is_file()), None)
        if found is None:
            raise TrainingError(f"mask {mask_path.name} has no image ({name}_t1c.nii.gz or {name}.nii.gz)")
        image_path: Path = found

        def _load(i: Path = image_path, m: Path = mask_path) -> tuple[sitk.Image, sitk.Image]:
            return sitk.ReadImage(str(i)), sitk.ReadImage(str(m))

        out.append(
            CaseSource(
                case_id=name,
                patient_id=name.split("_")[0],
                load=_load,
                fingerprint=_files_fingerprint([image_path, mask_path]),
            )
        )
    return out


def dicom_rtstruct_sources(directory: str | Path, roi_pattern: str = "GTV*") -> list[CaseSource]:
    """One case per sub-folder holding an MR series and an RTSTRUCT; ROIs matching ``roi_pattern``.

    The series is read by :func:`segmentation.io.read_series` and the RTSTRUCT rasterised on its grid by
    :func:`segmentation.contours.read_rtstruct`; the matching ROIs are merged into one mask.

    Raises:
        TrainingError: When a folder lacks the RTSTRUCT, or no ROI name matches the pattern.
    """
    import pydicom

    root = Path(directory)
    out = []
    for case_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        files = [f for f in case_dir.rglob("*") if f.is_file()]
        rtstructs, patient = [], None
        for f in files:
            try:
                ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["Modality", "PatientID"])
            except Exception:  # not DICOM: ignore, as a PACS export folder may hold other files
                continue
            if getattr(ds, "Modality", "") == "RTSTRUCT":
                rtstructs.append(f)
            patient = patient or str(getattr(ds, "PatientID", "") or case_dir.name)
        if not rtstructs:
            raise TrainingError(f"no RTSTRUCT in {case_dir}")

        def _load(d: Path = case_dir, rt: Path = rtstructs[0]) -> tuple[sitk.Image, sitk.Image]:
            from segmentation.contours import read_rtstruct
            from segmentation.io import read_series

            series = read_series(d, require_rtstruct_attributes=False)
            contours = read_rtstruct(rt, series)
            values = [v for v, n in contours.names.items() if fnmatch.fnmatch(n, roi_pattern)]
            if not values:
                raise TrainingError(
                    f"no ROI in {rt.name} matches {roi_pattern!r} (ROIs: {', '.join(contours.names.values())})"
                )
            labels = sitk.GetArrayViewFromImage(contours.labels)
            mask = sitk.GetImageFromArray(np.isin(labels, values).astype(np.uint8))
            mask.CopyInformation(series.image)
            return series.image, mask

        out.append(
            CaseSource(
                case_id=case_dir.name,
                patient_id=patient or case_dir.name,
                load=_load,
                fingerprint=_files_fingerprint(files),
            )
        )
    if not out:
        raise TrainingError(f"no case folders in {root}")
    return out


#: Acquisition protocols the synthetic training set draws from (the 0.5 mm one is left out: slow).
TRAINING_GEOMETRIES = ("axial_1mm", "sagittal_1mm", "coronal_0p9x0p9x1p2mm", "axial_0p9x0p9x2mm", "axial_2mm")


def phantom_sources(n_patients: int, seed: int, style: str = "basic") -> list[CaseSource]:
    """``n_patients`` synthetic patients (one visit each).

    ``basic`` (the demo model's data): cycling through :data:`TRAINING_GEOMETRIES`. ``realistic``: each
    patient draws its scanner, protocol (0.5-1.2 mm voxels), artefacts, anatomy variant, noise and lesions
    from :mod:`segmentation.phantom_realism`; skull and bias field vary as for ``basic``. ``mixed``: even
    patients ``basic``, odd ones ``realistic`` (each drawn exactly as in its own style), so a model learns
    the realistic distractors without losing what the basic style teaches; the patient split stays by
    patient, so every split holds both.
    """
    if style not in phantoms.PHANTOM_SET_STYLES:
        raise TrainingError(
            f"phantom style must be one of {', '.join(phantoms.PHANTOM_SET_STYLES)}, got {style!r}"
        )
    out = []
    for i in range(n_patients):

        def _load(i: int = i) -> tuple[sitk.Image, sitk.Image]:
            rng = np.random.default_rng([seed, i])
            if style == "realistic" or (style == "mixed" and i % 2 == 1):
                ph = phantoms.make_phantom(
                    int(rng.integers(2**31 - 1)),
                    style="realistic",
                    skull=bool(rng.random() < 0.5),
                    bias_field_strength=float(rng.uniform(0.0, 0.35)),
                )
                return ph.image, ph.mask
            ph = phantoms.make_phantom(
                int(rng.integers(2**31 - 1)),
                geometry=TRAINING_GEOMETRIES[i % len(TRAINING_GEOMETRIES)],
                skull=bool(rng.random() < 0.5),
                noise_fraction=float(rng.uniform(0.01, 0.05)),
                bias_field_strength=float(rng.uniform(0.0, 0.35)),
            )
            return ph.image, ph.mask

        out.append(
            CaseSource(case_id=f"phantom{seed}-{i:04d}", patient_id=f"phantom{seed}-{i:04d}", load=_load)
        )
    return out


def prepare_case(source: CaseSource, pre: PreprocessConfig, cache_dir: Path | None) -> CachedCase:
    """Preprocess one case with the model's preprocessing (cached under ``<cache>/``).

    The cache key covers the case name, the source's fingerprint and the preprocessing settings, so a
    changed mask or a run with other preprocessing never reuses stale arrays.

    Raises:
        TrainingError: The image or mask cannot be read, or the mask is not on the image's grid.
    """
    settings = json.dumps(dataclasses.asdict(pre), sort_keys=True, default=str)
    digest = hashlib.sha256(f"{settings}|{source.fingerprint}".encode()).hexdigest()[:12]
    key = re.sub(r"[^A-Za-z0-9_.-]", "_", source.case_id)
    path = cache_dir / f"{key}-{digest}.npz" if cache_dir else None
    if path is not None and path.is_file():
        with np.load(path) as z:
            return CachedCase(source.case_id, source.patient_id, z["image"], z["mask"], pre.spacing_mm)
    try:
        image, mask = source.load()
    except RuntimeError as exc:  # SimpleITK / ITK reading errors
        raise TrainingError(
            f"case {source.case_id}: cannot read its image or mask ({str(exc).strip().splitlines()[-1][:160]})"
        ) from exc
    _check_same_grid(source.case_id, image, mask)
    p = preprocess(image, pre)
    arr = p.array.astype(np.float32)
    m = mask_to_model_space(mask, p)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, image=arr, mask=m)
        tmp.replace(path)
    return CachedCase(source.case_id, source.patient_id, arr, m, pre.spacing_mm)


def _check_same_grid(case_id: str, image: sitk.Image, mask: sitk.Image) -> None:
    """Refuse a mask that is not on its image's grid (it would be resampled to nothing, silently)."""
    if image.GetDimension() != 3 or mask.GetDimension() != 3:
        raise TrainingError(
            f"case {case_id}: image and mask must be 3D (got {image.GetDimension()}D and {mask.GetDimension()}D)"
        )
    problems = []
    if image.GetSize() != mask.GetSize():
        problems.append(f"size {mask.GetSize()} vs {image.GetSize()}")
    if not np.allclose(image.GetSpacing(), mask.GetSpacing(), rtol=1e-4, atol=1e-4):
        problems.append(f"spacing {mask.GetSpacing()} vs {image.GetSpacing()}")
    if not np.allclose(image.GetOrigin(), mask.GetOrigin(), atol=1e-2):
        problems.append(f"origin {mask.GetOrigin()} vs {image.GetOrigin()}")
    if not np.allclose(image.GetDirection(), mask.GetDirection(), atol=1e-4):
        problems.append("direction")
    if problems:
        raise TrainingError(
            f"case {case_id}: the mask is not on the image's grid ({'; '.join(problems)}); "
            "export both from the same series"
        )


def split_patients(
    patient_ids: Sequence[str], seed: int, fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
) -> dict[str, str]:
    """Assign each patient to ``train``, ``val`` or ``test`` (70/10/20 by default), reproducibly.

    With three or more patients, validation and test get at least one patient each.

    Raises:
        TrainingError: With fewer than three patients or fractions not summing to 1.
    """
    unique = sorted(set(patient_ids))
    if len(unique) < 3:
        raise TrainingError(f"need at least 3 patients for a train/val/test split, got {len(unique)}")
    if abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise TrainingError(f"split fractions must be >= 0 and sum to 1, got {fractions}")
    order = np.random.default_rng(seed).permutation(len(unique))
    n = len(unique)
    n_val = max(1, round(fractions[1] * n))
    n_test = max(1, round(fractions[2] * n))
    n_train = n - n_val - n_test
    if n_train < 1:
        raise TrainingError(f"{n} patients leave none for training")
    out = {}
    for rank, idx in enumerate(order):
        out[unique[idx]] = "train" if rank < n_train else ("val" if rank < n_train + n_val else "test")
    return out


# --------------------------------------------------------------------------------------------------
# Sampling and augmentation
# --------------------------------------------------------------------------------------------------


def extract_patch(array: np.ndarray, center_zyx: Sequence[int], size_zyx: Sequence[int]) -> np.ndarray:
    """A ``size_zyx`` patch centred on ``center_zyx``, zero-padded where it leaves the array."""
    out = np.zeros(tuple(size_zyx), dtype=array.dtype)
    src, dst = [], []
    for c, s, n in zip(center_zyx, size_zyx, array.shape, strict=True):
        lo = int(c) - s // 2
        a, b = max(lo, 0), min(lo + s, n)
        src.append(slice(a, b))
        dst.append(slice(a - lo, b - lo))
    out[tuple(dst)] = array[tuple(src)]
    return out


class PatchSampler:
    """Random training patches: lesion-centred with probability ``positive_fraction``; centred on a
    bright voxel away from every lesion (an enhancing vessel, dura, falx or choroid plexus: the false
    positives a post-contrast model makes) with probability ``hard_negative_fraction``; else anywhere in
    the head."""

    def __init__(
        self,
        cases: Sequence[CachedCase],
        patch_zyx: Sequence[int],
        positive_fraction: float,
        rng: np.random.Generator,
        hard_negative_fraction: float = 0.0,
    ):
        if not cases:
            raise TrainingError("no training cases")
        if (
            positive_fraction < 0
            or hard_negative_fraction < 0
            or positive_fraction + hard_negative_fraction > 1
        ):
            raise TrainingError("positive and hard-negative fractions must be >= 0 and sum to at most 1")
        self.cases = list(cases)
        self.patch = tuple(int(v) for v in patch_zyx)
        self.positive_fraction = positive_fraction
        self.hard_negative_fraction = hard_negative_fraction
        self.rng = rng
        self.lesion_voxels = [np.argwhere(c.mask > 0) for c in self.cases]
        self.head_voxels = [np.argwhere(c.image[::2, ::2, ::2] > 0) * 2 for c in self.cases]
        self.bright_voxels = [bright_non_lesion_voxels(c.image, c.mask) for c in self.cases]

    def sample(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """``batch_size`` (image, mask) patches as arrays (B, 1, z, y, x)."""
        images, masks = [], []
        for _ in range(batch_size):
            k = int(self.rng.integers(len(self.cases)))
            case = self.cases[k]
            pos, bright = self.lesion_voxels[k], self.bright_voxels[k]
            u = self.rng.random()
            if len(pos) and u < self.positive_fraction:
                center = pos[self.rng.integers(len(pos))] + self.rng.integers(
                    -self.patch[0] // 4, self.patch[0] // 4 + 1, 3
                )
            elif len(bright) and u < self.positive_fraction + self.hard_negative_fraction:
                center = bright[self.rng.integers(len(bright))] + self.rng.integers(
                    -self.patch[0] // 4, self.patch[0] // 4 + 1, 3
                )
            else:
                head = self.head_voxels[k]
                center = (
                    head[self.rng.integers(len(head))] if len(head) else np.asarray(case.image.shape) // 2
                )
            images.append(extract_patch(case.image, center, self.patch))
            masks.append(extract_patch(case.mask, center, self.patch))
        return np.stack(images)[:, None], np.stack(masks)[:, None]


def bright_non_lesion_voxels(
    image: np.ndarray, mask: np.ndarray, percentile: float = 99.0, margin: int = 3
) -> np.ndarray:
    """Voxels (z, y, x) brighter than ``percentile`` of the head and more than ``margin`` voxels from any
    lesion: where enhancing non-lesion tissue lies. At most 20,000, evenly subsampled."""
    head = image > 0
    if not head.any():
        return np.zeros((0, 3), dtype=np.int64)
    cut = float(np.percentile(image[head], percentile))
    near_lesion = (
        ndi.binary_dilation(mask > 0, iterations=margin) if mask.any() else np.zeros(mask.shape, bool)
    )
    idx = np.argwhere((image >= cut) & ~near_lesion)
    return idx[:: max(1, len(idx) // 20000)]


def augment(
    images: torch.Tensor, masks: torch.Tensor, rng: np.random.Generator, intensity: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's augmentations, per sample: flip along the sagittal (left-right) axis, and a
    180-degree rotation in the axial plane; optionally a random intensity scale and shift.

    Arrays are (B, C, z, y, x) in RAS orientation, so left-right is the last axis and the axial plane is
    (y, x).
    """
    images, masks = images.clone(), masks.clone()
    for b in range(images.shape[0]):
        if rng.random() < 0.5:
            images[b] = torch.flip(images[b], dims=(-1,))
            masks[b] = torch.flip(masks[b], dims=(-1,))
        if rng.random() < 0.5:
            images[b] = torch.rot90(images[b], k=2, dims=(-2, -1))
            masks[b] = torch.rot90(masks[b], k=2, dims=(-2, -1))
        if intensity:
            head = images[b] > 0
            scale, shift = float(rng.uniform(0.85, 1.15)), float(rng.uniform(-0.08, 0.08))
            images[b] = torch.where(head, (images[b] * scale + shift).clamp(0.0, 1.0), images[b])
    return images, masks


# --------------------------------------------------------------------------------------------------
# Loss, metrics
# --------------------------------------------------------------------------------------------------


def lesion_logit(output: torch.Tensor) -> torch.Tensor:
    """The lesion logit (B, 1, ...): the single channel, or for two-channel softmax output the logit
    difference (softmax over two classes equals the sigmoid of that difference)."""
    if output.shape[1] == 1:
        return output
    return output[:, 1:2] - output[:, 0:1]


def segmentation_loss(logit: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """``bce``: BCE with logits (the paper). ``dicebce``: soft Dice (batch-wise) + BCE with logits."""
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logit, target)
    if kind == "bce":
        return bce
    if kind != "dicebce":
        raise TrainingError(f"unknown loss {kind!r}; use 'bce' or 'dicebce'")
    prob = torch.sigmoid(logit)
    inter = (prob * target).sum()
    dice = (2 * inter + 1.0) / (prob.sum() + target.sum() + 1.0)
    return bce + (1.0 - dice)


def dice_score(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two binary arrays (1.0 when both are empty)."""
    p, t = pred > 0, truth > 0
    denom = int(p.sum()) + int(t.sum())
    return 1.0 if denom == 0 else 2.0 * int((p & t).sum()) / denom


@dataclass(frozen=True)
class LesionCounts:
    """Lesion-wise detection counts.

    Attributes:
        true_positive: Reference lesions (>= the size limit) overlapped by the prediction.
        false_negative: Reference lesions (>= the size limit) missed.
        false_positive: Predicted components overlapping no reference lesion.
    """

    true_positive: int = 0
    false_negative: int = 0
    false_positive: int = 0

    def __add__(self, other: LesionCounts) -> LesionCounts:
        return LesionCounts(
            self.true_positive + other.true_positive,
            self.false_negative + other.false_negative,
            self.false_positive + other.false_positive,
        )

    @property
    def f1(self) -> float:
        """Lesion-wise F1 = 2 TP / (2 TP + FP + FN); 1.0 when there is nothing to find or flag."""
        denom = 2 * self.true_positive + self.false_positive + self.false_negative
        return 1.0 if denom == 0 else 2 * self.true_positive / denom


def lesion_counts(
    pred: np.ndarray,
    truth: np.ndarray,
    spacing_mm: Sequence[float],
    min_diameter_mm: float = 5.0,
    min_pred_volume_mm3: float = 5.0,
) -> LesionCounts:
    """Lesion-wise detection with 26-connected components.

    A reference lesion counts when its equivalent-sphere diameter is >= ``min_diameter_mm``; it is found
    when any predicted voxel overlaps it. A predicted component (>= ``min_pred_volume_mm3``) is a false
    positive when it overlaps no reference lesion at all (of any size).
    """
    voxel_mm3 = float(np.prod(spacing_mm))
    structure = np.ones((3, 3, 3), dtype=bool)
    t_lab, n_t = ndi.label(truth > 0, structure)
    p_lab, n_p = ndi.label(pred > 0, structure)
    tp = fn = fp = 0
    if n_t:
        t_vol = np.bincount(t_lab.ravel(), minlength=n_t + 1)[1:] * voxel_mm3
        t_diam = np.cbrt(6.0 * t_vol / math.pi)
        hit = np.zeros(n_t + 1, dtype=bool)
        hit[np.unique(t_lab[(p_lab > 0) & (t_lab > 0)])] = True
        for i in range(1, n_t + 1):
            if t_diam[i - 1] >= min_diameter_mm:
                tp += int(hit[i])
                fn += int(not hit[i])
    if n_p:
        p_vol = np.bincount(p_lab.ravel(), minlength=n_p + 1) * voxel_mm3
        overlapping = np.zeros(n_p + 1, dtype=bool)
        overlapping[np.unique(p_lab[(p_lab > 0) & (t_lab > 0)])] = True
        for j in range(1, n_p + 1):
            if p_vol[j] >= min_pred_volume_mm3 and not overlapping[j]:
                fp += 1
    return LesionCounts(tp, fn, fp)


def remove_small_components(
    mask: np.ndarray, spacing_mm: Sequence[float], min_volume_mm3: float
) -> np.ndarray:
    """Drop 26-connected components smaller than ``min_volume_mm3``; uint8 output."""
    lab, n = ndi.label(mask > 0, np.ones((3, 3, 3), dtype=bool))
    if n == 0:
        return np.zeros(mask.shape, dtype=np.uint8)
    vol = np.bincount(lab.ravel()) * float(np.prod(spacing_mm))
    keep = vol >= min_volume_mm3
    keep[0] = False
    return keep[lab].astype(np.uint8)


@torch.no_grad()
def predict_probability(
    network: torch.nn.Module, array_zyx: np.ndarray, config: ModelConfig, device: torch.device | str = "cpu"
) -> np.ndarray:
    """Sliding-window lesion probability of one model-space array (z, y, x); float32."""
    roi = tuple(int(v) for v in config.inference.roi_size)[::-1]  # config is (x, y, z), arrays (z, y, x)
    x = torch.from_numpy(np.ascontiguousarray(array_zyx, dtype=np.float32))[None, None].to(device)
    network.eval()
    out = sliding_window_inference(
        x,
        roi_size=roi,
        sw_batch_size=config.inference.sw_batch_size,
        predictor=lambda t: lesion_logit(network(t)),
        overlap=config.inference.overlap,
        mode=config.inference.mode,
    )
    assert isinstance(out, torch.Tensor)  # a tensor predictor gives a tensor back
    return torch.sigmoid(out)[0, 0].float().cpu().numpy()


@dataclass(frozen=True)
class _Components:
    """The components of ``probability >= threshold`` of one case, tabulated against its reference so that
    every (detection threshold, smallest component) pair is scored without labelling again."""

    volume_mm3: np.ndarray  # per component
    peak: np.ndarray  # highest probability per component
    overlap_voxels: np.ndarray  # voxels shared with the reference mask, per component
    hits: tuple[np.ndarray, ...]  # per counted reference lesion: the components that overlap it
    voxel_mm3: float
    reference_voxels: int


def _tabulate(
    prob: np.ndarray, truth: np.ndarray, spacing_mm: Sequence[float], threshold: float, min_diameter_mm: float
) -> _Components:
    voxel_mm3 = float(np.prod(spacing_mm))
    structure = np.ones((3, 3, 3), dtype=bool)
    p_lab, n_p = ndi.label(prob >= threshold, structure)
    t_lab, n_t = ndi.label(truth > 0, structure)
    index = np.arange(1, n_p + 1)
    volume = np.bincount(p_lab.ravel(), minlength=n_p + 1)[1:] * voxel_mm3
    peak = np.asarray(ndi.maximum(prob, p_lab, index=index)) if n_p else np.zeros(0)
    overlap = np.bincount(p_lab[truth > 0].ravel(), minlength=n_p + 1)[1:]
    hits = []
    if n_t:
        t_diam = np.cbrt(6.0 * np.bincount(t_lab.ravel(), minlength=n_t + 1)[1:] * voxel_mm3 / math.pi)
        both = (p_lab > 0) & (t_lab > 0)
        pairs = (
            np.unique(np.stack([t_lab[both], p_lab[both]]), axis=1) if both.any() else np.zeros((2, 0), int)
        )
        for i in range(1, n_t + 1):
            if t_diam[i - 1] >= min_diameter_mm:
                hits.append(pairs[1, pairs[0] == i] - 1)  # 0-based component indices
    return _Components(volume, peak, overlap, tuple(hits), voxel_mm3, int((truth > 0).sum()))


def _score(tables: Sequence[_Components], detection: float | None, min_volume_mm3: float) -> dict[str, Any]:
    inter = total = 0
    tp = fn = fp = 0
    per_case = []
    for t in tables:
        kept = t.volume_mm3 >= min_volume_mm3
        if detection is not None:
            kept &= t.peak >= detection
        pred_voxels = int(round(t.volume_mm3[kept].sum() / t.voxel_mm3))
        shared = int(t.overlap_voxels[kept].sum())
        inter += shared
        total += pred_voxels + t.reference_voxels
        denom = pred_voxels + t.reference_voxels
        per_case.append(1.0 if denom == 0 else 2.0 * shared / denom)
        fp += int((kept & (t.overlap_voxels == 0)).sum())
        found = sum(bool(kept[h].any()) for h in t.hits)
        tp += found
        fn += len(t.hits) - found
    counts = LesionCounts(tp, fn, fp)
    return {
        "dice": 1.0 if total == 0 else 2.0 * inter / total,
        "mean_case_dice": float(np.mean(per_case)) if per_case else float("nan"),
        "lesion_f1": counts.f1,
        "lesion_tp": tp,
        "lesion_fn": fn,
        "lesion_fp": fp,
        "cases": len(tables),
        "min_lesion_volume_mm3": min_volume_mm3,
        "detection_threshold": detection,
    }


def selection_score(metrics: dict[str, Any]) -> float:
    """What picks the best epoch and the calibrated post-processing: the mean of Dice and lesion F1
    (both are targets; Dice alone rewards a model that finds big lesions and many false ones)."""
    return 0.5 * (float(metrics["dice"]) + float(metrics["lesion_f1"]))


#: Post-processing grid searched on the validation patients by :func:`evaluate` with ``calibrate=True``:
#: extent threshold x detection (hysteresis) threshold x smallest component.
CALIBRATION_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
CALIBRATION_DETECTION_THRESHOLDS = (None, 0.8, 0.9, 0.95, 0.98)
CALIBRATION_MIN_VOLUMES_MM3 = (5.0, 15.0, 30.0, 65.0)


def evaluate(
    network: torch.nn.Module,
    cases: Sequence[CachedCase],
    config: ModelConfig,
    min_diameter_mm: float = 5.0,
    device: torch.device | str = "cpu",
    calibrate: bool = False,
) -> dict[str, Any]:
    """Dice (over all voxels of all cases) and lesion-wise F1 (lesions >= ``min_diameter_mm``), in model space,
    with the post-processing of ``config`` (:meth:`PostprocessConfig.binarise`, then the smallest
    components dropped).

    With ``calibrate``, the extent threshold, the detection threshold and the smallest component are
    chosen from :data:`CALIBRATION_THRESHOLDS` x :data:`CALIBRATION_DETECTION_THRESHOLDS` x
    :data:`CALIBRATION_MIN_VOLUMES_MM3` to maximise :func:`selection_score` on these cases (use
    validation cases only); the result's ``threshold``, ``detection_threshold`` and
    ``min_lesion_volume_mm3`` say what was used.
    """
    probs = [predict_probability(network, case.image, config, device) for case in cases]
    post = config.postprocessing
    thresholds = CALIBRATION_THRESHOLDS if calibrate else (post.threshold,)
    detections = CALIBRATION_DETECTION_THRESHOLDS if calibrate else (post.detection_threshold,)
    volumes = CALIBRATION_MIN_VOLUMES_MM3 if calibrate else (post.min_lesion_volume_mm3,)
    best: dict[str, Any] | None = None
    for threshold in thresholds:
        tables = [
            _tabulate(prob, case.mask, case.spacing_mm, threshold, min_diameter_mm)
            for prob, case in zip(probs, cases, strict=True)
        ]
        for detection in detections:
            if detection is not None and detection <= threshold:
                continue  # no hysteresis: the same as None
            for volume in volumes:
                result = {**_score(tables, detection, volume), "threshold": threshold}
                if best is None or selection_score(result) > selection_score(best):
                    best = result
    assert best is not None
    return best


# --------------------------------------------------------------------------------------------------
# Training loop
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainOptions:
    """Options of one training run (see ``bm-train --help`` for each)."""

    run_dir: Path
    export_dir: Path | None
    epochs: int = 50
    steps_per_epoch: int = 100
    batch_size: int = 2
    learning_rate: float = 1e-4
    loss: str = "bce"
    freeze_encoder: bool = False
    positive_fraction: float = 0.6
    hard_negative_fraction: float = 0.0
    calibrate: bool = True
    intensity_augmentation: bool = False
    seed: int = 0
    resume: bool = False
    max_minutes: float | None = None
    threads: int | None = None
    device: str = "auto"
    lesion_prior: float | None = 0.01
    grad_clip_norm: float | None = 1.0
    command: str = ""


def set_output_prior(network: torch.nn.Module, prior: float) -> None:
    """Start the lesion output at probability ``prior`` (bias of the final 1x1x1 conv).

    Lesions are a tiny fraction of the voxels; starting from p = 0.5 everywhere wastes the first epochs
    on learning "background" (the usual prior initialisation of detection heads).
    """
    if not 0.0 < prior < 1.0:
        raise TrainingError(f"lesion prior must be within (0, 1), got {prior}")
    conv = network.get_submodule("out.conv.conv")
    bias = getattr(conv, "bias", None)
    if not isinstance(bias, torch.Tensor):
        raise TrainingError("the output block has no bias to initialise")
    logit = math.log(prior / (1.0 - prior))
    with torch.no_grad():
        if bias.numel() == 1:
            bias.fill_(logit)
        else:  # two-channel softmax: background 0, lesion logit
            bias.zero_()
            bias[1] = logit


def freeze_all_but_output(network: torch.nn.Module) -> int:
    """Freeze every parameter except the final 1x1x1 output block (``network.out``); returns how many
    parameters stay trainable."""
    out = getattr(network, "out", None)
    if not isinstance(out, torch.nn.Module):
        raise TrainingError("the network has no 'out' block to fine-tune")
    for p in network.parameters():
        p.requires_grad_(False)
    for p in out.parameters():
        p.requires_grad_(True)
    return int(sum(p.numel() for p in out.parameters()))


def _rng_state(rng: np.random.Generator) -> dict[str, Any]:
    return dict(rng.bit_generator.state)


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def model_card(config: ModelConfig) -> str:
    """Markdown model card generated from a model config."""
    d = config.to_dict()
    tr = d.get("training", {})
    m = d.get("metrics", {})
    lines = [
        f"# {config.name} {config.version}",
        "",
        f"**{config.label}**" if config.label else "",
        "",
        f"Intended use: {config.intended_use}",
        "",
        "## Architecture",
        "```json",
        json.dumps(d["architecture"], indent=2),
        "```",
        "## Postprocessing (threshold, components, false-positive reduction, rim completion, small lesions)",
        "```json",
        json.dumps(d["postprocessing"], indent=2),
        "```",
        "## Training",
        "```json",
        json.dumps(tr, indent=2, ensure_ascii=False),
        "```",
        "## Metrics (model space, see training.metrics_note)",
        "```json",
        json.dumps(m, indent=2),
        "```",
    ]
    return "\n".join(lines) + "\n"


def _device_for(options: TrainOptions) -> torch.device:
    """Check the options that need no data, apply the thread count, and choose the device."""
    if options.epochs < 1 or options.steps_per_epoch < 1 or options.batch_size < 1:
        raise TrainingError("epochs, steps_per_epoch and batch_size must be >= 1")
    if options.loss not in ("bce", "dicebce"):
        raise TrainingError(f"unknown loss {options.loss!r}; use 'bce' or 'dicebce'")
    if options.threads:
        torch.set_num_threads(options.threads)
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(options.threads)
    try:
        return resolve_device(options.device)
    except DeviceUnavailableError as exc:
        raise TrainingError(f"--device: {exc}") from exc


def _initial_network(
    config: ModelConfig, options: TrainOptions, init_from: Path | None
) -> tuple[torch.nn.Module, int]:
    """The network to train (from ``init_from``, or fresh with the lesion prior) and its trainable count."""
    torch.manual_seed(options.seed)
    network = build_network(config)
    if init_from is not None:
        init = load_model(init_from)
        load_state_dict_checked(network, init.network.state_dict(), str(init_from))
        log.info("initialised from %s", init_from)
    elif options.lesion_prior is not None:
        set_output_prior(network, options.lesion_prior)
    n_trainable = (
        freeze_all_but_output(network)
        if options.freeze_encoder
        else sum(p.numel() for p in network.parameters())
    )
    return network, n_trainable


@dataclass
class _RunState:
    """What a checkpoint carries between epochs (and across a ``--resume``)."""

    history: list[dict[str, Any]]
    best: dict[str, Any]
    start_epoch: int = 0


def _resume(
    last_path: Path,
    config: ModelConfig,
    network: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    rng: np.random.Generator,
    device: torch.device,
) -> _RunState:
    """Restore a run's network, optimizer, random states and history from its last checkpoint."""
    run_dir = last_path.parent
    ckpt = torch.load(last_path, map_location="cpu", weights_only=False)
    saved = ckpt.get("config")
    if saved is not None and saved != config.to_dict():
        current = config.to_dict()
        differ = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
        raise TrainingError(
            f"--resume: the run in {run_dir} was started with another model config (differs in: "
            f"{', '.join(differ)}); resume with the same options or start a new --run-dir"
        )
    try:
        network.load_state_dict(ckpt["network"])
    except RuntimeError as exc:
        raise TrainingError(
            f"--resume: the checkpoint in {run_dir} does not fit this network; start a new --run-dir"
        ) from exc
    network.to(device)
    optimizer.load_state_dict(ckpt["optimizer"])
    rng.bit_generator.state = ckpt["rng"]
    torch.set_rng_state(ckpt["torch_rng"])
    state = _RunState(history=ckpt["history"], best=ckpt["best"], start_epoch=ckpt["epoch"] + 1)
    log.info(
        "resumed from %s at epoch %d (best dice %.4f)",
        last_path,
        state.start_epoch,
        state.best.get("dice", -1),
    )
    return state


def _train_epoch(
    network: torch.nn.Module,
    sampler: PatchSampler,
    optimizer: torch.optim.Optimizer,
    options: TrainOptions,
    rng: np.random.Generator,
    device: torch.device,
    epoch: int,
) -> list[float]:
    """One epoch of ``steps_per_epoch`` optimiser steps on sampled, augmented patches; the step losses."""
    network.train()
    losses: list[float] = []
    bar = tqdm(range(options.steps_per_epoch), desc=f"epoch {epoch}", mininterval=30, file=sys.stderr)
    for _ in bar:
        img, msk = sampler.sample(options.batch_size)
        x, y = augment(
            torch.from_numpy(img), torch.from_numpy(msk).float(), rng, options.intensity_augmentation
        )
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad(set_to_none=True)
        loss = segmentation_loss(lesion_logit(network(x)), y, options.loss)
        loss.backward()
        if options.grad_clip_norm:
            torch.nn.utils.clip_grad_norm_(network.parameters(), options.grad_clip_norm)
        optimizer.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
    return losses


def _epoch_entry(
    epoch: int, losses: list[float], val: dict[str, Any], train_s: float, val_s: float, started: float
) -> dict[str, Any]:
    """The history row of one epoch (logged as it is recorded)."""
    entry = {
        "epoch": epoch,
        "loss": float(np.mean(losses)),
        "val_dice": val["dice"],
        "val_lesion_f1": val["lesion_f1"],
        "val_threshold": val["threshold"],
        "val_min_lesion_volume_mm3": val["min_lesion_volume_mm3"],
        "val_detection_threshold": val["detection_threshold"],
        "train_s": round(train_s, 1),
        "val_s": round(val_s, 1),
        "elapsed_min": round((time.time() - started) / 60.0, 1),
    }
    log.info(
        "epoch %d loss %.4f val dice %.4f lesion F1 %.3f (tp %d fn %d fp %d; threshold %.2f, detection %s, "
        "min %.0f mm3) train %.0fs val %.0fs",
        epoch, entry["loss"], val["dice"], val["lesion_f1"], val["lesion_tp"], val["lesion_fn"],
        val["lesion_fp"], val["threshold"], val["detection_threshold"], val["min_lesion_volume_mm3"],
        train_s, entry["val_s"],
    )  # fmt: skip
    return entry


def train(
    config: ModelConfig,
    sources: Sequence[CaseSource],
    options: TrainOptions,
    init_from: Path | None = None,
    data_description: str = "",
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train (or fine-tune) a UNETR; returns the run summary (history, best metrics).

    ``on_epoch`` is called with each epoch's history entry (its ``epoch`` counts from 0), e.g. to show
    the progress of a background job.

    Raises:
        TrainingError: On bad options, too few patients, or an init checkpoint that does not fit.
    """
    device = _device_for(options)
    run_dir = options.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    split = split_patients([s.patient_id for s in sources], options.seed)

    log.info("preparing %d cases (cache %s)", len(sources), run_dir / "cache")
    cases = {"train": [], "val": [], "test": []}  # type: dict[str, list[CachedCase]]
    for src in tqdm(sources, desc="preprocess", mininterval=10, file=sys.stderr):
        cases[split[src.patient_id]].append(prepare_case(src, config.preprocessing, run_dir / "cache"))
    log.info("split by patient: %s", {k: len(v) for k, v in cases.items()})

    network, n_trainable = _initial_network(config, options, init_from)
    optimizer = torch.optim.AdamW(
        [p for p in network.parameters() if p.requires_grad], lr=options.learning_rate, weight_decay=1e-5
    )
    network.to(device)
    rng = np.random.default_rng(options.seed)
    state = _RunState(history=[], best={"dice": -1.0})
    last_path = run_dir / "last.pt"
    if options.resume and last_path.is_file():
        state = _resume(last_path, config, network, optimizer, rng, device)

    sampler = PatchSampler(
        cases["train"],
        config.inference.roi_size[::-1],
        options.positive_fraction,
        rng,
        options.hard_negative_fraction,
    )
    for epoch in range(state.start_epoch, options.epochs):
        t0 = time.time()
        losses = _train_epoch(network, sampler, optimizer, options, rng, device, epoch)
        train_s = time.time() - t0
        t1 = time.time()
        val = evaluate(network, cases["val"], config, device=device, calibrate=options.calibrate)
        state.history.append(_epoch_entry(epoch, losses, val, train_s, time.time() - t1, started))
        if on_epoch is not None:
            on_epoch(state.history[-1])
        if "score" not in state.best or selection_score(val) > state.best["score"]:
            state.best = {"epoch": epoch, "score": selection_score(val), **val}
            _atomic_torch_save({k: v.cpu() for k, v in network.state_dict().items()}, run_dir / "best.pt")
            if options.export_dir is not None:
                chosen = replace(
                    config,
                    # replace, not a new PostprocessConfig: the config's other settings (the
                    # false-positive reduction rules) stay with the exported model.
                    postprocessing=replace(
                        config.postprocessing,
                        threshold=float(val["threshold"]),
                        min_lesion_volume_mm3=float(val["min_lesion_volume_mm3"]),
                        detection_threshold=val["detection_threshold"],
                    ),
                )
                test = evaluate(network, cases["test"], chosen, device=device)
                log.info("best so far: test dice %.4f lesion F1 %.3f", test["dice"], test["lesion_f1"])
                export_model(
                    network, chosen, options, state.best, test, state.history, n_trainable, len(sources), split,
                    data_description, time.time() - started, init_from,
                )  # fmt: skip
        _atomic_torch_save(
            {
                "network": network.state_dict(),
                "optimizer": optimizer.state_dict(),
                "rng": _rng_state(rng),
                "torch_rng": torch.get_rng_state(),
                "history": state.history,
                "best": state.best,
                "epoch": epoch,
                "config": config.to_dict(),
            },
            last_path,
        )
        if options.max_minutes is not None and (time.time() - started) / 60.0 >= options.max_minutes:
            log.info("time limit of %.1f min reached after epoch %d", options.max_minutes, epoch)
            break
    summary = {"history": state.history, "best": state.best, "split": {k: len(v) for k, v in cases.items()}}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def export_model(
    network: torch.nn.Module,
    config: ModelConfig,
    options: TrainOptions,
    best_val: dict[str, Any],
    test: dict[str, Any],
    history: list[dict[str, Any]],
    n_trainable: int,
    n_cases: int,
    split: dict[str, str],
    data_description: str,
    duration_s: float,
    init_from: Path | None,
) -> Path:
    """Write the current network as a complete model directory with provenance and metrics."""
    assert options.export_dir is not None
    counts = {k: sum(1 for v in split.values() if v == k) for k in ("train", "val", "test")}
    extra = dict(config.extra)
    extra["versions"] = library_versions()
    extra["training"] = {
        "command": options.command,
        "seed": options.seed,
        "data": data_description,
        "cases": n_cases,
        "patients_per_split": counts,
        "loss": options.loss,
        "freeze_encoder": options.freeze_encoder,
        "init_from": str(init_from) if init_from else None,
        "trainable_parameters": n_trainable,
        "learning_rate": options.learning_rate,
        "batch_size": options.batch_size,
        "steps_per_epoch": options.steps_per_epoch,
        "augmentations": ["flip sagittal axis p=0.5", "rotate 180 deg in axial plane p=0.5"]
        + (["intensity scale 0.85-1.15 and shift +-0.08"] if options.intensity_augmentation else []),
        "positive_fraction": options.positive_fraction,
        "hard_negative_fraction": options.hard_negative_fraction,
        "postprocessing_calibrated": options.calibrate,
        "selection": "epoch with the best mean of validation Dice and lesion F1"
        + (
            f"; extent threshold, detection threshold and smallest component chosen on the validation "
            f"patients from {list(CALIBRATION_THRESHOLDS)} x {list(CALIBRATION_DETECTION_THRESHOLDS)} x "
            f"{list(CALIBRATION_MIN_VOLUMES_MM3)} mm3"
            if options.calibrate
            else ""
        ),
        "lesion_prior": options.lesion_prior if init_from is None else None,
        "grad_clip_norm": options.grad_clip_norm,
        "best_epoch": best_val.get("epoch"),
        "epochs_run": len(history),
        "duration_min": round(duration_s / 60.0, 1),
        "machine": f"{platform.machine()} {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}, "
        + ("CUDA " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"),
        "history": history,
        "metrics_note": "Dice over all voxels and lesion-wise F1 (reference lesions >= 5 mm equivalent "
        "diameter, any overlap = found) on the model-space grid of held-out patients",
    }
    extra["metrics"] = {
        "validation": {
            k: best_val[k] for k in ("dice", "lesion_f1", "lesion_tp", "lesion_fn", "lesion_fp", "cases")
        },
        "test": {
            k: test[k]
            for k in ("dice", "mean_case_dice", "lesion_f1", "lesion_tp", "lesion_fn", "lesion_fp", "cases")
        },
    }
    cfg = replace(config, extra=extra)
    return save_model_dir(network, cfg, options.export_dir, card=model_card(cfg))


def evaluate_native(
    model_dir: Path, sources: Sequence[CaseSource], device: str = "auto", min_diameter_mm: float = 5.0
) -> dict[str, Any]:
    """Whole-pipeline evaluation on the native grid: ``bm-segment``'s inference on each case, Dice over all
    voxels and lesion-wise F1 (reference lesions >= ``min_diameter_mm``) against the native masks."""
    from segmentation.inference import InferenceOptions, segment_image

    model = load_model(model_dir)
    inter = total = 0
    counts = LesionCounts()
    per_case = []
    for src in tqdm(sources, desc="evaluate", mininterval=10, file=sys.stderr):
        image, mask = src.load()
        result = segment_image(image, model, InferenceOptions(device=device))
        p = sitk.GetArrayViewFromImage(result.mask) > 0
        t = sitk.GetArrayViewFromImage(mask) > 0
        inter += int((p & t).sum())
        total += int(p.sum()) + int(t.sum())
        per_case.append({"case": src.case_id, "dice": dice_score(p, t)})
        counts = counts + lesion_counts(
            p, t, image.GetSpacing(), min_diameter_mm, model.config.postprocessing.min_lesion_volume_mm3
        )
    return {
        "dice": 1.0 if total == 0 else 2.0 * inter / total,
        "mean_case_dice": float(np.mean([c["dice"] for c in per_case])) if per_case else float("nan"),
        "lesion_f1": counts.f1,
        "lesion_tp": counts.true_positive,
        "lesion_fn": counts.false_negative,
        "lesion_fp": counts.false_positive,
        "cases": len(per_case),
        "per_case": per_case,
    }


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def demo_config(
    spacing_mm: float = 2.0,
    patch: int = 48,
    feature_size: int = 8,
    hidden_size: int = 144,
    num_heads: int = 4,
) -> ModelConfig:
    """The demo model's config: a small UNETR on ``spacing_mm`` isotropic voxels, sigmoid output."""
    return ModelConfig.from_dict(
        {
            "name": "demo-unetr",
            "version": "0.1.0",
            "label": DEMO_LABEL,
            "intended_use": "Demonstration and testing of MetTrack on synthetic data. "
            "Demo — not for clinical use: trained on synthetic lesions only.",
            "architecture": {
                "name": "UNETR",
                "in_channels": 1,
                "out_channels": 1,
                "img_size": [patch] * 3,
                "feature_size": feature_size,
                "hidden_size": hidden_size,
                "mlp_dim": hidden_size * 4,
                "num_heads": num_heads,
                "proj_type": "conv",
                "norm_name": "instance",
                "res_block": True,
                "dropout_rate": 0.0,
            },
            "preprocessing": PreprocessConfig(
                spacing_mm=(spacing_mm,) * 3, n4_shrink_factor=3, n4_iterations=(25, 25, 15)
            ).to_dict(),
            "inference": {"roi_size": [patch] * 3, "sw_batch_size": 4, "overlap": 0.25, "mode": "gaussian"},
            "postprocessing": {"threshold": 0.5, "min_lesion_volume_mm3": 5.0},
        }
    )


def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``bm-train``."""
    p = argparse.ArgumentParser(prog="bm-train", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", type=Path, help="folder of <name>_t1c.nii.gz + <name>_mask.nii.gz pairs")
    src.add_argument("--dicom", type=Path, help="folder with one sub-folder (MR series + RTSTRUCT) per case")
    src.add_argument("--phantoms", type=int, metavar="N", help="train on N synthetic patients")
    p.add_argument("--roi-pattern", default="GTV*", help="RTSTRUCT ROI names to use (fnmatch; default GTV*)")
    p.add_argument("--phantom-seed", type=int, default=1000, help="seed of the synthetic patients")
    p.add_argument(
        "--phantom-style",
        choices=phantoms.PHANTOM_SET_STYLES,
        default="basic",
        help="basic (the demo model's phantoms), realistic (segmentation.phantom_realism: rims, "
        "distractors, scanner variety, artefacts, warped anatomy) or mixed (alternate patients)",
    )
    p.add_argument(
        "--evaluate",
        type=Path,
        metavar="MODEL_DIR",
        help="only evaluate MODEL_DIR with the whole inference pipeline on the native grid of the given data",
    )
    p.add_argument("--config", type=Path, help="model config.json to train (default: the demo architecture)")
    p.add_argument("--init-from", type=Path, help="model directory whose weights initialise the network")
    p.add_argument(
        "--freeze-encoder", action="store_true", help="train only the final 1x1x1 output block (the paper)"
    )
    p.add_argument("--run-dir", type=Path, default=Path("runs/train"), help="checkpoints, cache and log")
    p.add_argument("--export", type=Path, help="write the best model so far here as a model directory")
    p.add_argument("--model-name", help="name of the exported model (default: the config's, demo-unetr)")
    p.add_argument("--model-version", help="version of the exported model (default: the config's)")
    p.add_argument(
        "--label",
        help="label of the exported model, shown wherever its results appear (default: the config's; "
        "the demo architecture's is 'demo — not for clinical use')",
    )
    p.add_argument("--intended-use", help="intended use written into the exported model's config and card")
    p.add_argument("--resume", action="store_true", help="continue from <run-dir>/last.pt")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--steps-per-epoch", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--loss", choices=("bce", "dicebce"), default="bce", help="bce (paper) or dicebce")
    p.add_argument("--positive-fraction", type=float, default=0.6, help="share of lesion-centred patches")
    p.add_argument(
        "--hard-negative-fraction",
        type=float,
        default=0.0,
        help="share of patches centred on bright non-lesion voxels (vessels, dura, plexus)",
    )
    p.add_argument(
        "--no-calibrate",
        action="store_true",
        help="keep the config's threshold and smallest component instead of choosing them on validation",
    )
    p.add_argument("--intensity-aug", action="store_true", help="also random intensity scale/shift")
    p.add_argument(
        "--lesion-prior",
        type=float,
        default=0.01,
        help="initial lesion probability of a new network's output (0 disables)",
    )
    p.add_argument("--grad-clip", type=float, default=1.0, help="gradient norm clip (0 disables)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-minutes", type=float, help="stop after the epoch that passes this wall time")
    p.add_argument("--threads", type=int, help="torch and SimpleITK CPU threads")
    p.add_argument(
        "--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto: CUDA when present"
    )
    p.add_argument(
        "--demo-spacing", type=float, default=2.0, help="voxel size (mm) of the default demo architecture"
    )
    p.add_argument(
        "--demo-patch",
        type=int,
        default=48,
        help="window side (voxels, multiple of 16) of the demo architecture",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``bm-train``; returns the exit status."""
    args = build_parser().parse_args(argv)
    args.run_dir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        handlers=[logging.StreamHandler(sys.stderr), logging.FileHandler(args.run_dir / "train.log")],
        force=True,
    )
    try:
        if args.config:
            if not args.config.is_file():
                raise TrainingError(f"--config {args.config}: no such file")
            config = ModelConfig.from_dict(json.loads(args.config.read_text(encoding="utf-8")))
        elif args.init_from:
            config = load_model(args.init_from).config
        else:
            config = demo_config(args.demo_spacing, args.demo_patch)
        # A site's own model must not go out under the demo's name, version and label.
        identity = {
            "name": args.model_name, "version": args.model_version, "label": args.label,
            "intended_use": args.intended_use,
        }  # fmt: skip
        changes = {k: v for k, v in identity.items() if v is not None}
        if changes:
            config = ModelConfig.from_dict({**config.to_dict(), **changes})
        if args.phantoms is not None:
            if args.phantoms < 3:
                raise TrainingError("--phantoms needs at least 3 patients")
            sources = phantom_sources(args.phantoms, args.phantom_seed, args.phantom_style)
            desc = f"{args.phantoms} synthetic patients (segmentation.phantoms, seed {args.phantom_seed})"
            if args.phantom_style != "basic":
                desc = desc[:-1] + f", style {args.phantom_style})"
        elif args.data:
            sources = nifti_pair_sources(args.data)
            desc = f"NIfTI pairs from {args.data.name}"
        else:
            sources = dicom_rtstruct_sources(args.dicom, args.roi_pattern)
            desc = f"DICOM + RTSTRUCT ({args.roi_pattern}) from {args.dicom.name}"
        if args.evaluate is not None:
            result = evaluate_native(args.evaluate, sources, args.device)
            log.info("evaluation of %s on %s: %s", args.evaluate, desc,
                     {k: v for k, v in result.items() if k != "per_case"})  # fmt: skip
            print(json.dumps(result, indent=2))
            return 0
        options = TrainOptions(
            run_dir=args.run_dir,
            export_dir=args.export,
            epochs=args.epochs,
            steps_per_epoch=args.steps_per_epoch,
            batch_size=args.batch_size,
            learning_rate=args.lr,
            loss=args.loss,
            freeze_encoder=args.freeze_encoder,
            positive_fraction=args.positive_fraction,
            hard_negative_fraction=args.hard_negative_fraction,
            calibrate=not args.no_calibrate,
            intensity_augmentation=args.intensity_aug,
            seed=args.seed,
            resume=args.resume,
            max_minutes=args.max_minutes,
            threads=args.threads,
            device=args.device,
            lesion_prior=args.lesion_prior or None,
            grad_clip_norm=args.grad_clip or None,
            command="bm-train " + " ".join(sys.argv[1:] if argv is None else argv),
        )
        summary = train(config, sources, options, init_from=args.init_from, data_description=desc)
    except (TrainingError, ValueError, ImagingError) as exc:
        log.error("%s", getattr(exc, "user_message", None) or exc)
        return 2
    print(json.dumps(summary["best"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
