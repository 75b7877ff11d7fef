"""The probability map's way back to the native grid, float32 against the compact type: ``python -m bench probability``.

On the 512 x 512 x 208 (0.5 x 0.5 x 1 mm) phantom series of the GPU benchmark, preprocessed to the
paper-size model's 1 mm grid (head box), with a smooth probability map on that box:

* **float path** (the code before the compact type): the float32 map pasted into the uncropped 1 mm
  grid, one linear ``sitk.Resample`` to the native grid as float32, thresholded; ``probability.nii``
  written as float32 by SimpleITK;
* **compact path** (:mod:`segmentation.probability`): the map quantised to uint16, resampled from the
  cropped grid in one step as uint16, thresholded at the stored levels; ``probability.nii`` written as
  uint16 with the NIfTI scale.

Printed: seconds (wall and CPU of this process, median of alternating repeats), bytes of the native
map, bytes and seconds of the file, the largest probability difference and the mask agreement.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

REPEATS = int(os.environ.get("BENCH_PROBABILITY_REPEATS", "3"))


def _timed(fn: Callable[[], object]) -> tuple[object, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    from segmentation import probability as P
    from segmentation.model import PostprocessConfig
    from segmentation.phantoms import make_phantom
    from segmentation.preprocess import PreprocessConfig, preprocess, to_native

    phantom = make_phantom(42, geometry="axial_0p5mm")
    pre = preprocess(phantom.image, PreprocessConfig(spacing_mm=(1.0, 1.0, 1.0), n4_shrink_factor=4))
    rng = np.random.default_rng(0)
    field = ndi.gaussian_filter(rng.standard_normal(pre.array.shape).astype(np.float32), 3.0)
    prob = (1.0 / (1.0 + np.exp(-field / field.std() * 2.5))).astype(np.float32)
    post = PostprocessConfig(threshold=0.5)
    native_size = phantom.image.GetSize()
    print(f"native grid {native_size}, model head box {pre.array.shape[::-1]} at 1 mm")

    def float_path() -> tuple[sitk.Image, np.ndarray]:
        ref = pre.resampled_reference
        full = np.zeros(ref.GetSize()[::-1], dtype=np.float32)
        x0, y0, z0 = pre.crop.start
        sx, sy, sz = pre.crop.size
        full[z0 : z0 + sz, y0 : y0 + sy, x0 : x0 + sx] = prob
        image = sitk.GetImageFromArray(full)
        image.CopyInformation(ref)
        native = sitk.Resample(
            image, pre.native_reference, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32
        )
        return native, post.binarise(sitk.GetArrayViewFromImage(native))

    def compact_path() -> tuple[sitk.Image, np.ndarray]:
        native = to_native(P.quantise(prob), pre)
        return native, post.binarise(sitk.GetArrayViewFromImage(native))

    times: dict[str, list[tuple[float, float]]] = {"float": [], "compact": []}
    outputs: dict[str, tuple[sitk.Image, np.ndarray]] = {}
    for _ in range(REPEATS):
        for name, fn in (("float", float_path), ("compact", compact_path)):
            out, wall, cpu = _timed(fn)
            outputs[name] = out  # type: ignore[assignment]
            times[name].append((wall, cpu))
            del out
    (f_img, f_mask), (c_img, c_mask) = outputs["float"], outputs["compact"]
    f_arr = sitk.GetArrayViewFromImage(f_img)
    c_arr = sitk.GetArrayViewFromImage(c_img)
    diff = float(np.abs(P.to_float(c_arr) - f_arr).max())
    dice = 2.0 * float((f_mask & c_mask).sum()) / max(1.0, float(f_mask.sum() + c_mask.sum()))
    with tempfile.TemporaryDirectory(prefix="bench-prob-") as tmp:
        f_path, c_path = Path(tmp) / "float.nii", Path(tmp) / "compact.nii"
        _, f_write, _ = _timed(lambda: sitk.WriteImage(f_img, str(f_path), useCompression=False))
        _, c_write, _ = _timed(lambda: P.write_nifti(c_img, c_path))
        f_bytes, c_bytes = f_path.stat().st_size, c_path.stat().st_size
    print(f"{'path':<8} {'map + threshold wall':>21} {'CPU':>7} {'native map':>11} {'file':>9} {'write':>7}")
    for name, nbytes, fbytes, write in (
        ("float", f_arr.nbytes, f_bytes, f_write),
        ("compact", c_arr.nbytes, c_bytes, c_write),
    ):
        wall = statistics.median(t[0] for t in times[name])
        cpu = statistics.median(t[1] for t in times[name])
        print(
            f"{name:<8} {wall:>19.2f} s {cpu:>5.2f} s {nbytes / 1e6:>8.0f} MB {fbytes / 1e6:>6.0f} MB {write:>5.2f} s"
        )
    print("each repeat (wall s):", {k: [round(w, 2) for w, _ in v] for k, v in times.items()})
    print(f"compact against float: max |probability difference| {diff:.2e} "
          f"(stated bound {1.5 / P.SCALE:.1e}), mask Dice {dice:.6f}, "
          f"voxels differing {int((f_mask != c_mask).sum())} of {int(f_mask.sum())} lesion voxels")  # fmt: skip


if __name__ == "__main__":
    main()
