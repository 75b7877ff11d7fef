"""A reader's region edits on one image: grow a lesion from a seed voxel, split a lesion at two seeds.

Pure functions on SimpleITK images (no database): the dashboard's review actions
(``trials.actions.review``) call them and then measure and record the result.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

from segmentation.errors import RegionError

#: Region growing: ConfidenceConnected keeps voxels within ``multiplier`` standard deviations of the
#: mean of the current region, re-estimated ``iterations`` times from a neighbourhood of ``radius``.
DEFAULT_GROW_MULTIPLIER = 2.5
DEFAULT_GROW_ITERATIONS = 4
DEFAULT_GROW_RADIUS_VOXELS = 1
#: A grown region larger than this has leaked into normal tissue (a 50 mm sphere is ~65,000 mm3).
DEFAULT_MAX_GROWN_VOLUME_MM3 = 65_000.0


def _inside(index: tuple[int, ...], size: Sequence[int]) -> bool:
    return len(index) == 3 and all(0 <= s < n for s, n in zip(index, size, strict=False))


def grow_region(
    image: sitk.Image,
    seed_index: Sequence[int],
    *,
    multiplier: float = DEFAULT_GROW_MULTIPLIER,
    iterations: int = DEFAULT_GROW_ITERATIONS,
    radius_voxels: int = DEFAULT_GROW_RADIUS_VOXELS,
    max_volume_mm3: float = DEFAULT_MAX_GROWN_VOLUME_MM3,
) -> sitk.Image:
    """Grow a lesion from a seed voxel on the enhancing signal (SimpleITK ConfidenceConnected).

    Only the 26-connected component that contains the seed is kept, and holes are filled slice by slice
    (a necrotic core is part of the lesion's extent for its diameters).

    Args:
        image: the visit's volume (any pixel type).
        seed_index: voxel index (i, j, k) of the seed, SimpleITK order.
        multiplier: confidence interval half-width in standard deviations.
        iterations: re-estimations of the region statistics.
        radius_voxels: neighbourhood radius for the initial statistics.
        max_volume_mm3: larger regions are refused as leaks into normal tissue.

    Returns:
        A UInt8 mask (1 = lesion) on the image grid.

    Raises:
        RegionError: seed outside the image, on background (zero signal), region leaked or empty.
    """
    size = image.GetSize()
    seed = tuple(int(v) for v in seed_index)
    if not _inside(seed, size):
        raise RegionError(f"Seed {list(seed)} lies outside the image of size {list(size)}.")
    as_float = sitk.Cast(image, sitk.sitkFloat32)
    if as_float[seed] <= 0:
        raise RegionError("The seed lies on background (no signal): click inside the enhancing lesion.")
    grown = sitk.ConfidenceConnected(
        as_float,
        seedList=[seed],
        numberOfIterations=iterations,
        multiplier=multiplier,
        initialNeighborhoodRadius=radius_voxels,
        replaceValue=1,
    )
    components = sitk.ConnectedComponent(grown, True)
    seed_label = components[seed]
    if seed_label == 0:
        raise RegionError("Region growing kept nothing around the seed.")
    mask = sitk.Cast(sitk.BinaryThreshold(components, seed_label, seed_label, 1, 0), sitk.sitkUInt8)
    mask = sitk.BinaryFillhole(mask, fullyConnected=False, foregroundValue=1)
    spacing = mask.GetSpacing()
    volume_mm3 = float(sitk.GetArrayViewFromImage(mask).sum()) * spacing[0] * spacing[1] * spacing[2]
    if volume_mm3 > max_volume_mm3:
        raise RegionError(
            f"The grown region ({volume_mm3:.0f} mm3) leaked beyond {max_volume_mm3:.0f} mm3: "
            "place the seed in the brightest part of the lesion."
        )
    return mask


def split_region(
    mask: sitk.Image, seed_keep: Sequence[int], seed_new: Sequence[int], *, name: str = "the lesion"
) -> tuple[sitk.Image, sitk.Image]:
    """Split a binary mask in two: each voxel goes to the nearer of two seed points, in physical mm.

    Args:
        mask: the lesion's binary mask.
        seed_keep, seed_new: voxel indices (i, j, k) inside the mask.
        name: what the mask is, for the messages ("L3").

    Returns:
        ``(part around seed_keep, part around seed_new)``, UInt8 masks on the mask's grid (a voxel at
        equal distance stays with ``seed_keep``).

    Raises:
        RegionError: a seed outside the mask, or both seeds equal.
    """
    seeds = [tuple(int(v) for v in s) for s in (seed_keep, seed_new)]
    size = mask.GetSize()
    for seed in seeds:
        if not _inside(seed, size) or not mask[seed]:
            raise RegionError(f"Seed {list(seed)} is not inside {name}.")
    if seeds[0] == seeds[1]:
        raise RegionError("The two seeds must differ.")
    array = sitk.GetArrayFromImage(mask) > 0
    zyx = np.argwhere(array)
    spacing_xyz = np.array(mask.GetSpacing())
    direction = np.array(mask.GetDirection()).reshape(3, 3)

    # Distances in physical mm (spacing is never isotropic by assumption): index (i, j, k) offsets are
    # scaled by the spacing and rotated by the direction cosines; the origin cancels out.
    def _phys(points_xyz: np.ndarray) -> np.ndarray:
        return (direction @ (points_xyz * spacing_xyz).T).T

    coords = _phys(zyx[:, ::-1].astype(float))
    seed_coords = _phys(np.array(seeds, dtype=float))
    d_keep = np.linalg.norm(coords - seed_coords[0], axis=1)
    d_new = np.linalg.norm(coords - seed_coords[1], axis=1)
    parts = []
    for selector in (d_keep <= d_new, d_new < d_keep):
        part_array = np.zeros(array.shape, dtype=np.uint8)
        chosen = zyx[selector]
        part_array[chosen[:, 0], chosen[:, 1], chosen[:, 2]] = 1
        part = sitk.GetImageFromArray(part_array)
        part.CopyInformation(mask)
        parts.append(part)
    return parts[0], parts[1]


__all__ = [
    "DEFAULT_GROW_ITERATIONS",
    "DEFAULT_GROW_MULTIPLIER",
    "DEFAULT_GROW_RADIUS_VOXELS",
    "DEFAULT_MAX_GROWN_VOLUME_MM3",
    "grow_region",
    "split_region",
]
