"""Speed of rano/: lesion measurement on a large mask and ``rano-assess`` on a 6-visit patient.

Issue 3 targets: 512 x 512 x 208 mask (0.5 x 0.5 x 1 mm) with 50 lesions measured in < 0.5 s on one
core (issue 23: <= 0.3 s); ``rano-assess`` on 6 visits at 1 mm in < 20 s with images (registration included), < 3 s
without. The reference is the straightforward method: every boundary voxel's corners on every slice,
all pairs (LD only), on the same masks.
"""

from __future__ import annotations

import os

# One core: set before numpy/SimpleITK start their thread pools.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
from scipy import ndimage  # noqa: E402
from scipy.spatial.distance import pdist  # noqa: E402

from rano.cli import assess_files  # noqa: E402
from rano.measure import _raw_components, measure_lesions  # noqa: E402

SHAPE_ZYX = (208, 512, 512)
SPACING = (0.5, 0.5, 1.0)


def fifty_lesion_mask(seed: int = 0) -> sitk.Image:
    """50 non-touching ellipsoids, 4-30 mm, at random orientations (seeded)."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(SHAPE_ZYX, np.uint8)
    placed: list[tuple[np.ndarray, float]] = []
    while len(placed) < 50:
        semi = rng.uniform(2.0, 15.0, 3)
        centre = rng.uniform([20, 20, 20], [236, 236, 188])  # mm (x, y, z)
        reach = semi.max() + 1.0
        if any(np.linalg.norm(centre - c) < reach + r for c, r in placed):
            continue
        placed.append((centre, reach))
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        lo = np.floor((centre - reach) / SPACING).astype(int)
        hi = np.ceil((centre + reach) / SPACING).astype(int) + 1
        z, y, x = np.meshgrid(*(np.arange(lo[a], hi[a]) * SPACING[a] for a in (2, 1, 0)), indexing="ij")
        local = np.stack([x - centre[0], y - centre[1], z - centre[2]], axis=-1) @ q
        inside = ((local / semi) ** 2).sum(-1) <= 1
        mask[lo[2] : hi[2], lo[1] : hi[1], lo[0] : hi[0]] |= inside
    img = sitk.GetImageFromArray(mask)
    img.SetSpacing(SPACING)
    return img


def reference_ld(mask_zyx: np.ndarray) -> dict[int, float]:
    """Straightforward LD: label, then per lesion and slice all pairs of boundary-voxel corners."""
    labels, _ = ndimage.label(mask_zyx, structure=np.ones((3, 3, 3)))
    out = {}
    for index, bbox in enumerate(ndimage.find_objects(labels)):
        crop = labels[bbox] == index + 1
        best = 0.0
        for z in range(crop.shape[0]):
            sl = crop[z]
            if not sl.any():
                continue
            boundary = sl & ~ndimage.binary_erosion(sl)
            ys, xs = np.nonzero(boundary)
            corners = np.concatenate(
                [
                    np.column_stack([(xs + dx) * SPACING[0], (ys + dy) * SPACING[1]])
                    for dx in (-0.5, 0.5)
                    for dy in (-0.5, 0.5)
                ]
            )
            if len(corners) > 1:
                best = max(best, float(np.sqrt(pdist(corners, "sqeuclidean").max())))
        out[index + 1] = best
    return out


def _timed(fn, repeats: int = 3):
    best_wall, best_cpu, result = float("inf"), float("inf"), None
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        result = fn()
        best_wall = min(best_wall, time.perf_counter() - w)
        best_cpu = min(best_cpu, time.process_time() - c)
    return best_wall, best_cpu, result


def bench_measurement() -> None:
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    img = fifty_lesion_mask()
    wall, cpu, measurements = _timed(lambda: measure_lesions(img))
    comp_wall, comp_cpu, _ = _timed(lambda: _raw_components(sitk.GetArrayViewFromImage(img)))
    sitk_wall, sitk_cpu, _ = _timed(lambda: sitk.ConnectedComponent(img, True))
    print(
        f"measure_lesions 512x512x208, {len(measurements)} lesions: wall {wall:.3f} s, CPU {cpu:.3f} s "
        f"(connected components alone, cc3d: wall {comp_wall:.3f} s, CPU {comp_cpu:.3f} s; SimpleITK's "
        f"filter: CPU {sitk_cpu:.3f} s); target < 0.3 s"
    )
    ref_wall, ref_cpu, ref = _timed(lambda: reference_ld(sitk.GetArrayViewFromImage(img)), repeats=1)
    diffs = [abs(m.longest_diameter_mm - ref[m.label]) for m in measurements]
    print(
        f"reference (all pairs of boundary-voxel corners per slice, LD only): wall {ref_wall:.2f} s, CPU {ref_cpu:.2f} s"
    )
    print(f"ratio reference / rano (CPU): {ref_cpu / cpu:.1f}x; max LD difference {max(diffs):.2e} mm")


def bench_cli() -> None:
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "rano"))
    from rano_cases import write_case  # test helper that writes NIfTI masks and synthetic T1c images

    lesions = [((60.0, 80.0, 70.0), 12.0), ((110.0, 100.0, 60.0), 8.0), ((80.0, 130.0, 90.0), 6.0)]
    scale = [1.0, 0.9, 0.75, 0.7, 0.72, 0.9]
    visits = [
        {
            "visit": f"V{i}",
            "date": f"2024-{1 + 2 * i:02d}-08",
            "spheres": [(c, r * scale[i]) for c, r in lesions],
            "shift_mm": (float(i), -float(i) / 2, 0.0),
        }
        for i in range(6)
    ]
    grid = {"size_xyz": (180, 216, 180), "spacing": (1.0, 1.0, 1.0)}
    with tempfile.TemporaryDirectory() as tmp:
        with_images = write_case(Path(tmp) / "img", "BENCH", visits, images=True, **grid)
        masks_only = write_case(Path(tmp) / "mask", "BENCH", visits, images=False, **grid)
        wall, cpu, report = _timed(lambda: assess_files(with_images), repeats=1)
        print(
            f"rano-assess, 6 visits 180x216x180 at 1 mm with images (5 registrations): wall {wall:.2f} s, "
            f"CPU {cpu:.2f} s; target < 20 s; BOR {report['best_overall_response']}"
        )
        wall, cpu, report = _timed(lambda: assess_files(masks_only), repeats=1)
        print(
            f"rano-assess, same masks without images: wall {wall:.2f} s, CPU {cpu:.2f} s; target < 3 s; "
            f"BOR {report['best_overall_response']}"
        )


def main() -> None:
    """Print the measurement and CLI figures."""
    bench_measurement()
    bench_cli()


if __name__ == "__main__":
    main()
