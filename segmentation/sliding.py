"""Sliding-window inference on the CPU, with MONAI's windows and blending, minus the empty windows.

:func:`sliding_window` places the windows exactly as MONAI's
:func:`~monai.inferers.sliding_window_inference` does (same scan interval, last window moved back
inside the image, same Gaussian or constant importance map, same zero padding of an image smaller than
the window), so that with nothing skipped it returns MONAI's result. On top of that:

* a window whose part of the head mask is empty is not run (its voxels are air: no lesion can lie
  there); voxels that only such windows cover get probability 0;
* windows are run in batches of ``batch_size`` through any predictor that maps a float32 numpy batch
  (b, 1, z, y, x) to lesion probabilities of the same shape: the PyTorch network or the ONNX Runtime
  session (:mod:`segmentation.onnx_backend`);
* the blended probability comes back as float32 on the cropped model grid: the network's 0-1 output,
  4 bytes per voxel of the head box only, never of the whole field of view.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

Predictor = Callable[[np.ndarray], np.ndarray]


def scan_starts(size: int, roi: int, overlap: float) -> list[int]:
    """Window starts along one axis, as MONAI's ``_get_scan_interval`` and ``dense_patch_slices``.

    Args:
        size: Image size along the axis (voxels), at least ``roi`` (pad first).
        roi: Window size along the axis.
        overlap: Fraction of overlap between neighbouring windows, in [0, 1).
    """
    interval = roi if roi == size else max(int(roi * (1 - overlap)), 1)
    count = next(d for d in range(math.ceil(size / interval)) if d * interval + roi >= size) + 1
    return [i * interval - max(i * interval + roi - size, 0) for i in range(count)]


def importance_map(roi_zyx: Sequence[int], mode: str, sigma_scale: float = 0.125) -> np.ndarray:
    """MONAI's window weight map (``monai.data.utils.compute_importance_map``) in numpy, float32.

    ``gaussian``: the outer product of one 1D Gaussian per axis, sigma ``sigma_scale`` x the window
    side, centred on the window; ``constant``: ones. Weights are clamped to at least their minimum
    (and 1e-3), as MONAI does, so that no voxel of a window weighs 0. Written out here so that the
    ONNX backend does not import MONAI and torch (seconds of start-up).
    """
    roi = tuple(int(v) for v in roi_zyx)
    if mode == "constant":
        weights = np.ones(roi, dtype=np.float32)
    elif mode == "gaussian":
        weights = np.ones((), dtype=np.float32)
        for n in roi:
            x = np.arange(-(n - 1) / 2.0, (n - 1) / 2.0 + 1, dtype=np.float32)
            g = np.exp(x**2 / np.float32(-2 * (n * sigma_scale) ** 2)).astype(np.float32)
            weights = weights[..., None] * g
    else:
        raise ValueError(f"blending mode must be 'gaussian' or 'constant', got {mode!r}")
    return np.maximum(weights, max(float(weights.min()), 1e-3)).astype(np.float32)


@dataclass(frozen=True)
class SlidingWindowResult:
    """Output of :func:`sliding_window`.

    Attributes:
        probability: Blended lesion probability, float32 (z, y, x), on the input's grid.
        n_windows: Windows run through the network.
        n_skipped: Windows skipped because they hold no head voxel.
    """

    probability: np.ndarray
    n_windows: int
    n_skipped: int


def sliding_window(
    image: np.ndarray,
    predictor: Predictor,
    roi_zyx: Sequence[int],
    *,
    overlap: float = 0.25,
    mode: str = "gaussian",
    batch_size: int = 1,
    head_mask: np.ndarray | None = None,
) -> SlidingWindowResult:
    """Blend the predictor's lesion probability over windows of ``roi_zyx`` covering ``image``.

    Args:
        image: Network input, float32 (z, y, x).
        predictor: float32 (b, 1, *roi) -> probability (b, 1, *roi).
        roi_zyx: Window size (z, y, x).
        overlap: Window overlap fraction in [0, 1).
        mode: ``gaussian`` or ``constant`` blending.
        batch_size: Windows per predictor call.
        head_mask: Optional mask on the image grid; windows without a nonzero voxel in it are skipped.

    Returns:
        The probability on the image grid, with the counts of run and skipped windows.
    """
    roi = tuple(int(v) for v in roi_zyx)
    shape = image.shape
    # Zero padding of an image smaller than the window, half on each side (as MONAI, constant mode).
    pads = [(max(r - s, 0) // 2, max(r - s, 0) - max(r - s, 0) // 2) for s, r in zip(shape, roi, strict=True)]
    padded = np.pad(image.astype(np.float32, copy=False), pads) if any(sum(p) for p in pads) else image
    mask = None
    if head_mask is not None:
        mask = np.pad(head_mask != 0, pads) if any(sum(p) for p in pads) else head_mask != 0
    full = padded.shape
    axes = [scan_starts(full[a], roi[a], overlap) for a in range(3)]
    starts = [(z, y, x) for z in axes[0] for y in axes[1] for x in axes[2]]
    windows = [tuple(slice(s, s + r) for s, r in zip(start, roi, strict=True)) for start in starts]
    run = [w for w in windows if mask[w].any()] if mask is not None else windows
    weights = importance_map(roi, mode)
    total = np.zeros(full, dtype=np.float32)
    count = np.zeros(full, dtype=np.float32)
    for first in range(0, len(run), max(1, batch_size)):
        batch = run[first : first + max(1, batch_size)]
        x = np.stack([padded[w] for w in batch])[:, None]
        probability = predictor(np.ascontiguousarray(x, dtype=np.float32))
        for w, p in zip(batch, probability[:, 0], strict=True):
            total[w] += p * weights
            count[w] += weights
    np.divide(total, count, out=total, where=count > 0)
    crop = tuple(slice(lo, lo + s) for (lo, _), s in zip(pads, shape, strict=True))
    return SlidingWindowResult(
        probability=np.ascontiguousarray(total[crop]), n_windows=len(run), n_skipped=len(windows) - len(run)
    )


__all__ = ["Predictor", "SlidingWindowResult", "importance_map", "scan_starts", "sliding_window"]
