"""Imaging boundary speed: load a 512 x 512 x 208 single-frame MR series, write RTSTRUCT + SEG for 10 lesions.

Targets (issue 4): loading under 5 s; RTSTRUCT + SEG under 10 s. Loading is timed for both pixel
backends of :func:`segmentation.io.read_series` (SimpleITK/GDCM and pydicom), each including header
reading and geometry validation, best of ``REPEATS`` runs; the raw GDCM series read (no validation) is
shown for reference.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

SHAPE = (208, 512, 512)  # slices, rows, columns
SPACING_MM = (0.5, 0.5, 1.0)
N_LESIONS = 10
REPEATS = 5
LOAD_TARGET_S = 5.0
CONTOUR_TARGET_S = 10.0


def _best_of(repeats: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return best, result


def _phantom() -> sitk.Image:
    rng = np.random.default_rng(7)
    z, y, x = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    head = ((z - 104) / 95.0) ** 2 + ((y - 256) / 230.0) ** 2 + ((x - 256) / 190.0) ** 2 <= 1
    arr = (rng.integers(0, 40, SHAPE, dtype=np.int16) + 600 * head).astype(np.int16)
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing(SPACING_MM)
    image.SetOrigin((-128.0, -128.0, -104.0))
    return image


def _lesions(reference: sitk.Image) -> tuple[sitk.Image, dict[int, str]]:
    """Ten spheres of 4-15 mm diameter spread through the volume."""
    rng = np.random.default_rng(11)
    arr = np.zeros(SHAPE, dtype=np.uint16)
    z, y, x = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    for value in range(1, N_LESIONS + 1):
        cz, cy, cx = rng.integers(40, 168), rng.integers(140, 372), rng.integers(140, 372)
        radius_mm = rng.uniform(2.0, 7.5)
        inside = (((z - cz) * 1.0) ** 2 + ((y - cy) * 0.5) ** 2 + ((x - cx) * 0.5) ** 2) <= radius_mm**2
        arr[inside] = value
    labels = sitk.GetImageFromArray(arr)
    labels.CopyInformation(reference)
    present = sorted(int(v) for v in np.unique(arr) if v)
    return labels, {value: f"L{value}" for value in present}


def main() -> None:
    from segmentation.contours import write_rtstruct, write_seg
    from segmentation.io import read_series
    from segmentation.synthetic_mr import write_dicom_series

    with tempfile.TemporaryDirectory(prefix="bench-imaging-") as tmp:
        folder = Path(tmp) / "series"
        image = _phantom()
        started = time.perf_counter()
        files = write_dicom_series(image, folder, patient_id="BENCH-001")
        print(f"write {len(files)} slices {SHAPE[2]}x{SHAPE[1]}: {time.perf_counter() - started:.2f} s")

        def raw_gdcm() -> sitk.Image:
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
            return reader.Execute()

        # interleave the backends so that load from other processes on the machine hits both alike
        times: dict[str, list[float]] = {"raw": [], "sitk": [], "pydicom": []}
        for _ in range(REPEATS):
            for name, fn in (
                ("raw", raw_gdcm),
                ("sitk", lambda: read_series(folder, backend="sitk")),
                ("pydicom", lambda: read_series(folder, backend="pydicom")),
            ):
                seconds, result = _best_of(1, fn)
                times[name].append(seconds)
                if name == "sitk":
                    loaded = result
                elif name == "pydicom":
                    loaded_pd = result
        raw_s, sitk_s, pydicom_s = (min(times[k]) for k in ("raw", "sitk", "pydicom"))
        same = np.array_equal(
            sitk.GetArrayViewFromImage(loaded.image), sitk.GetArrayViewFromImage(image)
        ) and (np.array_equal(sitk.GetArrayViewFromImage(loaded_pd.image), sitk.GetArrayViewFromImage(image)))
        med = {k: float(np.median(v)) for k, v in times.items()}
        print(f"best (median) of {REPEATS} interleaved runs:")
        print(f"raw GDCM series read (no validation):       {raw_s:.2f} s ({med['raw']:.2f})")
        print(
            f"read_series backend=sitk (GDCM, default):   {sitk_s:.2f} s ({med['sitk']:.2f})  (target {LOAD_TARGET_S:.0f} s)"
        )
        print(f"read_series backend=pydicom:                {pydicom_s:.2f} s ({med['pydicom']:.2f})")
        print(
            f"pydicom / sitk time ratio: {pydicom_s / sitk_s:.2f}; both voxel-identical to the source: {same}"
        )

        labels, names = _lesions(loaded.image)
        rt_s, _ = _best_of(
            1, lambda: write_rtstruct(labels, loaded, Path(tmp) / "rt.dcm", lesion_names=names)
        )
        seg_s, _ = _best_of(
            1,
            lambda: write_seg(
                labels,
                loaded,
                Path(tmp) / "seg.dcm",
                lesion_names=names,
                algorithm_name="bench",
                algorithm_version="1",
            ),
        )
        print(f"RTSTRUCT for {len(names)} lesions: {rt_s:.2f} s; SEG: {seg_s:.2f} s")
        print(f"RTSTRUCT + SEG: {rt_s + seg_s:.2f} s  (target {CONTOUR_TARGET_S:.0f} s)")
        print(
            f"ratios to target: load {sitk_s / LOAD_TARGET_S:.2f}, contours {(rt_s + seg_s) / CONTOUR_TARGET_S:.2f}"
        )


if __name__ == "__main__":
    main()
