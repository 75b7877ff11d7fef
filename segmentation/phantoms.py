"""Synthetic post-gadolinium T1 MRI with brain metastases, and their ground truth.

The anatomy is real: the MNI152 2009c symmetric T1 template and its grey/white matter maps, which ship
inside the nilearn wheel (no download). On top of it this module paints what a contrast-enhanced 3D T1
of a patient with brain metastases shows:

* lesions of 3 to 40 mm, solid or ring-enhancing around a necrotic core, lobulated, with perilesional
  oedema, placed near the cortex, next to the ventricles or deep in the white matter;
* enhancing distractors that are *not* lesions: cortical veins, the superior sagittal sinus, patchy
  dura, the falx and the choroid plexus;
* optionally skull and scalp (the template is skull-stripped), a smooth multiplicative bias field,
  Rician noise and mild texture;
* several acquisition geometries (axial/sagittal/coronal, 0.5 to 2 mm) and a rigid head pose.

Every volume comes with a binary lesion mask, an instance label map (label value = lesion id) and a
table of the lesions, all in the acquisition geometry. :func:`make_longitudinal_series` renders several
visits of one patient whose lesions grow, shrink, disappear and appear, with slight head repositioning
between visits; lesion ids are stable across visits.

This is the ``basic`` style, the one the demo model was trained on and the demo trial shows.
``make_phantom(seed, style="realistic")`` and ``render_phantom(..., realism=...)`` switch to
:mod:`segmentation.phantom_realism` (uneven rims, anatomical distractors, scanner variety and artefacts,
warped anatomy); without them every volume is exactly what it was before that module existed.

Nothing here is for clinical use: it exists for tests, training of the demo model and the demo trial.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

if TYPE_CHECKING:  # the realistic style imports this module; only its type is needed here
    from segmentation.phantom_realism import Realism

LesionKind = Literal["solid", "ring"]
LesionLocation = Literal["cortex", "ventricle", "deep", "junction", "cerebellum", "brainstem"]
#: ``basic``: what the demo model was trained on; ``realistic``: :mod:`segmentation.phantom_realism`.
PhantomStyle = Literal["basic", "realistic"]

#: Styles of a set of synthetic patients (training, validation): a :data:`PhantomStyle`, or ``mixed``
#: (even patients basic, odd ones realistic; :func:`segmentation.train.phantom_sources`).
PHANTOM_SET_STYLES = ("basic", "realistic", "mixed")

#: Diameters the sampler draws from when not told otherwise (mm).
DEFAULT_DIAMETER_RANGE_MM: tuple[float, float] = (3.0, 40.0)
#: Extra room around the template so that skull and scalp fit (mm; the template is 1 mm isotropic).
_TEMPLATE_PAD_VOXELS = 18


class PhantomError(ValueError):
    """A phantom was requested with parameters that cannot be rendered."""


# --------------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------------

#: Direction matrices (columns: index axis i, j, k in LPS physical space) of the usual slice planes.
_PLANE_DIRECTIONS: dict[str, tuple[float, ...]] = {
    # i -> patient left, j -> posterior, k -> superior (DICOM axial)
    "axial": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
    # i -> posterior, j -> inferior, k -> right (DICOM sagittal: row (0,1,0), column (0,0,-1))
    "sagittal": (0.0, 0.0, -1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0),
    # i -> left, j -> inferior, k -> posterior (DICOM coronal: row (1,0,0), column (0,0,-1))
    "coronal": (1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, -1.0, 0.0),
}


@dataclass(frozen=True)
class AcquisitionGeometry:
    """The voxel grid a phantom is "acquired" on.

    Attributes:
        name: Short label of the protocol.
        plane: Slice plane, ``axial``, ``sagittal`` or ``coronal`` (sets the direction cosines).
        spacing_mm: Voxel size along the index axes i, j, k (mm).
        size: Number of voxels along i, j, k.
    """

    name: str
    plane: str
    spacing_mm: tuple[float, float, float]
    size: tuple[int, int, int]

    def __post_init__(self) -> None:
        if self.plane not in _PLANE_DIRECTIONS:
            raise PhantomError(f"unknown slice plane {self.plane!r}; use one of {sorted(_PLANE_DIRECTIONS)}")
        if len(self.spacing_mm) != 3 or min(self.spacing_mm) <= 0:
            raise PhantomError(f"spacing_mm must be three positive numbers, got {self.spacing_mm}")
        if len(self.size) != 3 or min(self.size) < 8:
            raise PhantomError(f"size must be three integers >= 8, got {self.size}")

    @property
    def direction(self) -> tuple[float, ...]:
        """Row-major 3x3 direction cosine matrix (ITK convention)."""
        return _PLANE_DIRECTIONS[self.plane]

    def reference_image(self, center_mm: Sequence[float] = (0.0, 0.0, 0.0)) -> sitk.Image:
        """An empty image on this grid whose centre sits at ``center_mm`` (LPS, mm)."""
        ref = sitk.Image([int(s) for s in self.size], sitk.sitkUInt8)
        ref.SetSpacing([float(s) for s in self.spacing_mm])
        ref.SetDirection(self.direction)
        direction = np.asarray(self.direction).reshape(3, 3)
        half_extent = direction @ ((np.asarray(self.size) - 1) * np.asarray(self.spacing_mm) / 2.0)
        ref.SetOrigin([float(v) for v in np.asarray(center_mm, dtype=float) - half_extent])
        return ref


#: Protocols used for tests, training and the demo. ``axial_0p5mm`` is the 512 x 512 x 208 series
#: of the GPU benchmark.
GEOMETRIES: dict[str, AcquisitionGeometry] = {
    "axial_1mm": AcquisitionGeometry("axial_1mm", "axial", (1.0, 1.0, 1.0), (240, 240, 176)),
    "sagittal_1mm": AcquisitionGeometry("sagittal_1mm", "sagittal", (1.0, 1.0, 1.0), (256, 256, 176)),
    "coronal_0p9x0p9x1p2mm": AcquisitionGeometry(
        "coronal_0p9x0p9x1p2mm", "coronal", (0.9, 0.9, 1.2), (256, 224, 180)
    ),
    "axial_0p9x0p9x2mm": AcquisitionGeometry("axial_0p9x0p9x2mm", "axial", (0.9, 0.9, 2.0), (256, 256, 90)),
    "axial_0p5mm": AcquisitionGeometry("axial_0p5mm", "axial", (0.5, 0.5, 1.0), (512, 512, 208)),
    "axial_2mm": AcquisitionGeometry("axial_2mm", "axial", (2.0, 2.0, 2.0), (120, 120, 90)),
}


@dataclass(frozen=True)
class HeadPose:
    """Rigid position of the head in the scanner, relative to the template.

    Attributes:
        rotation_deg: Rotations about the x (LR), y (AP) and z (SI) axes through the head centre (degrees).
        translation_mm: Shift of the head (LPS, mm).
    """

    rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    translation_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def transform(self, center_mm: Sequence[float]) -> sitk.Euler3DTransform:
        """The scanner-to-template transform (what :func:`SimpleITK.Resample` expects)."""
        tx = sitk.Euler3DTransform()
        tx.SetCenter([float(c) for c in center_mm])
        tx.SetRotation(*[math.radians(a) for a in self.rotation_deg])
        tx.SetTranslation([float(t) for t in self.translation_mm])
        # The pose moves the head in the scanner; resampling needs scanner -> template, its inverse.
        return tx.GetInverse()  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------
# Template anatomy
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TemplateAnatomy:
    """The MNI152 template arrays (z, y, x), 1 mm isotropic, padded for skull and scalp.

    Attributes:
        t1: Template T1 scaled so that the median white-matter intensity is 1.0.
        gm: Grey-matter probability (0-1).
        wm: White-matter probability (0-1).
        brain: Brain mask (template non-zero voxels).
        csf: Cerebrospinal fluid inside the brain mask (dark, neither GM nor WM).
        ventricles: The lateral/third ventricles (central CSF components).
        depth_mm: Distance from each brain voxel to the outside of the brain (mm), 0 outside.
        outside_mm: Distance from each non-brain voxel to the brain (mm), 0 inside.
        reference: An image carrying the template geometry (origin, spacing, direction).
    """

    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    brain: np.ndarray
    csf: np.ndarray
    ventricles: np.ndarray
    depth_mm: np.ndarray
    outside_mm: np.ndarray
    reference: sitk.Image

    @property
    def head_center_mm(self) -> tuple[float, float, float]:
        """Centre of the brain mask's bounding box (LPS, mm)."""
        zz, yy, xx = np.nonzero(self.brain)
        idx = [(xx.min() + xx.max()) / 2.0, (yy.min() + yy.max()) / 2.0, (zz.min() + zz.max()) / 2.0]
        return tuple(self.reference.TransformContinuousIndexToPhysicalPoint(idx))  # type: ignore[return-value]


def _template_dir() -> Path:
    import nilearn  # imported lazily: only the data files are needed

    return Path(nilearn.__file__).parent / "datasets" / "data"


@functools.lru_cache(maxsize=1)
def load_template() -> TemplateAnatomy:
    """Load (once per process) the MNI152 2009c T1 and tissue maps shipped inside nilearn.

    Raises:
        PhantomError: When the template files are not found in the installed nilearn package.
    """
    base = _template_dir()
    paths = {k: base / f"mni_icbm152_{k}_tal_nlin_sym_09a_converted.nii.gz" for k in ("t1", "gm", "wm")}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise PhantomError(f"MNI152 template not found in the nilearn package: {', '.join(missing)}")
    images = {k: sitk.ReadImage(str(p), sitk.sitkFloat32) for k, p in paths.items()}
    pad = [_TEMPLATE_PAD_VOXELS] * 3
    images = {k: sitk.ConstantPad(im, pad, pad, 0.0) for k, im in images.items()}
    t1 = sitk.GetArrayFromImage(images["t1"])
    gm = sitk.GetArrayFromImage(images["gm"]) / 255.0
    wm = sitk.GetArrayFromImage(images["wm"]) / 255.0
    brain = t1 > 0
    t1 = t1 / float(np.median(t1[wm > 0.8]))
    csf = brain & (gm + wm < 0.35)
    depth_mm = ndi.distance_transform_edt(brain).astype(np.float32)
    outside_mm = ndi.distance_transform_edt(~brain).astype(np.float32)
    # Ventricles: deep CSF, kept as the large connected components (the lateral and third ventricles).
    deep_csf = csf & (depth_mm > 12)
    labels, n = ndi.label(deep_csf)
    ventricles = np.zeros_like(brain)
    if n:
        sizes = ndi.sum_labels(deep_csf, labels, index=np.arange(1, n + 1))
        keep = np.flatnonzero(sizes >= 500) + 1
        ventricles = np.isin(labels, keep)
    for arr in (t1, gm, wm, depth_mm, outside_mm):
        arr.setflags(write=False)
    return TemplateAnatomy(
        t1=t1.astype(np.float32),
        gm=gm.astype(np.float32),
        wm=wm.astype(np.float32),
        brain=brain,
        csf=csf,
        ventricles=ventricles,
        depth_mm=depth_mm,
        outside_mm=outside_mm,
        reference=images["t1"],
    )


# --------------------------------------------------------------------------------------------------
# Lesions
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LesionSpec:
    """One lesion, described in template space.

    Attributes:
        lesion_id: Label value in the instance map; stable across the visits of a series.
        center_mm: Centre in template physical space (LPS, mm).
        diameter_mm: Nominal diameter (mm); the rendered shape is lobulated and slightly ellipsoidal.
        kind: ``solid`` or ``ring`` (enhancing rim around a necrotic core).
        location: Where it was placed: ``cortex``, ``ventricle`` or ``deep`` (basic sampler), also
            ``junction``, ``cerebellum`` or ``brainstem`` (realistic sampler).
        rim_thickness_mm: Enhancing rim thickness of a ring lesion (mm).
        enhancement: Lesion intensity relative to white matter (1.0).
        shape_seed: Seed of the shape (axes, lobulation, texture), kept across visits.
        rim_unevenness: Spread of the rim thickness over directions (log scale; realistic style only).
        heterogeneity: Relative amplitude of blotchy enhancement (realistic style only).
        fluid_core: A ring lesion's centre is a cyst (dark, homogeneous fluid) rather than necrosis
            (realistic style only).
    """

    lesion_id: int
    center_mm: tuple[float, float, float]
    diameter_mm: float
    kind: LesionKind = "solid"
    location: LesionLocation = "deep"
    rim_thickness_mm: float = 2.5
    enhancement: float = 1.5
    shape_seed: int = 0
    rim_unevenness: float = 0.0
    heterogeneity: float = 0.0
    fluid_core: bool = False

    def __post_init__(self) -> None:
        if self.lesion_id < 1 or self.lesion_id > 65535:
            raise PhantomError(f"lesion_id must be in 1..65535, got {self.lesion_id}")
        if not 0.0 <= self.diameter_mm <= 80.0:
            raise PhantomError(f"diameter_mm must be in 0..80 mm, got {self.diameter_mm}")
        if self.kind not in ("solid", "ring"):
            raise PhantomError(f"kind must be 'solid' or 'ring', got {self.kind!r}")
        if not 0.0 <= self.rim_unevenness <= 1.5 or not 0.0 <= self.heterogeneity <= 1.0:
            raise PhantomError("rim_unevenness must be within 0..1.5 and heterogeneity within 0..1")


@dataclass(frozen=True)
class PhantomLesion:
    """A rendered lesion, in the acquisition's physical space.

    Attributes:
        lesion_id: Label value in :attr:`Phantom.labels`.
        center_mm: Nominal centre (LPS, mm) in the acquired image's physical space.
        diameter_mm: Nominal diameter (mm).
        kind: ``solid`` or ``ring``.
        location: ``cortex``, ``ventricle`` or ``deep``.
        volume_mm3: Volume of its label in the acquired mask (mm^3).
    """

    lesion_id: int
    center_mm: tuple[float, float, float]
    diameter_mm: float
    kind: LesionKind
    location: LesionLocation
    volume_mm3: float


def sample_lesion_specs(
    rng: np.random.Generator,
    n_lesions: int,
    diameter_range_mm: tuple[float, float] = DEFAULT_DIAMETER_RANGE_MM,
    first_id: int = 1,
    avoid: Sequence[LesionSpec] = (),
) -> list[LesionSpec]:
    """Draw lesions at plausible places of the template brain, without overlaps.

    Diameters are log-uniform in ``diameter_range_mm`` (most metastases are small). About 40 % sit near
    the cortex (the grey-white junction, where metastases seed), 25 % next to the ventricles and the rest
    deep in the white matter. Lesions over 12 mm are ring-enhancing with probability 0.6.

    Args:
        rng: Random generator.
        n_lesions: How many lesions (>= 0).
        diameter_range_mm: (smallest, largest) nominal diameter (mm), within 1..80.
        first_id: Lesion id of the first lesion; the following ones count up.
        avoid: Lesions already placed, kept at a distance.

    Returns:
        The lesion specifications in template space.

    Raises:
        PhantomError: On a negative count, an invalid diameter range, or when the lesions do not fit.
    """
    lo, hi = diameter_range_mm
    if n_lesions < 0:
        raise PhantomError(f"n_lesions must be >= 0, got {n_lesions}")
    if not 1.0 <= lo <= hi <= 80.0:
        raise PhantomError(f"diameter_range_mm must satisfy 1 <= low <= high <= 80, got {diameter_range_mm}")
    anat = load_template()
    placed: list[LesionSpec] = list(avoid)
    out: list[LesionSpec] = []
    cortex_band = anat.brain & (anat.gm > 0.35) & (anat.wm > 0.15)  # grey-white junction
    periventricular = anat.brain & ~anat.csf & (ndi.binary_dilation(anat.ventricles, iterations=6))
    deep_wm = anat.wm > 0.8
    candidates = {
        "cortex": np.argwhere(cortex_band),
        "ventricle": np.argwhere(periventricular),
        "deep": np.argwhere(deep_wm),
    }
    for k in range(n_lesions):
        diameter = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        location: LesionLocation = str(rng.choice(["cortex", "ventricle", "deep"], p=[0.4, 0.25, 0.35]))  # type: ignore[assignment]
        radius = diameter / 2.0
        for _attempt in range(400):
            idx = candidates[location][rng.integers(len(candidates[location]))]
            # Keep most of the lesion inside the brain: its centre at least 0.6 radius deep.
            if anat.depth_mm[tuple(idx)] < max(1.5, 0.6 * radius) or anat.csf[tuple(idx)]:
                continue
            center = anat.reference.TransformIndexToPhysicalPoint([int(idx[2]), int(idx[1]), int(idx[0])])
            if all(
                np.linalg.norm(np.subtract(center, p.center_mm)) > radius + p.diameter_mm / 2.0 + 4.0
                for p in placed
            ):
                break
        else:
            raise PhantomError(f"could not place {n_lesions} lesions of up to {hi} mm without overlap")
        kind: LesionKind = "ring" if diameter > 12.0 and rng.random() < 0.6 else "solid"
        spec = LesionSpec(
            lesion_id=first_id + k,
            center_mm=(float(center[0]), float(center[1]), float(center[2])),
            diameter_mm=diameter,
            kind=kind,
            location=location,
            rim_thickness_mm=float(rng.uniform(1.5, 4.0)),
            enhancement=float(rng.uniform(1.3, 1.8)),
            shape_seed=int(rng.integers(2**31 - 1)),
        )
        placed.append(spec)
        out.append(spec)
    return out


def _p2(t: np.ndarray) -> np.ndarray:
    return 0.5 * (3.0 * t * t - 1.0)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


def _render_lesion(
    spec: LesionSpec, anat: TemplateAnatomy, image: np.ndarray, labels: np.ndarray, brain_limit: np.ndarray
) -> None:
    """Paint one lesion (and its oedema) into ``image`` and ``labels`` (template arrays, in place)."""
    if spec.diameter_mm <= 0:
        return
    srng = np.random.default_rng(spec.shape_seed)
    radius = spec.diameter_mm / 2.0
    rot = _random_rotation(srng)
    axes = srng.uniform(0.85, 1.15, size=3)
    axes /= np.cbrt(np.prod(axes))  # same volume as the nominal sphere
    lobes = srng.normal(size=(3, 3))
    lobes /= np.linalg.norm(lobes, axis=1, keepdims=True)
    lobe_amp = srng.uniform(-0.1, 0.1, size=3)
    tex_k = srng.normal(size=(3, 3)) * 0.35
    tex_phase = srng.uniform(0, 2 * np.pi, size=3)
    core_scale = srng.uniform(0.9, 1.1, size=3)
    oedema_extent = srng.uniform(0.3, 1.2) if spec.diameter_mm > 6 else 0.0
    oedema_depth = srng.uniform(0.1, 0.25)

    ci = np.asarray(anat.reference.TransformPhysicalPointToContinuousIndex(spec.center_mm))[::-1]  # z, y, x
    reach = radius * 1.25 * (1.0 + oedema_extent) + 2.0
    lo = np.maximum(np.floor(ci - reach).astype(int), 0)
    hi = np.minimum(np.ceil(ci + reach).astype(int) + 1, np.asarray(image.shape))
    if np.any(hi <= lo):
        return
    zz, yy, xx = np.meshgrid(
        *[np.arange(a, b, dtype=np.float32) for a, b in zip(lo, hi, strict=True)], indexing="ij"
    )
    # Offsets in physical mm: the template is 1 mm isotropic, so index offsets are mm (signs do not matter
    # for a random shape).
    d = np.stack([xx - ci[2], yy - ci[1], zz - ci[0]], axis=-1) @ rot
    dist = np.linalg.norm(d / axes, axis=-1)
    unit = d / np.maximum(np.linalg.norm(d, axis=-1, keepdims=True), 1e-6)
    lobulation = 1.0 + sum(a * _p2(unit @ u) for a, u in zip(lobe_amp, lobes, strict=True))
    rho = dist / (radius * lobulation)  # < 1 inside the lesion
    edge_mm = 0.6
    occupancy = np.clip(0.5 - (rho - 1.0) * radius / (2 * edge_mm), 0.0, 1.0)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    limit = brain_limit[box]
    occupancy *= limit

    texture = 1.0 + 0.08 * sum(np.sin(d @ k + p) for k, p in zip(tex_k, tex_phase, strict=True)) / 3.0
    value = spec.enhancement * texture
    if spec.kind == "ring" and radius > spec.rim_thickness_mm + 1.0:
        core_rho = np.linalg.norm(d / (axes * core_scale), axis=-1) / (
            (radius - spec.rim_thickness_mm) * lobulation
        )
        core = np.clip(0.5 - (core_rho - 1.0) * (radius - spec.rim_thickness_mm) / (2 * edge_mm), 0.0, 1.0)
        necrosis = srng.uniform(0.25, 0.45)
        value = value * (1.0 - core) + necrosis * core

    region = image[box]
    if oedema_extent > 0:
        # Vasogenic oedema: darker white matter around the lesion, fading with distance.
        outer = 1.0 + oedema_extent
        fall = np.clip((outer - rho) / oedema_extent, 0.0, 1.0)
        region *= 1.0 - oedema_depth * fall * anat.wm[box] * limit
    region[...] = region * (1.0 - occupancy) + value * occupancy
    inside = (rho <= 1.0) & (limit > 0.5)
    lab = labels[box]
    lab[inside] = spec.lesion_id


# --------------------------------------------------------------------------------------------------
# Distractors, skull, bias, noise
# --------------------------------------------------------------------------------------------------


def _stamp_tube(image: np.ndarray, points_zyx: np.ndarray, radius_mm: float, value: float) -> None:
    """Blend a bright tube through ``points_zyx`` (template voxel coordinates) into ``image``."""
    r = int(math.ceil(radius_mm + 1.5))
    offs = np.arange(-r, r + 1, dtype=np.float32)
    oz, oy, ox = np.meshgrid(offs, offs, offs, indexing="ij")
    for p in points_zyx:
        c = np.round(p).astype(int)
        lo = c - r
        hi = c + r + 1
        if np.any(lo < 0) or np.any(hi > np.asarray(image.shape)):
            continue
        frac = p - c
        dist = np.sqrt((oz - frac[0]) ** 2 + (oy - frac[1]) ** 2 + (ox - frac[2]) ** 2)
        occ = np.clip(radius_mm + 0.5 - dist, 0.0, 1.0)
        region = image[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        np.maximum(region, region * (1 - occ) + value * occ, out=region)


def surface_walk(
    rng: np.random.Generator,
    anat: TemplateAnatomy,
    start: np.ndarray,
    steps: tuple[int, int],
    *,
    max_depth_mm: float,
    max_outside_mm: float,
) -> list[np.ndarray]:
    """A cortical vein's path: a random walk of 1 mm steps from ``start`` (template voxel) along the brain
    surface, turning back where it would go deeper than ``max_depth_mm`` or further out than
    ``max_outside_mm``. The number of steps is drawn from ``steps`` (low, high), after the first direction."""
    shape = np.asarray(anat.brain.shape)
    p = start
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    pts = []
    for _step in range(int(rng.integers(*steps))):
        direction += rng.normal(scale=0.25, size=3)
        direction /= np.linalg.norm(direction)
        q = p + direction
        qi = tuple(np.clip(np.round(q).astype(int), 0, shape - 1))
        if anat.depth_mm[qi] > max_depth_mm or anat.outside_mm[qi] > max_outside_mm:
            direction = -direction + rng.normal(scale=0.5, size=3)
            direction /= np.linalg.norm(direction)
            continue
        p = q
        pts.append(p.copy())
    return pts


def _add_distractors(rng: np.random.Generator, anat: TemplateAnatomy, image: np.ndarray) -> None:
    """Enhancing structures that are not metastases: veins, sinus, dura, falx, choroid plexus."""
    shape = np.asarray(image.shape)
    # Cortical veins: random walks along the brain surface (0-4 mm outside to 3 mm inside).
    surface = np.argwhere((anat.outside_mm > 0) & (anat.outside_mm < 3) & (anat.depth_mm == 0))
    for _ in range(int(rng.integers(6, 14))):
        start = surface[rng.integers(len(surface))].astype(np.float64)
        pts = surface_walk(rng, anat, start, (30, 120), max_depth_mm=3.0, max_outside_mm=4.0)
        if pts:
            _stamp_tube(
                image, np.asarray(pts[::1]), float(rng.uniform(0.5, 1.3)), float(rng.uniform(1.2, 1.8))
            )
    # Deep veins along the ventricles (internal cerebral veins, thalamostriate veins).
    vent = np.argwhere(anat.ventricles)
    if len(vent):
        for _ in range(int(rng.integers(1, 4))):
            start = vent[rng.integers(len(vent))].astype(np.float64)
            direction = rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            pts = [start + t * direction for t in np.arange(0, rng.uniform(10, 30), 0.8)]
            _stamp_tube(image, np.asarray(pts), float(rng.uniform(0.6, 1.2)), float(rng.uniform(1.2, 1.6)))
        # Choroid plexus: small bright tufts inside the ventricles.
        for _ in range(int(rng.integers(1, 4))):
            c = vent[rng.integers(len(vent))].astype(np.float64)
            _stamp_tube(
                image, c[None, :] + rng.normal(scale=1.5, size=(6, 3)), float(rng.uniform(1.0, 2.0)), 1.35
            )
    # Dura and falx: a thin shell just outside the brain, patchy; the midline sheet above the ventricles.
    patch_field = ndi.zoom(rng.normal(size=tuple(int(s) for s in np.ceil(shape / 16) + 1)), 16, order=1)[
        : shape[0], : shape[1], : shape[2]
    ]
    shell = (anat.outside_mm > 0.5) & (anat.outside_mm <= 2.0) & (patch_field > rng.uniform(0.3, 0.9))
    image[shell] = np.maximum(image[shell], float(rng.uniform(1.1, 1.5)))
    xi = np.arange(shape[2])
    mid_x = anat.reference.TransformPhysicalPointToContinuousIndex((0.0, 0.0, 0.0))[0]
    midline = np.abs(xi - mid_x) < 0.9
    falx = anat.csf & midline[None, None, :] & ~anat.ventricles
    falx &= np.arange(shape[0])[:, None, None] > float(
        anat.reference.TransformPhysicalPointToContinuousIndex((0, 0, 5.0))[2]
    )
    image[falx] = np.maximum(image[falx], float(rng.uniform(1.1, 1.4)))


def _add_skull(rng: np.random.Generator, anat: TemplateAnatomy, image: np.ndarray) -> None:
    """CSF rim, dark cortical bone with some marrow, and bright scalp fat, as rings around the brain."""
    out = anat.outside_mm
    csf_mm = rng.uniform(1.5, 3.0)
    bone_mm = rng.uniform(5.0, 8.0)
    scalp_mm = rng.uniform(4.0, 7.0)
    rim = (out > 0) & (out <= csf_mm)
    bone = (out > csf_mm) & (out <= csf_mm + bone_mm)
    scalp = (out > csf_mm + bone_mm) & (out <= csf_mm + bone_mm + scalp_mm)
    image[rim] = np.maximum(image[rim], 0.25)
    marrow = bone & (np.abs(out - csf_mm - bone_mm / 2) < bone_mm / 5)
    image[bone] = 0.08
    image[marrow] = 0.6
    image[scalp] = rng.uniform(1.0, 1.3)


def _bias_field(shape: tuple[int, int, int], rng: np.random.Generator, strength: float) -> np.ndarray:
    """Smooth multiplicative field exp(p(x, y, z)) with a random quadratic p of amplitude ~``strength``."""
    axes = [np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape]
    z, y, x = axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]
    c = rng.normal(scale=strength / 2.0, size=9).astype(np.float32)
    log_field = c[0] * x + c[1] * y + c[2] * z + c[3] * x * x + c[4] * y * y + c[5] * z * z
    log_field = log_field + c[6] * x * y + c[7] * y * z + c[8] * x * z
    return np.exp(log_field).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Phantoms
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Phantom:
    """A synthetic post-gadolinium T1 volume and its ground truth, all on the acquisition grid.

    Attributes:
        image: The MRI (int16, scanner-like units).
        mask: Binary lesion mask (uint8, 1 = lesion: enhancing rim, solid part and necrotic core).
        labels: Lesion instance map (uint16, value = lesion id, 0 = background).
        lesions: The lesions present in this volume (diameter 0 lesions are omitted).
        geometry: The acquisition grid.
        pose: The head pose.
        seed: The seed it was generated from.
        distractors: Class map of the non-lesion structures (realistic style only, see
            :data:`segmentation.phantom_realism.DISTRACTOR_CLASSES`; ``None`` for the basic style).
        realism: The :class:`segmentation.phantom_realism.Realism` it was rendered with (``None``: basic).
    """

    image: sitk.Image
    mask: sitk.Image
    labels: sitk.Image
    lesions: tuple[PhantomLesion, ...]
    geometry: AcquisitionGeometry
    pose: HeadPose
    seed: int
    distractors: sitk.Image | None = None
    realism: Realism | None = None


def _resolve_geometry(geometry: AcquisitionGeometry | str) -> AcquisitionGeometry:
    if isinstance(geometry, AcquisitionGeometry):
        return geometry
    try:
        return GEOMETRIES[geometry]
    except KeyError:
        raise PhantomError(f"unknown geometry {geometry!r}; use one of {sorted(GEOMETRIES)}") from None


def _check_render_arguments(
    lesions: Sequence[LesionSpec], noise_fraction: float, bias_field_strength: float
) -> list[int]:
    """Refuse out-of-range noise or bias and duplicate lesion ids; return the ids."""
    if not 0.0 <= noise_fraction <= 0.5:
        raise PhantomError(f"noise_fraction must be within 0..0.5, got {noise_fraction}")
    if not 0.0 <= bias_field_strength <= 1.0:
        raise PhantomError(f"bias_field_strength must be within 0..1, got {bias_field_strength}")
    ids = [s.lesion_id for s in lesions]
    if len(set(ids)) != len(ids):
        raise PhantomError(f"duplicate lesion ids: {ids}")
    return ids


def render_phantom(
    lesions: Sequence[LesionSpec],
    *,
    seed: int,
    geometry: AcquisitionGeometry | str = "axial_1mm",
    pose: HeadPose | None = None,
    skull: bool = True,
    distractors: bool = True,
    bias_field_strength: float = 0.25,
    noise_fraction: float = 0.03,
    scale: float | None = None,
    realism: Realism | None = None,
) -> Phantom:
    """Render given lesions into the template and acquire the result on a scanner grid.

    Args:
        lesions: The lesions (template space). Lesions with ``diameter_mm == 0`` are absent.
        seed: Seed of everything random apart from the lesion shapes (distractors, bias, noise).
        geometry: A :class:`AcquisitionGeometry` or the name of one in :data:`GEOMETRIES`.
        pose: Head pose in the scanner (default: centred, no rotation).
        skull: Add CSF rim, skull and scalp around the (skull-stripped) template brain.
        distractors: Add enhancing vessels, dura, falx and choroid plexus.
        bias_field_strength: Amplitude of the log bias field (0 = none; 0.25 ~ +-25 %).
        noise_fraction: Rician noise sigma relative to white matter (0 = none).
        scale: White-matter intensity in output units (default: random 400-1000).
        realism: Render in the realistic style (:mod:`segmentation.phantom_realism`) with these scanner,
            artefact and anatomy settings; ``None`` (default) renders the basic style, unchanged.

    Returns:
        The phantom.

    Raises:
        PhantomError: On an unknown geometry, duplicate lesion ids or out-of-range noise/bias settings.
    """
    if realism is not None:
        from segmentation import phantom_realism

        return phantom_realism.render_realistic(
            lesions, realism=realism, seed=seed, geometry=geometry, pose=pose, skull=skull,
            distractors=distractors, bias_field_strength=bias_field_strength,
            noise_fraction=noise_fraction, scale=scale,
        )  # fmt: skip
    geo = _resolve_geometry(geometry)
    ids = _check_render_arguments(lesions, noise_fraction, bias_field_strength)
    rng = np.random.default_rng(seed)
    pose = pose or HeadPose()
    anat = load_template()

    image = anat.t1.copy()
    labels = np.zeros(image.shape, dtype=np.uint16)
    if distractors:
        _add_distractors(rng, anat, image)
    if skull:
        _add_skull(rng, anat, image)
    # Lesions stay in the brain (and its 1 mm rim): metastases sit in the parenchyma.
    brain_limit = (anat.depth_mm > 0) | (anat.outside_mm <= 1.0)
    brain_limit_f = brain_limit.astype(np.float32)
    for spec in lesions:
        _render_lesion(spec, anat, image, labels, brain_limit_f)

    template_img = sitk.GetImageFromArray(image)
    template_img.CopyInformation(anat.reference)
    label_img = sitk.GetImageFromArray(labels)
    label_img.CopyInformation(anat.reference)
    center = anat.head_center_mm
    ref = geo.reference_image(center)
    tx = pose.transform(center)
    acquired = sitk.GetArrayFromImage(
        sitk.Resample(template_img, ref, tx, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    )
    acquired_labels = sitk.Resample(label_img, ref, tx, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt16)

    # Texture (scanner/tissue inhomogeneity at the 1-3 mm scale) and bias field, then Rician noise.
    texture = ndi.gaussian_filter(rng.normal(size=acquired.shape).astype(np.float32), 1.2)
    texture *= 0.03 / max(float(texture.std()), 1e-6)
    acquired *= 1.0 + texture * (acquired > 0.05)
    if bias_field_strength > 0:
        acquired *= _bias_field(acquired.shape, rng, bias_field_strength)
    if noise_fraction > 0:
        n1 = rng.normal(scale=noise_fraction, size=acquired.shape).astype(np.float32)
        n2 = rng.normal(scale=noise_fraction, size=acquired.shape).astype(np.float32)
        acquired = np.sqrt((acquired + n1) ** 2 + n2**2)
    wm_units = float(scale) if scale is not None else float(rng.uniform(400.0, 1000.0))
    out = sitk.GetImageFromArray(np.clip(np.round(acquired * wm_units), 0, 32767).astype(np.int16))
    out.CopyInformation(ref)
    acquired_labels.CopyInformation(ref)
    mask = sitk.Cast(acquired_labels > 0, sitk.sitkUInt8)

    lab_arr = sitk.GetArrayViewFromImage(acquired_labels)
    counts = np.bincount(lab_arr.ravel(), minlength=max(ids, default=0) + 1)
    voxel_mm3 = float(np.prod(geo.spacing_mm))
    inverse = tx.GetInverse()
    rendered = tuple(
        PhantomLesion(
            lesion_id=s.lesion_id,
            center_mm=tuple(float(v) for v in inverse.TransformPoint(s.center_mm)),  # type: ignore[arg-type]
            diameter_mm=s.diameter_mm,
            kind=s.kind,
            location=s.location,
            volume_mm3=float(counts[s.lesion_id]) * voxel_mm3,
        )
        for s in lesions
        if s.diameter_mm > 0
    )
    return Phantom(
        image=out, mask=mask, labels=acquired_labels, lesions=rendered, geometry=geo, pose=pose, seed=seed
    )


def random_pose(
    rng: np.random.Generator, max_rotation_deg: float = 3.0, max_shift_mm: float = 4.0
) -> HeadPose:
    """A slight random head repositioning (uniform within the given limits)."""
    return HeadPose(
        rotation_deg=tuple(float(v) for v in rng.uniform(-max_rotation_deg, max_rotation_deg, 3)),  # type: ignore[arg-type]
        translation_mm=tuple(float(v) for v in rng.uniform(-max_shift_mm, max_shift_mm, 3)),  # type: ignore[arg-type]
    )


def make_phantom(
    seed: int,
    *,
    n_lesions: int | None = None,
    diameter_range_mm: tuple[float, float] | None = None,
    geometry: AcquisitionGeometry | str | None = None,
    pose: HeadPose | None = None,
    skull: bool = True,
    distractors: bool = True,
    bias_field_strength: float = 0.25,
    noise_fraction: float | None = None,
    style: PhantomStyle = "basic",
    realism: Realism | None = None,
) -> Phantom:
    """One synthetic patient: random lesions (1-6 unless ``n_lesions``) rendered by :func:`render_phantom`.

    The same seed always gives the same volume. ``style="basic"`` (default) is the generator the demo
    model was trained on: diameters 3-40 mm unless ``diameter_range_mm``, ``axial_1mm`` unless
    ``geometry``, noise 0.03 unless ``noise_fraction``. ``style="realistic"`` draws from ``seed`` whatever
    is not given: scanner, artefacts and anatomy (unless ``realism``), protocol, noise and 2-40 mm lesions
    (see :func:`segmentation.phantom_realism.make_realistic_phantom`).

    Raises:
        PhantomError: On an unknown style, or what :func:`render_phantom` raises.
    """
    if style == "realistic":
        from segmentation import phantom_realism

        return phantom_realism.make_realistic_phantom(
            seed, n_lesions=n_lesions, diameter_range_mm=diameter_range_mm, geometry=geometry, pose=pose,
            skull=skull, distractors=distractors, bias_field_strength=bias_field_strength,
            noise_fraction=noise_fraction, realism=realism,
        )  # fmt: skip
    if style != "basic":
        raise PhantomError(f"style must be 'basic' or 'realistic', got {style!r}")
    if realism is not None:
        raise PhantomError("realism settings need style='realistic'")
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 7)) if n_lesions is None else n_lesions
    specs = sample_lesion_specs(rng, n, diameter_range_mm or DEFAULT_DIAMETER_RANGE_MM)
    return render_phantom(
        specs,
        seed=int(rng.integers(2**31 - 1)),
        geometry=geometry if geometry is not None else "axial_1mm",
        pose=pose if pose is not None else random_pose(rng),
        skull=skull,
        distractors=distractors,
        bias_field_strength=bias_field_strength,
        noise_fraction=0.03 if noise_fraction is None else noise_fraction,
    )


# --------------------------------------------------------------------------------------------------
# Longitudinal series
# --------------------------------------------------------------------------------------------------

Trajectory = Literal["grow", "shrink", "stable", "disappear", "appear"]


@dataclass(frozen=True)
class LesionTrack:
    """A lesion followed over the visits of one patient.

    Attributes:
        lesion_id: Label value in every visit's instance map.
        trajectory: ``grow``, ``shrink``, ``stable``, ``disappear`` or ``appear``.
        diameters_mm: Nominal diameter at each visit (0 = absent at that visit).
    """

    lesion_id: int
    trajectory: Trajectory
    diameters_mm: tuple[float, ...]


@dataclass(frozen=True)
class LongitudinalSeries:
    """Visits of one synthetic patient.

    Attributes:
        visits: One phantom per visit, in time order (visit 0 = baseline).
        tracks: Each lesion's trajectory and per-visit diameter.
        seed: The seed the series was generated from.
    """

    visits: tuple[Phantom, ...]
    tracks: tuple[LesionTrack, ...] = field(default_factory=tuple)
    seed: int = 0


def make_longitudinal_series(
    seed: int,
    *,
    n_visits: int = 4,
    n_baseline_lesions: int = 4,
    geometry: AcquisitionGeometry | str = "axial_1mm",
    diameter_range_mm: tuple[float, float] = (6.0, 30.0),
    trajectories: Sequence[Trajectory] | None = None,
    skull: bool = True,
    max_rotation_deg: float = 3.0,
    max_shift_mm: float = 4.0,
) -> LongitudinalSeries:
    """Several visits of one patient: lesions grow, shrink, stay, disappear and appear.

    Each baseline lesion follows one trajectory (``trajectories`` in order, else cycling through grow,
    shrink, disappear, stable); one extra lesion appears at visit 1 when there are at least two visits.
    Diameters change geometrically per visit: grow x1.25, shrink x0.7, disappear x0.6 then absent from
    the last visit on (or from visit 2 when there are more than three visits). The head is repositioned
    slightly at every visit (rotation within +-``max_rotation_deg``, shift within +-``max_shift_mm``).
    Lesion ids are stable across visits.

    Raises:
        PhantomError: On fewer than one visit or more trajectories than baseline lesions.
    """
    if n_visits < 1:
        raise PhantomError(f"n_visits must be >= 1, got {n_visits}")
    rng = np.random.default_rng(seed)
    cycle: list[Trajectory] = ["grow", "shrink", "disappear", "stable"]
    chosen = (
        list(trajectories) if trajectories is not None else [cycle[i % 4] for i in range(n_baseline_lesions)]
    )
    if len(chosen) != n_baseline_lesions:
        raise PhantomError(f"{len(chosen)} trajectories for {n_baseline_lesions} baseline lesions")
    specs = sample_lesion_specs(rng, n_baseline_lesions, diameter_range_mm)
    appearing = (
        sample_lesion_specs(rng, 1, (5.0, 12.0), first_id=n_baseline_lesions + 1, avoid=specs)
        if n_visits > 1
        else []
    )
    factors = {"grow": 1.25, "shrink": 0.7, "stable": 1.0, "disappear": 0.6}
    gone_from = min(n_visits - 1, 2) if n_visits > 1 else None
    tracks: list[LesionTrack] = []
    for spec, traj in zip(specs, chosen, strict=True):
        if traj == "appear":
            raise PhantomError("'appear' is reserved for the lesion that appears at visit 1")
        diam = []
        for v in range(n_visits):
            d = spec.diameter_mm * factors[traj] ** v
            if traj == "disappear" and gone_from is not None and v >= gone_from:
                d = 0.0
            diam.append(float(min(d, 60.0)))
        tracks.append(LesionTrack(spec.lesion_id, traj, tuple(diam)))
    for spec in appearing:
        diam = [0.0] + [spec.diameter_mm * 1.15 ** (v - 1) for v in range(1, n_visits)]
        tracks.append(LesionTrack(spec.lesion_id, "appear", tuple(float(d) for d in diam)))
    all_specs = specs + appearing
    visits = []
    for v in range(n_visits):
        visit_specs = [
            replace(s, diameter_mm=t.diameters_mm[v]) for s, t in zip(all_specs, tracks, strict=True)
        ]
        visits.append(
            render_phantom(
                visit_specs,
                seed=int(rng.integers(2**31 - 1)),
                geometry=geometry,
                pose=random_pose(rng, max_rotation_deg, max_shift_mm),
                skull=skull,
            )
        )
    return LongitudinalSeries(visits=tuple(visits), tracks=tuple(tracks), seed=seed)


def write_phantom_nifti(phantom: Phantom, directory: str | Path, stem: str) -> tuple[Path, Path]:
    """Write ``<stem>_t1c.nii.gz`` and ``<stem>_mask.nii.gz`` into ``directory`` (created if needed)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    image_path = out / f"{stem}_t1c.nii.gz"
    mask_path = out / f"{stem}_mask.nii.gz"
    sitk.WriteImage(phantom.image, str(image_path), useCompression=True)
    sitk.WriteImage(phantom.mask, str(mask_path), useCompression=True)
    return image_path, mask_path
