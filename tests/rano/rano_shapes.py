"""Analytic test shapes on voxel grids with any spacing, origin and direction (test helpers)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray


def rotation(axis: str, degrees: float) -> NDArray[np.float64]:
    """3x3 rotation matrix about the x, y or z axis."""
    t = np.radians(degrees)
    c, s = np.cos(t), np.sin(t)
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def physical_grid(
    size_xyz: Sequence[int], spacing: Sequence[float], origin: Sequence[float], direction: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Physical coordinates (z, y, x, 3) of every voxel centre."""
    k, j, i = np.meshgrid(*(np.arange(n) for n in size_xyz[::-1]), indexing="ij")
    idx = np.stack([i, j, k], axis=-1).astype(np.float64) * np.asarray(spacing)
    return idx @ direction.T + np.asarray(origin)


def ellipsoid_image(
    semi_axes_mm: Sequence[float],
    *,
    size_xyz: Sequence[int] = (64, 64, 48),
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    direction: NDArray[np.float64] | None = None,
    shape_rotation: NDArray[np.float64] | None = None,
    centre_mm: Sequence[float] | None = None,
    origin: Sequence[float] = (0.0, 0.0, 0.0),
) -> sitk.Image:
    """Binary image of a physical ellipsoid; voxels whose centre lies inside are 1.

    ``shape_rotation`` rotates the ellipsoid's axes in physical space; by default the ellipsoid sits
    at the physical centre of the grid.
    """
    direction = np.eye(3) if direction is None else direction
    rot = np.eye(3) if shape_rotation is None else shape_rotation
    pts = physical_grid(size_xyz, spacing, origin, direction)
    if centre_mm is None:
        centre_idx = (np.asarray(size_xyz) - 1) / 2 * np.asarray(spacing)
        centre_mm = direction @ centre_idx + np.asarray(origin)
    local = (pts - np.asarray(centre_mm)) @ rot  # coordinates along the ellipsoid's own axes
    inside = ((local / np.asarray(semi_axes_mm)) ** 2).sum(axis=-1) <= 1.0
    img = sitk.GetImageFromArray(inside.astype(np.uint8))
    img.SetSpacing([float(s) for s in spacing])
    img.SetOrigin([float(o) for o in origin])
    img.SetDirection([float(v) for v in direction.ravel()])
    return img
