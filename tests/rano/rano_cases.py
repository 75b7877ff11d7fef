"""Example patients written as NIfTI files for the CLI tests and the benchmark (test helpers)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

Sphere = tuple[tuple[float, float, float], float]  # (centre x, y, z in mm, radius in mm)


def sphere_mask(
    spheres: Sequence[Sphere],
    *,
    size_xyz: tuple[int, int, int] = (64, 64, 48),
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0),
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> sitk.Image:
    """Binary mask of balls (centres in mm from the origin, moved by ``shift_mm``)."""
    z, y, x = np.meshgrid(
        *(np.arange(n) * s for n, s in zip(size_xyz[::-1], spacing[::-1], strict=True)), indexing="ij"
    )
    mask = np.zeros(z.shape, np.uint8)
    for (cx, cy, cz), r in spheres:
        cx, cy, cz = cx + shift_mm[0], cy + shift_mm[1], cz + shift_mm[2]
        mask[(x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 <= r * r] = 1
    img = sitk.GetImageFromArray(mask)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    return img


def synthetic_t1c(
    mask: sitk.Image, seed: int = 0, shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
) -> sitk.Image:
    """A smooth 'brain' with bright enhancing lesions, on the mask's grid (for registration).

    The anatomy moves with ``shift_mm`` like the lesions do, as in a patient positioned differently.
    """
    arr = sitk.GetArrayFromImage(mask).astype(np.float32)
    shape = np.array(arr.shape)
    spacing_zyx = np.array(mask.GetSpacing()[::-1])
    shift_zyx = np.array(shift_mm[::-1])
    half = (shape - 1) * spacing_zyx / 2
    grids = np.meshgrid(
        *(
            (np.arange(n) * s - h - d) / h
            for n, s, h, d in zip(shape, spacing_zyx, half, shift_zyx, strict=True)
        ),
        indexing="ij",
    )
    head = (sum(g**2 for g in grids) < 0.8).astype(np.float32)
    structure = 300 * head + 100 * head * np.sin(6 * grids[1]) * np.cos(5 * grids[2]) + 80 * grids[0]
    rng = np.random.default_rng(seed)
    img = sitk.GetImageFromArray(structure + 600 * arr + rng.normal(0, 5, arr.shape).astype(np.float32))
    img.CopyInformation(mask)
    return img


def write_case(
    folder: Path,
    subject_id: str,
    visits: Sequence[dict],
    *,
    images: bool = False,
    **grid,
) -> Path:
    """Write one patient: per visit ``{"visit", "date", "spheres", ...extra JSON fields}``.

    Returns the VISITS.json path.
    """
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for v in visits:
        v = dict(v)
        spheres = v.pop("spheres")
        shift = v.pop("shift_mm", (0.0, 0.0, 0.0))
        mask = sphere_mask(spheres, shift_mm=shift, **grid)
        sitk.WriteImage(mask, str(folder / f"{v['visit']}.nii.gz"))
        v["mask"] = f"{v['visit']}.nii.gz"
        if images:
            sitk.WriteImage(synthetic_t1c(mask, shift_mm=shift), str(folder / f"{v['visit']}_t1c.nii.gz"))
            v["image"] = f"{v['visit']}_t1c.nii.gz"
        entries.append(v)
    path = folder / "visits.json"
    path.write_text(json.dumps({"subject_id": subject_id, "visits": entries}, indent=1))
    return path
