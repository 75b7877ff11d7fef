"""False-positive reduction: per-lesion-component features and rules, on the native image grid.

The demo model marks enhancing structures that are not metastases: the superior sagittal sinus and the
falx on the midline, the dura along the brain surface, cortical and deep veins. Each 26-connected
component of the lesion labels gets the features below (:func:`component_features`); the rules of
:class:`~segmentation.model.FpReductionConfig` (``config.json`` -> ``postprocessing.fp_reduction``)
reject components, and every rejected component keeps its features and the rule that rejected it
(:class:`RejectedComponent`), so a reader can see why a finding was dropped.

Features (all in physical millimetres, patient coordinates of the image, any orientation):

* ``volume_mm3``: voxel count x voxel volume.
* ``elongation``: ratio of the largest to the smallest extent, from a PCA of the component's voxel
  centres: ``sqrt(l_max / l_min)`` of the eigenvalues of their covariance, to which each voxel's own
  spread (a uniform box: ``spacing**2 / 12`` per axis) is added so a one-voxel-thick line stays finite.
* ``tubularity``: Antiga's objectness (the generalisation of Frangi's vesselness that SimpleITK's
  :func:`~SimpleITK.ObjectnessMeasure` computes; object dimension 1: bright tubes) of the image divided
  by the brain's median, after Gaussian smoothing at each of ``sigmas_mm`` (SimpleITK's recursive
  Gaussian, scale-normalised by ``sigma**2``), the largest response over the scales per voxel; the
  feature is its median over the component's core (0: blob or sheet, 1: tube). The filter's formula is
  evaluated at the core's voxels only (:func:`objectness_at`, equal to SimpleITK's filter to float
  precision, which a test checks): the filter would evaluate the whole padded box (on the real MRI
  about 150 times as many voxels as the cores) and took half of the stage's time.
* ``midline_distance_mm`` and ``midline_width_mm``: distance of the centroid to the midsagittal plane,
  and the component's width across the plane. The plane is estimated from the brain mask (see
  :func:`midsagittal_plane`).
* ``brain_fraction``: the share of the component's bright voxels (above half the brain's median
  intensity) inside the brain mask: orbital fat, scalp fat, nasal mucosa or marrow of an image whose
  skull was not stripped lies outside it; a lesion's dark cyst open to the surface, which no mask
  takes in, does not count against it.
* ``depth_mm``: depth below the brain surface of the component's deepest voxel: the Euclidean distance
  transform of the brain mask with the voxel spacing (:func:`scipy.ndimage.distance_transform_edt`). A
  dural or cortical-vein finding lies entirely within a few millimetres of the surface.
* ``contrast_to_shell``: mean intensity of the component over that of a shell ``shell_mm`` thick around
  it (inside the brain); ``contrast_to_brain``: its mean over the brain's median intensity.
* ``mean_probability``: the network's lesion probability averaged over the component (the native-grid
  map the components were drawn from; NaN when the caller gave none). A vessel or the dura that the
  network only half believes in stays near the threshold over most of its voxels; a lesion's core is
  near 1.

Besides the rules on single features, a second-stage classifier (:class:`~segmentation.model.
FpClassifierConfig`, fitted on phantom components by :mod:`segmentation.fp_classifier`) weighs them
together: :func:`classifier_inputs` turns the features into its inputs, :func:`lesion_probability`
gives a component's probability of being a lesion, and the rule ``classifier`` rejects it below the
config's threshold.

The brain mask is :func:`brain_mask`: the preprocessed head mask on skull-stripped input, the brain
inside the skull otherwise. Pure: no Django, arrays and images in, frozen dataclasses out.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray
from scipy import ndimage as ndi

from rano.measure import Geometry, label_components_array
from segmentation.model import FP_CLASSIFIER_INPUTS, FP_RULES, FpClassifierConfig, FpReductionConfig
from segmentation.preprocess import PreprocessedImage, to_native
from segmentation.probability import to_float


def rounded_record(record: Any) -> dict[str, Any]:
    """A dataclass of features as a JSON-ready mapping, rounded for reading: tuples to lists of 2
    decimals, floats to 3 decimals, non-finite floats to None (JSON has no NaN or Infinity)."""
    out: dict[str, Any] = {}
    for key, value in asdict(record).items():
        if isinstance(value, tuple):
            out[key] = [round(float(v), 2) for v in value]
        elif isinstance(value, float):
            out[key] = round(value, 3) if np.isfinite(value) else None
        else:
            out[key] = value
    return out


@dataclass(frozen=True)
class MidsagittalPlane:
    """A plane in patient coordinates (mm): points ``p`` with ``dot(p - point_mm, normal) == 0``."""

    point_mm: tuple[float, float, float]
    normal: tuple[float, float, float]

    def signed_distance_mm(self, points_mm: NDArray[np.float64]) -> NDArray[np.float64]:
        """Signed distance (mm) of points (n, 3) to the plane."""
        return np.asarray((points_mm - np.asarray(self.point_mm)) @ np.asarray(self.normal), dtype=np.float64)


@dataclass(frozen=True)
class ComponentFeatures:
    """The features of one lesion component (module docstring for their definitions).

    Attributes:
        label: The component's label in the labels it came from.
        volume_mm3: Volume.
        centroid_mm: Centroid in patient coordinates.
        extents_mm: Principal extents (``sqrt(12 * eigenvalue)``: the side of a box of that spread),
            largest first.
        elongation: Largest over smallest principal extent (>= 1).
        tubularity: Median multi-scale objectness (0-1) over the component.
        midline_distance_mm: Distance of the centroid to the midsagittal plane.
        midline_width_mm: Width across the midsagittal plane.
        depth_mm: Depth of the deepest voxel below the brain surface.
        contrast_to_shell: Mean intensity over the mean of the surrounding shell.
        contrast_to_brain: Mean intensity over the brain's median intensity.
        mean_probability: The network's lesion probability averaged over the component (NaN: not given).
        brain_fraction: Share (0-1) of its bright voxels inside the brain mask (NaN: not computed, or
            no bright voxel).
    """

    label: int
    volume_mm3: float
    centroid_mm: tuple[float, float, float]
    extents_mm: tuple[float, float, float]
    elongation: float
    tubularity: float
    midline_distance_mm: float
    midline_width_mm: float
    depth_mm: float
    contrast_to_shell: float
    contrast_to_brain: float
    mean_probability: float = float("nan")
    brain_fraction: float = float("nan")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping, rounded for reading (:func:`rounded_record`)."""
        return rounded_record(self)


@dataclass(frozen=True)
class RejectedComponent:
    """A component the stage removed, with why.

    Attributes:
        features: Its features.
        reason: The first rule (:data:`~segmentation.model.FP_RULES` order) that rejected it.
        rules: Every rule whose test held.
        probability: The classifier's lesion probability (None: no classifier in the config).
    """

    features: ComponentFeatures
    reason: str
    rules: tuple[str, ...]
    probability: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping."""
        out: dict[str, Any] = {"reason": self.reason, "rules": list(self.rules)}
        if self.probability is not None:
            out["probability"] = round(self.probability, 4)
        return {**out, "features": self.features.to_dict()}


@dataclass(frozen=True)
class FpReductionResult:
    """Output of :func:`reduce_false_positives`.

    Attributes:
        labels: The kept components, relabelled 1..n in their former order (raster order stays).
        rejected: The removed components.
        features: The features of every component the rules looked at (those ``keep_volume_mm3``
            protects are not described).
        described: The labels the features' ``label`` refers to: the input components, or their pieces
            when the config splits joined components (:func:`split_joined`).
    """

    labels: sitk.Image
    rejected: tuple[RejectedComponent, ...]
    features: tuple[ComponentFeatures, ...]
    described: sitk.Image | None = None


# --------------------------------------------------------------------------------------------------
# Geometry helpers
# --------------------------------------------------------------------------------------------------


def _index_to_physical(image: sitk.Image, index_zyx: NDArray[Any]) -> NDArray[np.float64]:
    """Physical points (n, 3; x, y, z mm) of array indices (n, 3; z, y, x)."""
    return Geometry.of(image).to_physical(np.asarray(index_zyx, dtype=np.float64)[:, ::-1])


def _voxel_covariance(image: sitk.Image) -> NDArray[np.float64]:
    """Covariance (mm^2) of a point uniform in one voxel, in patient axes: ``D diag(s^2 / 12) D^T``."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    return np.asarray(direction @ np.diag(np.asarray(image.GetSpacing()) ** 2 / 12.0) @ direction.T)


def midsagittal_plane(brain: sitk.Image) -> MidsagittalPlane:
    """The midsagittal plane of a brain (or head) mask, in patient coordinates.

    Estimate: a mirror-symmetric body has the normal of its symmetry plane as a principal axis of its
    covariance, and its centroid on that plane. So the plane passes through the mask's centroid, and its
    normal is the principal axis closest to the patient's left-right axis (x in DICOM's LPS). This holds
    for a head tilted by any angle about any axis as long as left-right stays the closest principal axis,
    and costs one covariance; it ignores asymmetry (a large mass shifting the midline).
    """
    arr = sitk.GetArrayViewFromImage(brain)
    idx = np.argwhere(arr > 0)
    if len(idx) < 4:
        raise ValueError("the brain mask is empty: no midsagittal plane")
    # A subsample is enough for a covariance (and keeps this to milliseconds on a 1 mm grid).
    step = max(1, len(idx) // 200_000)
    pts = _index_to_physical(brain, idx[::step])
    centroid = pts.mean(axis=0)
    _, vectors = np.linalg.eigh(np.cov(pts, rowvar=False))
    normal = vectors[:, int(np.argmax(np.abs(vectors[0, :])))]
    normal = normal if normal[0] >= 0 else -normal
    return MidsagittalPlane(
        point_mm=tuple(float(v) for v in centroid),  # type: ignore[arg-type]
        normal=tuple(float(v) for v in normal),  # type: ignore[arg-type]
    )


def padded_box(box: tuple[slice, ...], pad: NDArray[Any], shape: tuple[int, ...]) -> tuple[slice, ...]:
    """A component's box (:func:`scipy.ndimage.find_objects`) grown by ``pad`` voxels per axis, within
    ``shape``."""
    return tuple(
        slice(max(0, s.start - int(p)), min(dim, s.stop + int(p)))
        for s, p, dim in zip(box, pad, shape, strict=True)
    )


#: The skull test: the share of the head's voxels 2-15 mm under its surface darker than
#: :data:`BONE_LEVEL` times the head's median above which the head holds a skull (measured on the model
#: grid: the 40 realistic tuning phantoms of ``bench fp_classifier`` with the skull 0.080-0.206, without it
#: 0.002-0.010; three basic phantoms with the skull 0.15-0.23; the skull-stripped BraTS image 0.010).
SKULL_DARK_SHARE = 0.04
#: Bone (and air) is darker than this fraction of the head's median intensity.
BONE_LEVEL = 0.15
#: Depth (mm) inside the bright voxels that the brain's core keeps (with the skull): more than half the
#: thickness of the scalp fat (3-6 mm), of the marrow between the skull's tables and of any bridge through
#: the bone, so none of them survives, while the brain's inside (tens of millimetres thick) does.
BRAIN_CORE_DEPTH_MM = 5.0
#: Closing radius (mm) of the brain mask with the skull: fills sulci, fissures and the ventricles'
#: outlets, and a dark lesion or its oedema open to the surface (narrower than twice this).
BRAIN_CLOSING_MM = 8.0


def _ball(radius_mm: float, spacing_xyz: tuple[float, ...]) -> list[int]:
    return [max(1, round(radius_mm / s)) for s in spacing_xyz]


def _largest(mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """The largest 6-connected component of a mask (the mask itself when it has one or none)."""
    lab, n = ndi.label(mask)
    if n <= 1:
        return mask
    return np.asarray(lab == int(np.argmax(np.bincount(lab.ravel())[1:])) + 1)


def _closed(mask: NDArray[np.bool_], radius_mm: float, spacing_zyx: NDArray[np.float64]) -> NDArray[np.bool_]:
    """Morphological closing by a ball of ``radius_mm`` (two Euclidean distance transforms with the
    spacing: a true millimetre ball on any grid), padded so the edge of the field of view cuts nothing."""
    pad = [int(p) for p in np.ceil(radius_mm / spacing_zyx).astype(int) + 1]
    padded = np.pad(mask, [(p, p) for p in pad])
    grown = ndi.distance_transform_edt(~padded, sampling=spacing_zyx) <= radius_mm
    closed = ndi.distance_transform_edt(grown, sampling=spacing_zyx) > radius_mm
    return np.asarray(closed[tuple(slice(p, -p) for p in pad)])


def _under_surface(inside: NDArray[np.bool_], spacing_zyx: NDArray[np.float64]) -> NDArray[np.float64]:
    """Depth (mm) of each voxel of a mask under its surface (the field of view's edge is no surface)."""
    padded = np.pad(inside, 1, mode="edge")
    return np.asarray(ndi.distance_transform_edt(padded, sampling=spacing_zyx)[1:-1, 1:-1, 1:-1])


def _head_median(arr: NDArray[Any], inside: NDArray[np.bool_]) -> float:
    """The median intensity of the head (from at most about 500,000 of its voxels)."""
    return float(np.median(arr[inside][:: max(1, int(inside.sum()) // 500_000)]))


def has_skull(image: sitk.Image, head: sitk.Image) -> bool:
    """Whether the head holds its skull: more than :data:`SKULL_DARK_SHARE` of the voxels 2-15 mm under
    the head mask's surface are bone-dark (below :data:`BONE_LEVEL` times the head's median). Under a
    stripped brain's surface lie cortex and sulci, under a head's the scalp and the bone."""
    arr = sitk.GetArrayViewFromImage(image)
    inside = sitk.GetArrayViewFromImage(head) > 0
    if not inside.any():
        return False
    return _skull_in(
        arr, inside, _head_median(arr, inside), np.asarray(head.GetSpacing(), dtype=np.float64)[::-1]
    )


def _skull_in(
    arr: NDArray[Any], inside: NDArray[np.bool_], median: float, spacing_zyx: NDArray[np.float64]
) -> bool:
    """:func:`has_skull` of a non-empty head whose median the caller has already."""
    depth = _under_surface(inside, spacing_zyx)
    band = inside & (depth > 2.0) & (depth <= 15.0)
    return bool(band.any() and float((arr[band] < BONE_LEVEL * median).mean()) > SKULL_DARK_SHARE)


def brain_mask(image: sitk.Image, head: sitk.Image) -> sitk.Image:
    """The brain inside a head mask (uint8), whose surface stands for the dural surface.

    Both ways start from the bright voxels: those of the head above half its median intensity.

    Skull-stripped input (:func:`has_skull` false): the head mask is the brain already, and this returns
    nearly the same mask: the bright voxels opened by 2 mm, the largest component, closed by 3 mm and with
    its holes (ventricles) filled.

    With the skull, at the model's 2 mm grid the bone's tables are often a voxel thin and the marrow
    between them as bright as the brain, so the bright voxels join the brain to the marrow, the scalp and
    the orbits in many places, and an opening by a voxel or two does not cut them all (the mask was then
    nearly the whole head). So:

    1. the core: the bright voxels more than :data:`BRAIN_CORE_DEPTH_MM` inside the bright set (a
       distance transform), its largest component: the scalp fat, the marrow and every bridge through
       the bone are thinner, and the orbits are cut off by the orbital roof;
    2. the brain: the bright voxels within that depth plus 1 mm of the core and connected to it (the
       cortex and the gyri the core left out; the scalp lies beyond the bone and the CSF);
    3. closed by :data:`BRAIN_CLOSING_MM` with its holes (ventricles) filled, within the head.

    The distance transforms make every radius a true millimetre ball on any grid (scipy's
    :func:`~scipy.ndimage.distance_transform_edt` with the spacing); no library here strips a skull
    without trained weights or an atlas. A head too small for a core keeps the largest bright component.
    """
    arr = sitk.GetArrayViewFromImage(image)
    inside = sitk.GetArrayViewFromImage(head) > 0
    if not inside.any():
        raise ValueError("the head mask is empty")
    median = _head_median(arr, inside)
    bright = inside & (arr > 0.5 * median)
    spacing_zyx = np.asarray(head.GetSpacing(), dtype=np.float64)[::-1]
    if _skull_in(arr, inside, median, spacing_zyx):
        filled = _brain_in_skull(bright, spacing_zyx)
    else:
        filled = _stripped_brain(bright, head)
    out = sitk.GetImageFromArray((filled & inside).astype(np.uint8))
    out.CopyInformation(head)
    return out


def _stripped_brain(bright: NDArray[np.bool_], head: sitk.Image) -> NDArray[np.bool_]:
    """:func:`brain_mask` of a skull-stripped head (its docstring)."""
    image = sitk.GetImageFromArray(bright.astype(np.uint8))
    image.CopyInformation(head)
    spacing = head.GetSpacing()
    opened = sitk.BinaryMorphologicalOpening(image, _ball(2.0, spacing), sitk.sitkBall)
    largest = sitk.RelabelComponent(sitk.ConnectedComponent(opened), sortByObjectSize=True) == 1
    # Pad before closing so the brain touching the edge of the field of view is not eaten.
    pad = _ball(3.0, spacing)
    padded = sitk.ConstantPad(sitk.Cast(largest, sitk.sitkUInt8), pad, pad, 0)
    closed = sitk.Crop(sitk.BinaryMorphologicalClosing(padded, pad, sitk.sitkBall), pad, pad)
    return np.asarray(ndi.binary_fill_holes(sitk.GetArrayViewFromImage(closed) > 0))


def _brain_in_skull(bright: NDArray[np.bool_], spacing_zyx: NDArray[np.float64]) -> NDArray[np.bool_]:
    """:func:`brain_mask` of a head with its skull (its docstring, steps 1-3)."""
    depth = ndi.distance_transform_edt(np.pad(bright, 1), sampling=spacing_zyx)[1:-1, 1:-1, 1:-1]
    core = _largest(depth > BRAIN_CORE_DEPTH_MM)
    if core.any():
        near = ndi.distance_transform_edt(~core, sampling=spacing_zyx) <= BRAIN_CORE_DEPTH_MM + 1.0
        parts, _ = ndi.label(bright & near)
        joined = np.unique(parts[core])
        brain = np.isin(parts, joined[joined > 0])
    else:
        brain = _largest(bright)
    return np.asarray(ndi.binary_fill_holes(_closed(brain, BRAIN_CLOSING_MM, spacing_zyx) | brain))


# --------------------------------------------------------------------------------------------------
# Splitting joined components
# --------------------------------------------------------------------------------------------------


def split_joined(
    labels: sitk.Image, radius_mm: float, min_piece_mm3: float, only: frozenset[int] | None = None
) -> sitk.Image:
    """Split components made of parts joined by thin bridges (a metastasis touching a vein or a sinus)
    into pieces, so each piece is judged on its own.

    Each component (of ``only``, default all) is opened by a ball of ``radius_mm``: its cores are the
    26-connected parts of the opening, the places at least that thick. Every voxel within ``radius_mm``
    of a core joins its nearest core; what is left (the thin parts: vessels, dura, bridges) forms pieces of
    its own, 26-connected. A thin piece smaller than ``min_piece_mm3`` joins its nearest core instead. A
    component with no core, or only one piece, stays whole. The opening is two Euclidean distance
    transforms with the voxel spacing (erosion, then dilation: a true millimetre ball on any grid, in
    linear time, where a voxel structuring element would be neither).

    Returns:
        Piece labels 1..m on the same grid (UInt32); pieces of one component are numbered in a row, in
        the components' order.
    """
    lab = sitk.GetArrayViewFromImage(labels)
    out = np.zeros(lab.shape, dtype=np.uint32)
    spacing_zyx = np.asarray(labels.GetSpacing(), dtype=np.float64)[::-1]
    voxel_mm3 = float(np.prod(spacing_zyx))
    structure = np.ones((3, 3, 3), dtype=bool)
    pad = np.ceil(radius_mm / spacing_zyx).astype(int) + 1
    following = 0
    for label, raw_box in enumerate(ndi.find_objects(lab), start=1):
        if raw_box is None:
            continue
        box = padded_box(raw_box, pad, lab.shape)
        component = lab[box] == label
        pieces = (
            component.astype(np.uint32)
            if only is not None and label not in only
            else _pieces(component, spacing_zyx, radius_mm, min_piece_mm3 / voxel_mm3, structure)
        )
        target = out[box]
        target[component] = pieces[component] + following
        following += int(pieces.max())
    image = sitk.GetImageFromArray(out)
    image.CopyInformation(labels)
    return image


def _pieces(
    component: NDArray[np.bool_],
    spacing_zyx: NDArray[np.float64],
    radius_mm: float,
    min_piece_voxels: float,
    structure: NDArray[np.bool_],
) -> NDArray[np.uint32]:
    """The pieces (1..k) of one component in its padded box (:func:`split_joined`); 1 everywhere when it
    stays whole."""
    whole = component.astype(np.uint32)
    eroded = ndi.distance_transform_edt(component, sampling=spacing_zyx) > radius_mm
    if not eroded.any():
        return whole
    opened = component & (ndi.distance_transform_edt(~eroded, sampling=spacing_zyx) <= radius_mm)
    cores, n_cores = ndi.label(opened, structure)
    distance, nearest = ndi.distance_transform_edt(cores == 0, sampling=spacing_zyx, return_indices=True)
    nearest_core = cores[tuple(nearest)]
    pieces = np.where(component & (distance <= radius_mm), nearest_core, 0).astype(np.uint32)
    thin, n_thin = ndi.label(component & (pieces == 0), structure)
    if n_thin:
        sizes = np.bincount(thin.ravel(), minlength=n_thin + 1)
        large = sizes >= min_piece_voxels
        large[0] = False
        lut = np.zeros(n_thin + 1, dtype=np.uint32)
        lut[large] = np.arange(n_cores + 1, n_cores + 1 + int(large.sum()), dtype=np.uint32)
        from_thin = lut[thin]
        small = (thin > 0) & (from_thin == 0)
        pieces = np.where(from_thin > 0, from_thin, pieces)
        pieces[small] = nearest_core[small]
    if int(pieces.max()) <= 1:
        return whole
    return pieces


# --------------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------------


#: Frangi's structureness constant ``c`` (gamma of SimpleITK's filter) on the image divided by the brain's
#: median intensity and scale-normalised: the measure's "is there any structure" term reaches 0.6 for a
#: tube about 20 % brighter than the brain, and keeps flat, noisy bright regions (a large lesion's
#: inside) near 0. SimpleITK applies this term whatever ``scaleObjectnessMeasure`` says, so it must be
#: set for the intensity scale in use: the filter's default (5.0) assumes 0-255 data.
_STRUCTURENESS_GAMMA = 0.1


#: Frangi's plate-versus-tube (alpha) and blob (beta) weights: the usual 0.5, SimpleITK's defaults.
_ALPHA = _BETA = 0.5


def hessian_at(
    smooth: NDArray[np.floating[Any]], points: NDArray[np.intp], spacing_zyx: NDArray[np.float64]
) -> NDArray[np.float64]:
    """The Hessians (n, 3, 3; z y x) of ``smooth`` at ``points`` (voxel indices, z y x) by central
    differences in physical units, as ITK's ``HessianImageFilter`` computes them; beyond the border the
    edge voxel repeats (ITK's zero-flux Neumann condition)."""
    f = np.pad(np.asarray(smooth, dtype=np.float64), 1, mode="edge")
    unit = np.eye(3, dtype=np.intp)

    def at(offset: NDArray[np.intp]) -> NDArray[np.float64]:
        q = points + 1 + offset
        return f[q[:, 0], q[:, 1], q[:, 2]]

    centre = at(np.zeros(3, dtype=np.intp))
    hessian = np.empty((len(points), 3, 3))
    for i in range(3):
        hessian[:, i, i] = (at(unit[i]) - 2.0 * centre + at(-unit[i])) / spacing_zyx[i] ** 2
        for j in range(i + 1, 3):
            cross = (
                at(unit[i] + unit[j]) - at(unit[i] - unit[j]) - at(unit[j] - unit[i]) + at(-unit[i] - unit[j])
            )
            hessian[:, i, j] = hessian[:, j, i] = cross / (4.0 * spacing_zyx[i] * spacing_zyx[j])
    return hessian


def objectness_at(
    smooth: NDArray[np.floating[Any]],
    points: NDArray[np.intp],
    spacing_zyx: NDArray[np.float64],
    gamma: float = _STRUCTURENESS_GAMMA,
) -> NDArray[np.float64]:
    """SimpleITK's :func:`~SimpleITK.ObjectnessMeasure` of ``smooth`` (bright tubes: object dimension
    1, alpha = beta = 0.5, ``gamma``, not scaled by the largest eigenvalue) at ``points`` (voxel indices,
    z y x) only.

    Written out because the filter evaluates every voxel of its input, where the feature needs the
    component's core: the Hessian by the filter's central differences (:func:`hessian_at`), then ITK's
    ``HessianToObjectnessMeasureImageFilter`` formula on its eigenvalues sorted by magnitude. Equal to
    the filter to float precision (tested)."""
    hessian = hessian_at(smooth, points, spacing_zyx)
    eig = np.linalg.eigvalsh(hessian)
    eig = np.take_along_axis(eig, np.argsort(np.abs(eig), axis=1, kind="stable"), axis=1)
    mag = np.abs(eig)
    # A bright tube: the two largest curvatures negative, both non-zero.
    valid = (eig[:, 1] <= 0.0) & (eig[:, 2] <= 0.0) & (mag[:, 1] > 0.0)
    safe = np.where(valid[:, None], mag, 1.0)
    r_a = safe[:, 1] / safe[:, 2]  # plate against tube
    r_b = safe[:, 0] / np.sqrt(safe[:, 1] * safe[:, 2])  # blob against tube
    structure = (mag**2).sum(axis=1)
    measure = (
        (1.0 - np.exp(-0.5 * r_a**2 / _ALPHA**2))
        * np.exp(-0.5 * r_b**2 / _BETA**2)
        * (1.0 - np.exp(-0.5 * structure / gamma**2))
    )
    return np.where(valid, measure, 0.0)


def _tubularity(
    image: sitk.Image,
    box: tuple[slice, ...],
    component: NDArray[np.bool_],
    sigmas_mm: tuple[float, ...],
    brain_median: float,
) -> float:
    """Median over the component's core of the largest scale-normalised objectness (bright tubes) over
    scales. ``component`` is the component in its box ``box`` of ``image``. The core (voxels at least
    half the component's largest inner depth from its border) keeps the edge of a blob out: there one
    tangential curvature can mimic a tube's. The smoothing runs on the core's box padded by three of
    the largest sigma (a large lesion's core is an eighth of its box)."""
    spacing_zyx = np.asarray(image.GetSpacing(), dtype=np.float64)[::-1]
    inner = ndi.distance_transform_edt(np.pad(component, 1), sampling=spacing_zyx)[1:-1, 1:-1, 1:-1]
    core = np.argwhere(inner >= 0.5 * float(inner.max())) + np.asarray([b.start for b in box])
    pad = np.ceil(3.0 * max(sigmas_mm) / spacing_zyx).astype(int) + 1
    shape = image.GetSize()[::-1]
    core_box = tuple(
        slice(int(a), int(b) + 1) for a, b in zip(core.min(axis=0), core.max(axis=0), strict=True)
    )
    sub_box = padded_box(core_box, pad, shape)
    sub = sitk.Cast(image[sub_box[2], sub_box[1], sub_box[0]], sitk.sitkFloat32) / float(
        max(brain_median, 1e-6)
    )
    points = core - np.asarray([b.start for b in sub_box])
    best = np.zeros(len(points))
    for sigma in sigmas_mm:
        # Multiplying by sigma^2 normalises the Hessian across scales (Lindeberg), as Frangi does.
        smooth = sitk.SmoothingRecursiveGaussian(sub, float(sigma)) * float(sigma) ** 2
        best = np.maximum(best, objectness_at(sitk.GetArrayViewFromImage(smooth), points, spacing_zyx))
    return float(np.median(best))


def _bright_share(values: NDArray[np.float32], in_brain: NDArray[np.bool_], brain_median: float) -> float:
    """The share of the voxels above half the brain's median that lie in the brain (NaN: none is)."""
    bright = values > 0.5 * brain_median
    return float(in_brain[bright].mean()) if bright.any() else float("nan")


def component_features(
    image: sitk.Image,
    labels: sitk.Image,
    brain: sitk.Image,
    config: FpReductionConfig,
    plane: MidsagittalPlane | None = None,
    depth: sitk.Image | None = None,
    only: frozenset[int] | None = None,
    probability: sitk.Image | None = None,
) -> tuple[ComponentFeatures, ...]:
    """The features of every labelled component (module docstring), in label order.

    Args:
        image: The MRI on the grid of ``labels``.
        labels: Component labels 1..n (0: background).
        brain: Brain mask on the same grid (:func:`brain_mask`).
        config: Scales of the tubularity and shell thickness.
        plane: The midsagittal plane (default: :func:`midsagittal_plane` of ``brain``).
        depth: Depth below the brain surface (mm) on the same grid (default: the Euclidean distance
            transform of ``brain`` with the voxel spacing).
        only: The labels to describe (default: all).
        probability: The network's probability map on the same grid, float (0..1) or the compact type
            (:mod:`segmentation.probability`), for ``mean_probability`` (default: NaN).
    """
    lab = sitk.GetArrayViewFromImage(labels)
    n = int(lab.max()) if lab.size else 0
    if n == 0:
        return ()
    arr = sitk.GetArrayViewFromImage(image).astype(np.float32)
    inside = sitk.GetArrayViewFromImage(brain) > 0
    plane = plane or midsagittal_plane(brain)
    spacing_zyx = np.asarray(image.GetSpacing(), dtype=np.float64)[::-1]
    voxel_mm3 = float(np.prod(spacing_zyx))
    depth_mm = (
        ndi.distance_transform_edt(inside, sampling=spacing_zyx)
        if depth is None
        else sitk.GetArrayViewFromImage(depth)
    )
    brain_values = arr[inside]
    brain_median = float(np.median(brain_values)) if brain_values.size else float(np.median(arr))
    voxel_cov = _voxel_covariance(image)
    prob = None if probability is None else sitk.GetArrayViewFromImage(probability)
    shell_pad = np.ceil(config.shell_mm / spacing_zyx).astype(int) + 1
    out = []
    for label, box in enumerate(ndi.find_objects(lab), start=1):
        if box is None or (only is not None and label not in only):
            continue
        component = lab[box] == label
        idx = np.argwhere(component) + np.asarray([s.start for s in box])
        pts = _index_to_physical(image, idx)
        centroid = pts.mean(axis=0)
        cov = (np.cov(pts, rowvar=False) if len(pts) > 1 else np.zeros((3, 3))) + voxel_cov
        eig = np.clip(np.linalg.eigvalsh(cov)[::-1], 0.0, None)
        extents = np.sqrt(12.0 * eig)
        across = plane.signed_distance_mm(pts)
        # Width across the plane: span of the voxel centres plus one voxel's thickness along the normal.
        normal = np.asarray(plane.normal)
        voxel_along_normal = float(np.sqrt(12.0 * normal @ voxel_cov @ normal))
        # The shell: within shell_mm of the component (a distance transform of the box grown by the
        # shell, with the spacing: a true millimetre shell on anisotropic grids, where dilation
        # iterations would not be).
        around = padded_box(box, shell_pad, lab.shape)
        dist = ndi.distance_transform_edt(lab[around] != label, sampling=spacing_zyx)
        shell = (dist > 0) & (dist <= config.shell_mm) & inside[around] & (lab[around] == 0)
        mean_in = float(arr[box][component].mean())
        mean_shell = float(arr[around][shell].mean()) if shell.any() else float("nan")
        mean_probability = float("nan") if prob is None else float(to_float(prob[box][component]).mean())
        out.append(
            ComponentFeatures(
                label=label,
                volume_mm3=float(component.sum()) * voxel_mm3,
                centroid_mm=tuple(float(v) for v in centroid),  # type: ignore[arg-type]
                extents_mm=tuple(float(v) for v in extents),  # type: ignore[arg-type]
                elongation=float(np.sqrt(eig[0] / eig[-1])) if eig[-1] > 0 else float("inf"),
                tubularity=_tubularity(image, box, component, config.sigmas_mm, brain_median),
                midline_distance_mm=float(abs(plane.signed_distance_mm(centroid[None, :])[0])),
                midline_width_mm=float(across.max() - across.min()) + voxel_along_normal,
                depth_mm=float(depth_mm[box][component].max()),
                contrast_to_shell=mean_in / mean_shell if mean_shell > 0 else float("inf"),
                contrast_to_brain=mean_in / brain_median if brain_median > 0 else float("inf"),
                mean_probability=mean_probability,
                brain_fraction=_bright_share(arr[box][component], inside[box][component], brain_median),
            )
        )
    return tuple(out)


# --------------------------------------------------------------------------------------------------
# The second-stage classifier
# --------------------------------------------------------------------------------------------------

#: Where a distance stops meaning anything more (mm): a component 60 mm from the midline or 60 mm deep
#: is as far from the falx or the dura as one farther still.
_DISTANCE_CAP_MM = 60.0


def logit(p: float) -> float:
    """Log-odds of a probability clipped to 1e-4..1 - 1e-4 (NaN stays NaN)."""
    q = float(np.clip(p, 1e-4, 1.0 - 1e-4))
    return float(np.log(q / (1.0 - q)))


def classifier_inputs(features: ComponentFeatures) -> dict[str, float]:
    """The :data:`~segmentation.model.FP_CLASSIFIER_INPUTS` of a component: logarithms of its sizes and
    ratios (they span decades; a linear model weighs their orders of magnitude), its distances capped at
    60 mm, the log-odds of its mean probability (clipped to 1e-4..1 - 1e-4; NaN when the features were
    computed without the probability map). Infinite ratios (a one-voxel component, an empty shell) are
    clipped to finite values."""
    f = features

    def log(value: float, low: float, high: float) -> float:
        return float(np.log(np.clip(value, low, high)))

    inputs = {
        "log_volume": log(f.volume_mm3, 1e-3, 1e7),
        "log_elongation": log(f.elongation, 1.0, 1e3),
        "tubularity": float(f.tubularity),
        "midline_distance": min(float(f.midline_distance_mm), _DISTANCE_CAP_MM),
        "log_midline_width": log(f.midline_width_mm, 0.1, 1e3),
        "depth": min(float(f.depth_mm), _DISTANCE_CAP_MM),
        "log_shell_contrast": log(f.contrast_to_shell, 1e-2, 1e2),
        "log_brain_contrast": log(f.contrast_to_brain, 1e-2, 1e2),
        "probability_logit": logit(f.mean_probability),
    }
    return {name: inputs[name] for name in FP_CLASSIFIER_INPUTS}


def lesion_probability(features: ComponentFeatures, classifier: FpClassifierConfig) -> float:
    """The classifier's probability that a component is a lesion (:class:`~segmentation.model.FpClassifierConfig`).

    Raises:
        ValueError: An input the classifier uses is missing (``probability_logit`` of features computed
            without the probability map).
    """
    try:
        return classifier.probability(classifier_inputs(features))
    except ValueError as exc:
        raise ValueError(f"{exc}, which component {features.label} lacks") from None


# --------------------------------------------------------------------------------------------------
# Rules and the stage
# --------------------------------------------------------------------------------------------------


def rules_that_reject(
    features: ComponentFeatures, config: FpReductionConfig, probability: float | None = None
) -> tuple[str, ...]:
    """The rules (:data:`~segmentation.model.FP_RULES` order) whose test holds for a component; none
    when it reaches ``keep_volume_mm3``. ``probability``: the classifier's :func:`lesion_probability`
    of the component when the caller has it already."""
    c, f = config, features
    if c.keep_volume_mm3 is not None and f.volume_mm3 >= c.keep_volume_mm3:
        return ()
    if c.classifier is not None and probability is None:
        probability = lesion_probability(f, c.classifier)
    tests = {
        "outside_brain": c.min_brain_fraction is not None and f.brain_fraction < c.min_brain_fraction,
        "tubularity": c.max_tubularity is not None and f.tubularity > c.max_tubularity,
        "elongation": c.max_elongation is not None and f.elongation > c.max_elongation,
        "midline": c.midline_distance_mm is not None
        and f.midline_distance_mm < c.midline_distance_mm
        and (c.midline_max_width_mm is None or f.midline_width_mm <= c.midline_max_width_mm),
        "surface": c.min_depth_mm is not None and f.depth_mm < c.min_depth_mm,
        "shell_contrast": c.min_shell_contrast is not None and f.contrast_to_shell < c.min_shell_contrast,
        "brain_contrast": c.min_brain_contrast is not None and f.contrast_to_brain < c.min_brain_contrast,
        "classifier": c.classifier is not None
        and probability is not None
        and probability < c.classifier.min_probability,
    }
    return tuple(rule for rule in FP_RULES if tests[rule])


def apply_rules(
    labels: sitk.Image, features: tuple[ComponentFeatures, ...], config: FpReductionConfig
) -> FpReductionResult:
    """Remove the components some rule rejects; the rest relabelled 1..n in their former order."""
    lab = sitk.GetArrayViewFromImage(labels)
    n = int(lab.max()) if lab.size else 0
    keep = np.ones(n + 1, dtype=bool)
    rejected = []
    for f in features:
        probability = None if config.classifier is None else lesion_probability(f, config.classifier)
        rules = rules_that_reject(f, config, probability)
        if rules:
            keep[f.label] = False
            rejected.append(
                RejectedComponent(features=f, reason=rules[0], rules=rules, probability=probability)
            )
    keep[0] = False
    lut = np.zeros(n + 1, dtype=np.uint32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.uint32)
    out = sitk.GetImageFromArray(lut[lab])
    out.CopyInformation(labels)
    return FpReductionResult(labels=out, rejected=tuple(rejected), features=features)


def native_brain(brain_model: sitk.Image, pre: PreprocessedImage) -> sitk.Image:
    """A brain mask on the model grid (:func:`brain_mask`) mapped onto the native grid of ``pre``'s image
    (uint8), as the probability is."""
    return sitk.Cast(
        to_native(sitk.GetArrayFromImage(brain_model).astype(np.float32), pre) > 0.5, sitk.sitkUInt8
    )


def reduce_false_positives(
    image: sitk.Image,
    labels: sitk.Image,
    pre: PreprocessedImage,
    config: FpReductionConfig,
    brain_model: sitk.Image | None = None,
    brain: sitk.Image | None = None,
    probability: sitk.Image | None = None,
) -> FpReductionResult:
    """The pipeline stage: features of every component of ``labels`` (native grid), then the rules.

    Args:
        image: The MRI in its native geometry.
        labels: Lesion components on the same grid (:func:`rano.measure.label_components`).
        pre: The preprocessing of ``image`` (its head mask).
        config: The rules.
        brain_model: :func:`brain_mask` of ``pre`` on the model grid, when the caller has it already.
        brain: ``brain_model`` on the native grid (:func:`native_brain`), when the caller has it already.
        probability: The network's probability map the components were drawn from (native grid), for
            the ``mean_probability`` feature; a classifier that uses it needs it.
    """
    if not sitk.GetArrayViewFromImage(labels).any():
        return FpReductionResult(labels=labels, rejected=(), features=())
    # Brain mask, midsagittal plane and depth on the model grid (2 mm for the demo: an eighth of the
    # voxels of a 1 mm image, seconds saved), then mapped onto the native grid like the probability.
    if brain_model is None:
        brain_model = brain_mask(pre.model_space, pre.head_mask)
    spacing_zyx = np.asarray(brain_model.GetSpacing(), dtype=np.float64)[::-1]
    depth_model = ndi.distance_transform_edt(
        sitk.GetArrayViewFromImage(brain_model) > 0, sampling=spacing_zyx
    )
    brain = native_brain(brain_model, pre) if brain is None else brain
    depth = to_native(depth_model.astype(np.float32), pre)
    # Components that keep_volume_mm3 protects are kept whatever their features: not describing them
    # saves most of the stage's time on a large lesion (its box and objectness filter are the largest).
    counts = np.bincount(sitk.GetArrayViewFromImage(labels).ravel())
    voxel_mm3 = float(np.prod(image.GetSpacing()))
    limit = np.inf if config.keep_volume_mm3 is None else config.keep_volume_mm3
    only = frozenset(int(i) for i in np.nonzero(counts * voxel_mm3 < limit)[0] if i > 0)
    plane = midsagittal_plane(brain_model)
    if config.split_radius_mm is None:
        features = component_features(image, labels, brain, config, plane, depth, only, probability)
        return replace(apply_rules(labels, features, config), described=labels)
    pieces = split_joined(labels, config.split_radius_mm, config.split_min_piece_mm3, only)
    lab, piece_arr = sitk.GetArrayViewFromImage(labels), sitk.GetArrayViewFromImage(pieces)
    only_pieces = frozenset(int(i) for i in np.unique(piece_arr[np.isin(lab, list(only))]) if i > 0)
    features = component_features(image, pieces, brain, config, plane, depth, only_pieces, probability)
    judged = apply_rules(pieces, features, config)
    # The kept pieces of one component touch again: they are one lesion, as the network drew it.
    kept = label_components_array(
        sitk.GetArrayViewFromImage(judged.labels) > 0, image.GetSpacing(), min_volume_mm3=0.0
    )
    out = sitk.GetImageFromArray(kept)
    out.CopyInformation(labels)
    return replace(judged, labels=out, described=pieces)
