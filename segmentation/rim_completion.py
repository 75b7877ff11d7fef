"""Rim completion: extend each lesion component to the outer edge of its enhancing rim.

RANO-BM measures a ring-enhancing or cystic metastasis to the outer edge of its enhancing rim, cavity
included. A network trained on synthetic data may outline only the dark cavity and the inner part of the
wall of a real cyst (the demo model does on the real BraTS scan), which underestimates the longest
diameter. This stage, after the false-positive reduction (before it with
``fp_reduction.after_rim_completion``, which then judges the completed components), adds to each kept
component what its image shows around it:

0. **the rest of its cavity**, when the component and its border are darker than ``max_cavity_intensity``
   times the local brain reference (it lies in the fluid of a cyst or necrosis and has not reached the
   wall): the voxels as dark as that connected to it, within ``cavity_mm``;
1. **enhancing voxels** within ``rim_mm`` of that: brighter than ``min_enhancement`` times the local brain
   reference (the median of the brain within ``reference_mm`` of the component's box: local, so a bias
   field does not move it), inside the brain and not in another component;
2. **the cavity they enclose**: the holes of component + enhancing voxels, filled in each plane of the
   image's three axes (a rim closed in one plane and open above or below still encloses that plane's
   part of the cavity; a 3-D hole fill alone would need a rim closed on all sides);
3. what of that is connected (26-connectivity) to the component: enhancing voxels separated from it by
   unenhancing brain (a nearby vessel, another structure) are not taken.

A component grows only where its surroundings enhance; a solid lesion the network already covers gains
at most its partial-volume edge. No voxel of another component is taken, so components never merge.
Written with scipy.ndimage on each component's box (no library offers a rim-aware region growing); pure:
no Django, images in, images out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray
from scipy import ndimage as ndi

from segmentation.fp_reduction import padded_box
from segmentation.model import RimCompletionConfig

_FULL = np.ones((3, 3, 3), dtype=bool)


@dataclass(frozen=True)
class RimCompletionResult:
    """Output of :func:`complete_rims`.

    Attributes:
        labels: The components, each extended (same labels, same count).
        added_mm3: Volume added to each component (label -> mm^3), every label present.
    """

    labels: sitk.Image
    added_mm3: dict[int, float]


def fill_holes(mask: NDArray[np.bool_], across: int | None = None) -> NDArray[np.bool_]:
    """``mask`` with its holes filled: in 3-D, or (``across`` an axis) in each plane across that axis.

    A hole is background not connected to the border (face-connected, within its plane for a plane-wise
    fill), as :func:`scipy.ndimage.binary_fill_holes` defines it and returns (tested equal). Written
    out because scipy fills by dilating from the border until nothing changes, one call per plane: a
    large lesion's box has hundreds of planes, and that loop took most of this stage's time, where one
    labelling of the background does every plane at once."""
    structure = ndi.generate_binary_structure(3, 1)
    edge = np.zeros(mask.shape, dtype=bool)
    for axis in range(3):
        if axis == across:
            # No connection between planes.
            structure[tuple(slice(None) if a != axis else [0, 2] for a in range(3))] = False
            continue
        edge[tuple(slice(None) if a != axis else [0, -1] for a in range(3))] = True
    background, count = ndi.label(~mask, structure)
    hole = np.ones(count + 1, dtype=bool)
    hole[background[edge]] = False  # reaches the border (label 0 is the mask: kept either way)
    return mask | hole[background]


def _fill_planes(mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """Holes of ``mask`` filled in every plane along each of the three axes (a 3-D hole is a hole of
    every plane through it: an in-plane path to the border would be a path in 3-D)."""
    out = fill_holes(mask, across=0)
    for axis in (1, 2):
        out |= fill_holes(mask, across=axis)
    return out


def complete_rims(
    image: sitk.Image, labels: sitk.Image, brain: sitk.Image, config: RimCompletionConfig
) -> RimCompletionResult:
    """Extend every component of ``labels`` to the outer edge of its enhancing rim (module docstring).

    Args:
        image: The MRI in its native geometry.
        labels: Components 1..n on the same grid.
        brain: Brain mask on the same grid (:func:`segmentation.fp_reduction.brain_mask`).
        config: Search distance, enhancement threshold and reference neighbourhood.
    """
    lab = sitk.GetArrayFromImage(labels)
    n = int(lab.max()) if lab.size else 0
    if n == 0:
        return RimCompletionResult(labels=labels, added_mm3={})
    arr = sitk.GetArrayViewFromImage(image)
    inside = sitk.GetArrayViewFromImage(brain) > 0
    spacing_zyx = np.asarray(image.GetSpacing(), dtype=np.float64)[::-1]
    voxel_mm3 = float(np.prod(spacing_zyx))
    # The cavity step may reach cavity_mm out, and the wall is looked for rim_mm beyond the cavity.
    reach_mm = config.rim_mm + (config.cavity_mm if config.max_cavity_intensity is not None else 0.0)
    pad_search = np.ceil(reach_mm / spacing_zyx).astype(int) + 1
    pad_reference = np.ceil(config.reference_mm / spacing_zyx).astype(int) + 1
    original = lab.copy()
    added: dict[int, float] = {}
    for label, raw_box in enumerate(ndi.find_objects(original), start=1):
        if raw_box is None:
            continue
        ref_box = padded_box(raw_box, pad_reference, lab.shape)
        ref_values = arr[ref_box][inside[ref_box] & (original[ref_box] == 0)]
        if ref_values.size == 0:
            added[label] = 0.0
            continue
        reference = float(np.median(ref_values))
        box = padded_box(raw_box, pad_search, lab.shape)
        component = original[box] == label
        free = inside[box] & (lab[box] == 0)
        values = arr[box]
        cavity_level = (
            None if config.max_cavity_intensity is None else config.max_cavity_intensity * reference
        )
        border = component & ~ndi.binary_erosion(component, _FULL)
        if (
            cavity_level is not None
            and float(np.median(values[component])) < cavity_level
            and float(np.median(values[border])) < cavity_level
        ):
            # The component lies in the dark fluid of a cavity, its border too (it has not reached the
            # wall: a component that holds its wall, with a necrotic centre, has a bright border and
            # does not grow into the dark CSF next to it). The rest of that fluid joins it first, so the
            # enhancing wall is looked for around the whole cavity.
            reach = ndi.distance_transform_edt(~component, sampling=spacing_zyx) <= config.cavity_mm
            dark, _ = ndi.label((reach & free & (values < cavity_level)) | component, _FULL)
            joined = np.unique(dark[component])
            component = np.isin(dark, joined[joined > 0])
        near = ndi.distance_transform_edt(~component, sampling=spacing_zyx) <= config.rim_mm
        enhancing = near & free & (values > config.min_enhancement * reference)
        grown = _fill_planes(component | enhancing) & (component | free) & near
        pieces, _ = ndi.label(grown, _FULL)
        keep = np.unique(pieces[component])
        extended = np.isin(pieces, keep[keep > 0])
        # The rim now joined to the component encloses the rest of the cavity: fill it too.
        extended = _fill_planes(extended) & (component | free)
        new = extended & (original[box] != label)
        lab[box][new] = label
        added[label] = float(new.sum()) * voxel_mm3
    out = sitk.GetImageFromArray(lab)
    out.CopyInformation(labels)
    return RimCompletionResult(labels=out, added_mm3=added)
