"""The "realistic" phantom style: post-contrast T1 closer to what a scanner shows (issue 21, item 1).

:func:`segmentation.phantoms.make_phantom` and :func:`~segmentation.phantoms.render_phantom` keep
rendering exactly what they always did; this module is used only when asked for, with
``make_phantom(seed, style="realistic")`` or ``render_phantom(..., realism=Realism(...))``. It adds:

* **Lesions** (:func:`sample_realistic_lesion_specs`, :func:`render_realistic_lesion`): enhancing rims
  whose thickness varies with direction (``rim_unevenness``) around a necrotic (``ring``) or fluid
  (``fluid_core``) centre, heterogeneous solid lesions, T1-hypointense vasogenic oedema that follows the white
  matter, 2-5 mm lesions, and locations at the grey-white junction, the cortex, the cerebellum and the
  brainstem besides the old ones. Regions come from the MNI coordinates of the template and its tissue
  maps (:func:`location_regions`). The lesion mask holds the whole lesion (rim and centre: RANO-BM
  measures to the outer edge); oedema is never in it.
* **Distractors** (:func:`add_anatomical_distractors`) with a class label each (:data:`DISTRACTOR_CLASSES`,
  returned as :attr:`~segmentation.phantoms.Phantom.distractors`): superior sagittal, transverse and
  sigmoid sinuses, falx, tentorium, cortical veins, choroid plexus, pituitary gland and stalk and, when
  the skull is drawn, scalp and orbital fat and nasal mucosa. Lesions are painted over them and take
  their voxels out of the distractor map, so no distractor voxel is ever in a lesion mask.
* **Scanner variety** (:class:`Realism`, :func:`sample_realism`, :func:`sample_geometry`): 1.5 T vs 3 T
  (grey-white contrast, enhancement ratio, noise), 3D gradient echo (flowing blood bright) vs spin echo
  (sinuses dark flow voids, cortical veins barely enhancing), 0.5-1.2 mm voxels, motion ghosting along the
  phase-encode axis (every ``ghost_period``-th k-space line acquired with the head shifted, which makes
  copies at multiples of FOV / period) and wrap-around (the head outside a tight phase-encode FOV folds
  onto the opposite side). **The truth mask is neither ghosted nor wrapped**: it marks where the lesion is,
  not where its artefacts appear, which is what a reader outlines and what a model must learn.
* **Anatomical variety** (:func:`elastic_warp`, :func:`modified_anatomy`): a seeded, smooth B-spline warp
  with bounded displacement (positive Jacobian), cortical atrophy (widened sulci) and enlarged ventricles.
  The warp is composed into the one resampling that carries image, lesion labels and distractor labels to
  the scanner grid, so all move together; the lesion table reports each lesion's warped centre.

Intensities are relative to normal white matter (1.0) before the final scaling, as in
:mod:`segmentation.phantoms`. Nothing here is for clinical use.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from segmentation import phantoms as P

FieldStrength = Literal["1.5T", "3T"]
PulseSequence = Literal["gre", "se"]
PhaseAxis = Literal["i", "j"]

#: Class values of :attr:`Phantom.distractors` (0 = none).
DISTRACTOR_CLASSES: dict[str, int] = {
    "superior_sagittal_sinus": 1,
    "transverse_sinus": 2,
    "sigmoid_sinus": 3,
    "falx": 4,
    "tentorium": 5,
    "cortical_vein": 6,
    "choroid_plexus": 7,
    "pituitary": 8,
    "pituitary_stalk": 9,
    "nasal_mucosa": 10,
    "orbital_fat": 11,
    "scalp_fat": 12,
}
#: Distractors made of flowing blood: bright on gradient echo, dark (flow void) on spin echo.
FLOWING_BLOOD = ("superior_sagittal_sinus", "transverse_sinus", "sigmoid_sinus", "cortical_vein")
#: Regions a realistic lesion can be placed in (see :func:`location_regions`).
REALISTIC_LOCATIONS: tuple[str, ...] = ("junction", "cortex", "deep", "ventricle", "cerebellum", "brainstem")
#: How often the sampler picks each region: metastases seed mostly at the grey-white junction of the
#: cerebral hemispheres (~80 %), then the cerebellum (~15 %) and the brainstem (a few %).
_LOCATION_P = (0.34, 0.12, 0.16, 0.1, 0.18, 0.1)


@dataclass(frozen=True)
class Realism:
    """Switches and settings of the realistic style (defaults: a clean 3 T gradient-echo scan).

    Attributes:
        field_strength: ``1.5T`` or ``3T`` (recorded; the numbers below carry its effect).
        sequence: ``gre`` (3D gradient echo: vessels bright) or ``se`` (spin echo: flow voids).
        grey_white_contrast: Factor on the template's departure from white matter (1 = template).
        enhancement_gain: Factor on every enhancing structure's excess over white matter.
        ghost_period: Every ``ghost_period``-th phase-encode line is acquired with the head moved (>= 2).
        ghost_shift_mm: How far the head moved for those lines, along the phase-encode axis (0 = none).
        phase_axis: Phase-encode index axis, ``i`` or ``j`` of the acquisition grid.
        wrap_margin_mm: Head extent beyond each side of the FOV that is folded back in (0 = no wrap).
        warp_max_mm: Largest displacement of the elastic warp (0 = no warp).
        warp_spacing_mm: B-spline control point spacing of the warp (mm).
        warp_seed: Seed of the warp.
        atrophy_mm: Cortical atrophy: brain within this distance of the CSF turns to CSF (0 = none).
        ventricle_dilation_mm: Lateral/third ventricles enlarged by this distance (0 = none).
    """

    field_strength: FieldStrength = "3T"
    sequence: PulseSequence = "gre"
    grey_white_contrast: float = 1.0
    enhancement_gain: float = 1.0
    ghost_period: int = 4
    ghost_shift_mm: float = 0.0
    phase_axis: PhaseAxis = "j"
    wrap_margin_mm: float = 0.0
    warp_max_mm: float = 0.0
    warp_spacing_mm: float = 40.0
    warp_seed: int = 0
    atrophy_mm: float = 0.0
    ventricle_dilation_mm: float = 0.0

    def __post_init__(self) -> None:
        if self.field_strength not in ("1.5T", "3T"):
            raise P.PhantomError(f"field_strength must be '1.5T' or '3T', got {self.field_strength!r}")
        if self.sequence not in ("gre", "se"):
            raise P.PhantomError(f"sequence must be 'gre' or 'se', got {self.sequence!r}")
        if self.phase_axis not in ("i", "j"):
            raise P.PhantomError(f"phase_axis must be 'i' or 'j', got {self.phase_axis!r}")
        if not 0.3 <= self.grey_white_contrast <= 2.0 or not 0.3 <= self.enhancement_gain <= 2.0:
            raise P.PhantomError("grey_white_contrast and enhancement_gain must be within 0.3..2")
        if self.ghost_period < 2 or not 0.0 <= self.ghost_shift_mm <= 20.0:
            raise P.PhantomError("ghost_period must be >= 2 and ghost_shift_mm within 0..20 mm")
        if not 0.0 <= self.wrap_margin_mm <= 80.0:
            raise P.PhantomError(f"wrap_margin_mm must be within 0..80 mm, got {self.wrap_margin_mm}")
        # Bounded displacement against the control spacing keeps the warp's Jacobian positive.
        if not 0.0 <= self.warp_max_mm <= 0.15 * self.warp_spacing_mm:
            raise P.PhantomError("warp_max_mm must be within 0..0.15 x warp_spacing_mm (a folding-free warp)")
        if not 0.0 <= self.atrophy_mm <= 4.0 or not 0.0 <= self.ventricle_dilation_mm <= 8.0:
            raise P.PhantomError("atrophy_mm must be within 0..4 mm and ventricle_dilation_mm within 0..8 mm")


#: The usual phase-encode index axis per slice plane: anterior-posterior for axial (j) and sagittal (i)
#: slices, left-right for coronal ones (i); see :data:`segmentation.phantoms._PLANE_DIRECTIONS`.
USUAL_PHASE_AXIS: dict[str, PhaseAxis] = {"axial": "j", "sagittal": "i", "coronal": "i"}


def sample_realism(rng: np.random.Generator, plane: str = "axial") -> Realism:
    """Draw a scanner, artefacts and an anatomy variant (what training should see across patients).

    The phase-encode axis is the plane's usual one (:data:`USUAL_PHASE_AXIS`) 80 % of the time.
    """
    usual = USUAL_PHASE_AXIS.get(plane, "j")
    three_t = bool(rng.random() < 0.6)
    return Realism(
        field_strength="3T" if three_t else "1.5T",
        sequence="gre" if rng.random() < 0.7 else "se",
        # 3 T MPRAGE-like scans show more grey-white contrast and stronger relative enhancement.
        grey_white_contrast=float(rng.uniform(1.0, 1.3) if three_t else rng.uniform(0.75, 1.0)),
        enhancement_gain=float(rng.uniform(1.0, 1.25) if three_t else rng.uniform(0.8, 1.0)),
        ghost_period=int(rng.integers(2, 7)),
        ghost_shift_mm=float(rng.uniform(0.5, 4.0)) if rng.random() < 0.3 else 0.0,
        phase_axis=usual if rng.random() < 0.8 else ("i" if usual == "j" else "j"),
        wrap_margin_mm=float(rng.uniform(10.0, 40.0)) if rng.random() < 0.2 else 0.0,
        warp_max_mm=float(rng.uniform(2.0, 6.0)) if rng.random() < 0.8 else 0.0,
        warp_spacing_mm=40.0,
        warp_seed=int(rng.integers(2**31 - 1)),
        atrophy_mm=float(rng.uniform(0.5, 2.0)) if rng.random() < 0.4 else 0.0,
        ventricle_dilation_mm=float(rng.uniform(1.0, 5.0)) if rng.random() < 0.3 else 0.0,
    )


def sample_noise_fraction(rng: np.random.Generator, realism: Realism) -> float:
    """Noise sigma relative to white matter for the field strength (3 T has the higher SNR)."""
    return float(rng.uniform(0.012, 0.03) if realism.field_strength == "3T" else rng.uniform(0.025, 0.05))


def sample_geometry(
    rng: np.random.Generator, fov_mm: tuple[float, float] = (200.0, 250.0)
) -> P.AcquisitionGeometry:
    """A random protocol: plane, in-plane voxels 0.5-1.2 mm, slices 0.8-1.2 mm (never finer than in-plane).

    The in-plane FOV is drawn from ``fov_mm``; the low end is tighter than an adult head is long, which
    together with :attr:`Realism.wrap_margin_mm` gives wrap-around.
    """
    plane = str(rng.choice(["axial", "sagittal", "coronal"], p=[0.6, 0.2, 0.2]))
    inplane = float(rng.uniform(0.5, 1.2))
    slice_mm = float(rng.uniform(max(0.8, inplane), 1.2))
    fov = float(rng.uniform(*fov_mm))
    n = int(round(fov / inplane))
    n_slices = int(round(float(rng.uniform(150.0, 180.0)) / slice_mm))
    spacing = (round(inplane, 3), round(inplane, 3), round(slice_mm, 3))
    return P.AcquisitionGeometry(f"{plane}_{spacing[0]}x{spacing[2]}mm", plane, spacing, (n, n, n_slices))


# --------------------------------------------------------------------------------------------------
# Template coordinates and regions
# --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def mni_coordinates() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MNI (RAS, mm) x, y, z of every template voxel, as broadcastable (z, y, x) arrays."""
    anat = P.load_template()
    ref = anat.reference
    origin = np.asarray(ref.GetOrigin())
    direction = np.asarray(ref.GetDirection()).reshape(3, 3)
    spacing = np.asarray(ref.GetSpacing())
    nz, ny, nx = anat.t1.shape
    # The template is axis-aligned: LPS = origin + diag(direction) * spacing * index; RAS = (-L, -P, S).
    lps_x = origin[0] + direction[0, 0] * spacing[0] * np.arange(nx)
    lps_y = origin[1] + direction[1, 1] * spacing[1] * np.arange(ny)
    lps_z = origin[2] + direction[2, 2] * spacing[2] * np.arange(nz)
    return (-lps_x)[None, None, :], (-lps_y)[None, :, None], lps_z[:, None, None]


def mni_to_index(point_ras: Sequence[float]) -> np.ndarray:
    """Continuous template index (z, y, x) of an MNI (RAS, mm) point."""
    ref = P.load_template().reference
    i, j, k = ref.TransformPhysicalPointToContinuousIndex((-point_ras[0], -point_ras[1], float(point_ras[2])))
    return np.asarray([k, j, i], dtype=np.float64)


def index_to_mni(idx_zyx: Sequence[float]) -> np.ndarray:
    """MNI (RAS, mm) point of a continuous template index (z, y, x)."""
    ref = P.load_template().reference
    x, y, z = ref.TransformContinuousIndexToPhysicalPoint(
        [float(idx_zyx[2]), float(idx_zyx[1]), float(idx_zyx[0])]
    )
    return np.asarray([-x, -y, z])


@functools.lru_cache(maxsize=1)
def location_regions() -> dict[str, np.ndarray]:
    """Where each lesion location family may have its centre (template boolean arrays).

    ``junction``: voxels with both grey and white matter (the grey-white junction); ``cortex``: grey matter
    at least 2 mm inside the brain; ``deep``: white matter; ``ventricle``: parenchyma within 6 mm of the
    ventricles; ``brainstem``: parenchyma within |x| < 12, -42 < y < -14, -50 < z < -8 (MNI mm);
    ``cerebellum``: parenchyma below z = -25 and behind y = -48 (below the tentorium, behind the fourth
    ventricle; the occipital and temporal lobes do not reach there in MNI space).
    """
    anat = P.load_template()
    x, y, z = mni_coordinates()
    tissue = anat.brain & ~anat.csf
    brainstem = tissue & (np.abs(x) < 12) & (y > -42) & (y < -14) & (z > -50) & (z < -8)
    cerebellum = tissue & (z < -25) & (y < -48) & (np.abs(x) < 55)
    periventricular = tissue & ndi.binary_dilation(anat.ventricles, iterations=6)
    supratentorial = ~(brainstem | cerebellum) & (z > -40)
    return {
        "junction": tissue & (anat.gm > 0.35) & (anat.wm > 0.15) & supratentorial,
        "cortex": tissue & (anat.gm > 0.6) & (anat.depth_mm > 2.0) & supratentorial,
        "deep": tissue & (anat.wm > 0.8) & supratentorial,
        "ventricle": periventricular & supratentorial,
        "brainstem": brainstem,
        "cerebellum": cerebellum,
    }


# --------------------------------------------------------------------------------------------------
# Lesions
# --------------------------------------------------------------------------------------------------


def sample_realistic_lesion_specs(
    rng: np.random.Generator,
    n_lesions: int,
    diameter_range_mm: tuple[float, float] = (2.0, 40.0),
    first_id: int = 1,
    avoid: Sequence[P.LesionSpec] = (),
    locations: Sequence[str] | None = None,
) -> list[P.LesionSpec]:
    """Draw lesions for the realistic style, without overlaps.

    A third of the lesions are 2-5 mm when the range allows (most metastases found on screening are
    small); the rest are log-uniform in the range. Locations follow :data:`REALISTIC_LOCATIONS` (mostly
    the grey-white junction, then cerebellum, deep white matter, cortex, ventricles, brainstem) unless
    ``locations`` fixes them in order. Lesions over 10 mm are ring-enhancing (necrotic, or cystic) with
    probability 0.65 (a third of them around a fluid cyst), with uneven rims; solid lesions are heterogeneous. Centres are jittered within their
    voxel so that small lesions do not all sit on the template lattice.

    Raises:
        PhantomError: On invalid counts, ranges or locations, or when the lesions do not fit.
    """
    lo, hi = diameter_range_mm
    if n_lesions < 0:
        raise P.PhantomError(f"n_lesions must be >= 0, got {n_lesions}")
    if not 1.0 <= lo <= hi <= 80.0:
        raise P.PhantomError(
            f"diameter_range_mm must satisfy 1 <= low <= high <= 80, got {diameter_range_mm}"
        )
    if locations is not None and (len(locations) != n_lesions or set(locations) - set(REALISTIC_LOCATIONS)):
        raise P.PhantomError(f"locations must be {n_lesions} of {REALISTIC_LOCATIONS}, got {locations}")
    anat = P.load_template()
    regions = location_regions()
    candidates = {k: np.argwhere(v) for k, v in regions.items()}
    placed: list[P.LesionSpec] = list(avoid)
    out: list[P.LesionSpec] = []
    small_hi = min(5.0, hi)
    for k in range(n_lesions):
        if lo < 5.0 and rng.random() < 1.0 / 3.0:
            diameter = float(rng.uniform(lo, small_hi))
        else:
            diameter = float(np.exp(rng.uniform(np.log(max(lo, min(5.0, hi))), np.log(hi))))
        location = (
            locations[k] if locations is not None else str(rng.choice(REALISTIC_LOCATIONS, p=_LOCATION_P))
        )
        radius = diameter / 2.0
        # Small lesions may sit right at the cortex; large ones keep most of their volume in the brain.
        min_depth = max(1.0, 0.6 * radius) if location in ("cortex", "junction") else max(1.5, 0.6 * radius)
        for _attempt in range(400):
            idx = candidates[location][rng.integers(len(candidates[location]))]
            if anat.depth_mm[tuple(idx)] < min_depth:
                continue
            jitter = rng.uniform(-0.5, 0.5, size=3)
            ci = idx[::-1].astype(np.float64) + jitter
            center = anat.reference.TransformContinuousIndexToPhysicalPoint([float(v) for v in ci])
            if all(
                np.linalg.norm(np.subtract(center, p.center_mm)) > radius + p.diameter_mm / 2.0 + 4.0
                for p in placed
            ):
                break
        else:
            raise P.PhantomError(f"could not place {n_lesions} lesions of up to {hi} mm without overlap")
        ring = diameter > 10.0 and rng.random() < 0.65
        fluid = ring and rng.random() < 0.35
        spec = P.LesionSpec(
            lesion_id=first_id + k,
            center_mm=(float(center[0]), float(center[1]), float(center[2])),
            diameter_mm=diameter,
            kind="ring" if ring else "solid",
            location=location,  # type: ignore[arg-type]
            rim_thickness_mm=float(rng.uniform(1.5, 4.0)),
            enhancement=float(rng.uniform(1.3, 1.9)),
            shape_seed=int(rng.integers(2**31 - 1)),
            rim_unevenness=float(rng.uniform(0.25, 0.6)),
            heterogeneity=float(rng.uniform(0.1, 0.3)),
            fluid_core=fluid,
        )
        placed.append(spec)
        out.append(spec)
    return out


def _direction_field(srng: np.random.Generator, unit: np.ndarray, n_terms: int = 4) -> np.ndarray:
    """A smooth random function of direction (about zero mean, unit spread) from P1 and P2 harmonics."""
    vecs = srng.normal(size=(n_terms, 3))
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    amps = srng.normal(size=(n_terms, 2))
    g = sum(a[0] * (unit @ v) + a[1] * P._p2(unit @ v) for a, v in zip(amps, vecs, strict=True))
    # Var of a P1 term over the sphere is 1/3 and of a P2 term 1/5: normalise to about unit spread.
    return np.asarray(g) / math.sqrt(n_terms * (1.0 / 3.0 + 1.0 / 5.0))


def rim_thickness_mm(spec: P.LesionSpec, unit: np.ndarray) -> np.ndarray:
    """Rim thickness (mm) of a ring lesion along unit directions (..., 3) of its local frame.

    ``rim_thickness_mm * exp(rim_unevenness * g(u))`` with ``g`` a smooth random function of direction
    (seeded by ``shape_seed``), clipped to 0.7 mm .. 70 % of the radius.
    """
    srng = np.random.default_rng([spec.shape_seed, 7])
    g = _direction_field(srng, unit)
    t = spec.rim_thickness_mm * np.exp(spec.rim_unevenness * g)
    return np.clip(t, 0.7, max(0.7, 0.7 * spec.diameter_mm / 2.0))


def _lesion_value(
    spec: P.LesionSpec,
    srng: np.random.Generator,
    gain: float,
    blotch: np.ndarray,
    unit: np.ndarray,
    r_mm: np.ndarray,
    outer_mm: np.ndarray,
    edge_mm: float,
) -> np.ndarray:
    """Intensity inside a lesion: blotchy enhancement, and a ring lesion's dark centre inside its rim."""
    value = 1.0 + gain * (spec.enhancement - 1.0) * (1.0 + spec.heterogeneity * blotch)
    if spec.kind == "ring":
        inner_mm = outer_mm - rim_thickness_mm(spec, unit)
        core = np.clip(0.5 + (inner_mm - r_mm) / (2 * edge_mm), 0.0, 1.0)
        if spec.fluid_core:
            core_value: float | np.ndarray = float(srng.uniform(0.2, 0.35))  # fluid: homogeneous, CSF-like
        else:
            core_value = float(srng.uniform(0.35, 0.6)) * (1.0 + 0.5 * spec.heterogeneity * blotch)
        value = value * (1.0 - core) + core_value * core
    return value


def render_realistic_lesion(
    spec: P.LesionSpec,
    anat: P.TemplateAnatomy,
    image: np.ndarray,
    labels: np.ndarray,
    brain_limit: np.ndarray,
    enhancement_gain: float = 1.0,
) -> None:
    """Paint one realistic lesion and its oedema into ``image`` and ``labels`` (template arrays, in place).

    The outer shape is the one of :mod:`segmentation.phantoms` (random ellipsoid with lobulation, gentler
    for small lesions). A ``ring`` lesion has a necrotic, mottled centre, or with ``fluid_core`` a dark fluid
    centre; both have a rim of direction-dependent thickness (:func:`rim_thickness_mm`). Solid lesions and
    rims are heterogeneous (``heterogeneity``). Oedema darkens white matter up to 0.5-2.5 radii beyond the
    edge and is not labelled. Label = every voxel within the outer edge.
    """
    if spec.diameter_mm <= 0:
        return
    srng = np.random.default_rng(spec.shape_seed)
    radius = spec.diameter_mm / 2.0
    rot = P._random_rotation(srng)
    small = spec.diameter_mm < 6.0
    axes = srng.uniform(0.92, 1.08, size=3) if small else srng.uniform(0.85, 1.15, size=3)
    axes /= np.cbrt(np.prod(axes))  # same volume as the nominal sphere
    lobes = srng.normal(size=(3, 3))
    lobes /= np.linalg.norm(lobes, axis=1, keepdims=True)
    lobe_amp = srng.uniform(-0.04, 0.04, size=3) if small else srng.uniform(-0.12, 0.12, size=3)
    tex_k = srng.normal(size=(6, 3)) * 0.9  # ~3-7 mm blotches
    tex_phase = srng.uniform(0, 2 * np.pi, size=6)
    oedema_extent = float(srng.uniform(0.5, 2.5)) if spec.diameter_mm >= 5 else float(srng.uniform(0.0, 0.8))
    oedema_depth = float(srng.uniform(0.2, 0.4))
    gain = float(enhancement_gain)

    ci = np.asarray(anat.reference.TransformPhysicalPointToContinuousIndex(spec.center_mm))[::-1]
    reach = radius * 1.25 * (1.0 + oedema_extent) + 2.0
    lo = np.maximum(np.floor(ci - reach).astype(int), 0)
    hi = np.minimum(np.ceil(ci + reach).astype(int) + 1, np.asarray(image.shape))
    if np.any(hi <= lo):
        return
    zz, yy, xx = np.meshgrid(
        *[np.arange(a, b, dtype=np.float32) for a, b in zip(lo, hi, strict=True)], indexing="ij"
    )
    d = np.stack([xx - ci[2], yy - ci[1], zz - ci[0]], axis=-1) @ rot
    r_mm = np.linalg.norm(d, axis=-1)
    unit = np.where(
        r_mm[..., None] > 1e-6, d / np.maximum(r_mm[..., None], 1e-6), np.asarray([1.0, 0.0, 0.0])
    )
    lobulation = 1.0 + sum(a * P._p2(unit @ u) for a, u in zip(lobe_amp, lobes, strict=True))
    outer_mm = radius * lobulation / np.linalg.norm(unit / axes, axis=-1)  # outer radius along each direction
    rho = r_mm / outer_mm  # < 1 inside the lesion
    edge_mm = 0.6
    occupancy = np.clip(0.5 + (outer_mm - r_mm) / (2 * edge_mm), 0.0, 1.0)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    limit = brain_limit[box]
    occupancy *= limit

    blotch = sum(np.sin(d @ k + p) for k, p in zip(tex_k, tex_phase, strict=True)) / math.sqrt(3.0)
    value = _lesion_value(spec, srng, gain, np.asarray(blotch), unit, r_mm, outer_mm, edge_mm)

    region = image[box]
    if oedema_extent > 0:
        # Vasogenic oedema spreads in white matter: darker, fading with distance, patchy.
        beyond = (r_mm - outer_mm) / (radius * oedema_extent)
        fall = np.clip(1.0 - beyond, 0.0, 1.0) * np.clip(1.0 + 0.3 * blotch, 0.0, 1.3)
        region *= 1.0 - oedema_depth * np.clip(fall, 0.0, 1.0) * anat.wm[box] * limit
    region[...] = region * (1.0 - occupancy) + value * occupancy
    inside = (rho <= 1.0) & (limit > 0.5)
    labels[box][inside] = spec.lesion_id


# --------------------------------------------------------------------------------------------------
# Anatomy: atrophy, ventricles, elastic warp
# --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _distances_mm() -> tuple[np.ndarray, np.ndarray]:
    """Distance of each voxel to CSF or the outside of the brain, and to the ventricles (mm)."""
    anat = P.load_template()
    to_csf = ndi.distance_transform_edt(~(anat.csf | ~anat.brain)).astype(np.float32)
    to_vent = ndi.distance_transform_edt(~anat.ventricles).astype(np.float32)
    for a in (to_csf, to_vent):
        a.setflags(write=False)
    return to_csf, to_vent


def modified_anatomy(
    anat: P.TemplateAnatomy, realism: Realism, rng: np.random.Generator
) -> P.TemplateAnatomy:
    """The template with atrophy, enlarged ventricles and the scanner's grey-white contrast applied.

    Atrophy turns parenchyma within ``atrophy_mm`` (varying smoothly over the brain, 0.5-1.5 x) of CSF into
    CSF: sulci widen. Ventricles grow by ``ventricle_dilation_mm`` into the surrounding tissue. Grey-white
    contrast scales every brain voxel's departure from white matter.
    """
    t1 = np.array(anat.t1, dtype=np.float32)
    gm = np.array(anat.gm)
    wm = np.array(anat.wm)
    csf = anat.csf.copy()
    ventricles = anat.ventricles.copy()
    csf_value = float(np.median(anat.t1[anat.csf & anat.ventricles]))
    if realism.atrophy_mm > 0 or realism.ventricle_dilation_mm > 0:
        to_csf, to_vent = _distances_mm()
        tissue = anat.brain & ~anat.csf
        turned = np.zeros_like(csf)
        if realism.atrophy_mm > 0:
            coarse = rng.uniform(0.5, 1.5, size=tuple(int(s) for s in np.ceil(np.asarray(t1.shape) / 24) + 1))
            local = ndi.zoom(coarse, 24, order=1)[: t1.shape[0], : t1.shape[1], : t1.shape[2]]
            turned |= tissue & (anat.gm > 0.3) & (to_csf <= realism.atrophy_mm * local)
        if realism.ventricle_dilation_mm > 0:
            grown = tissue & (to_vent <= realism.ventricle_dilation_mm)
            ventricles |= grown
            turned |= grown
        t1[turned] = csf_value
        gm[turned] = 0.0
        wm[turned] = 0.0
        csf |= turned
    if realism.grey_white_contrast != 1.0:
        t1[anat.brain] = np.maximum(1.0 + (t1[anat.brain] - 1.0) * realism.grey_white_contrast, 0.02)
    return replace(anat, t1=t1, gm=gm, wm=wm, csf=csf, ventricles=ventricles)


def elastic_warp(realism: Realism, reference: sitk.Image | None = None) -> sitk.BSplineTransform | None:
    """The seeded smooth warp of :class:`Realism` over the template (``None`` when ``warp_max_mm == 0``).

    A cubic B-spline (SimpleITK) with control points every ``warp_spacing_mm``; Gaussian coefficients are
    rescaled so that the largest displacement on a 4 mm grid is exactly ``warp_max_mm``. It maps points of
    the warped anatomy to the template (the direction :func:`SimpleITK.Resample` needs).
    """
    if realism.warp_max_mm <= 0:
        return None
    ref = reference if reference is not None else P.load_template().reference
    extent = np.asarray(ref.GetSize()) * np.asarray(ref.GetSpacing())
    mesh = [max(1, int(round(e / realism.warp_spacing_mm))) for e in extent]
    tx = sitk.BSplineTransformInitializer(ref, mesh, 3)
    rng = np.random.default_rng(realism.warp_seed)
    params = rng.normal(size=len(tx.GetParameters()))
    tx.SetParameters([float(v) for v in params])
    coarse = sitk.Image([int(math.ceil(e / 4.0)) for e in extent], sitk.sitkUInt8)
    coarse.SetSpacing((4.0, 4.0, 4.0))
    coarse.SetOrigin(ref.TransformContinuousIndexToPhysicalPoint((0.0, 0.0, 0.0)))
    coarse.SetDirection(ref.GetDirection())
    to_field = sitk.TransformToDisplacementFieldFilter()
    to_field.SetReferenceImage(coarse)
    to_field.SetOutputPixelType(sitk.sitkVectorFloat64)
    field = sitk.GetArrayFromImage(to_field.Execute(tx))
    biggest = float(np.linalg.norm(field, axis=-1).max())
    tx.SetParameters([float(v) for v in params * (realism.warp_max_mm / max(biggest, 1e-9))])
    return tx


def _coarse_field(transform: sitk.Transform, ref: sitk.Image, spacing_mm: float = 4.0) -> sitk.Transform:
    """``transform`` as a displacement field on a coarse grid covering ``ref`` (linearly interpolated)."""
    extent = (np.asarray(ref.GetSize()) - 1) * np.asarray(ref.GetSpacing())
    grid = sitk.Image([int(math.ceil(e / spacing_mm)) + 2 for e in extent], sitk.sitkUInt8)
    grid.SetSpacing((spacing_mm,) * 3)
    grid.SetDirection(ref.GetDirection())
    grid.SetOrigin(ref.TransformContinuousIndexToPhysicalPoint((-0.5, -0.5, -0.5)))
    to_field = sitk.TransformToDisplacementFieldFilter()
    to_field.SetReferenceImage(grid)
    to_field.SetOutputPixelType(sitk.sitkVectorFloat64)
    return sitk.DisplacementFieldTransform(to_field.Execute(transform))


def warped_point(point_mm: Sequence[float], warp: sitk.Transform) -> tuple[float, float, float]:
    """Where the template point ``point_mm`` lands after the warp: solves ``warp(x) = point`` (fixed point)."""
    target = np.asarray(point_mm, dtype=float)
    x = target.copy()
    for _ in range(30):
        x = target - (np.asarray(warp.TransformPoint([float(v) for v in x])) - x)
    return float(x[0]), float(x[1]), float(x[2])


# --------------------------------------------------------------------------------------------------
# Distractors
# --------------------------------------------------------------------------------------------------


Box = tuple[slice, slice, slice]


def _box_around(shape: Sequence[int], lo_zyx: np.ndarray, hi_zyx: np.ndarray) -> Box:
    """Slices of the voxels between two corners (clipped to the array)."""
    lo = np.clip(np.floor(lo_zyx).astype(int), 0, np.asarray(shape))
    hi = np.clip(np.ceil(hi_zyx).astype(int) + 1, 0, np.asarray(shape))
    return (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))


def _tube(shape: Sequence[int], points_zyx: np.ndarray, radius_mm: float) -> tuple[Box, np.ndarray]:
    """Occupancy (0-1) of a tube through ``points_zyx``, on the box that holds it."""
    pad = radius_mm + 3.0
    box = _box_around(shape, points_zyx.min(axis=0) - pad, points_zyx.max(axis=0) + pad)
    occ = np.zeros(tuple(b.stop - b.start for b in box), dtype=np.float32)
    P._stamp_tube(occ, points_zyx - np.asarray([b.start for b in box]), radius_mm, 1.0)
    return box, occ


def _ellipsoid(
    shape: Sequence[int], center_zyx: np.ndarray, half_axes_zyx: Sequence[float]
) -> tuple[Box, np.ndarray]:
    """Boolean ellipsoid (axis-aligned, template index units) on the box that holds it."""
    a = np.asarray(half_axes_zyx, dtype=float)
    box = _box_around(shape, center_zyx - a - 1, center_zyx + a + 1)
    zz, yy, xx = np.ogrid[box[0], box[1], box[2]]
    r2 = (
        ((zz - center_zyx[0]) / a[0]) ** 2
        + ((yy - center_zyx[1]) / a[1]) ** 2
        + ((xx - center_zyx[2]) / a[2]) ** 2
    )
    return box, r2 <= 1.0


def _just_outside(
    anat: P.TemplateAnatomy, start_zyx: np.ndarray, direction_zyx: np.ndarray, gap_mm: float
) -> np.ndarray:
    """First point along a ray from ``start`` that lies ``gap_mm`` outside the brain (template index)."""
    direction = direction_zyx / np.linalg.norm(direction_zyx)
    shape = np.asarray(anat.brain.shape)
    for t in np.arange(0.0, 150.0, 0.5):
        p = start_zyx + t * direction
        q = tuple(np.clip(np.round(p).astype(int), 0, shape - 1))
        if anat.outside_mm[q] >= gap_mm:
            return p
    return start_zyx + 150.0 * direction


def _idx_dir(ras: Sequence[float]) -> np.ndarray:
    """Unit template index direction (z, y, x) of an MNI (RAS) direction."""
    a = mni_to_index(ras) - mni_to_index((0.0, 0.0, 0.0))
    return a / np.linalg.norm(a)


def _sinus_paths(anat: P.TemplateAnatomy, gap_mm: float) -> dict[str, np.ndarray]:
    """Centre lines (template index z, y, x, every ~0.5 mm) of the dural sinuses.

    Each point is where a ray from a point near the brain's centre leaves the brain by ``gap_mm``: the
    superior sagittal sinus along the midline arc from the frontal lobe to the occipital pole, the
    transverse sinuses from there laterally round the back of the cerebellum, the sigmoid sinuses down and
    forward towards the jugular foramen.
    """
    centre = mni_to_index((0.0, -20.0, 5.0))
    low = mni_to_index((0.0, -30.0, -10.0))
    sss = [
        _just_outside(anat, centre, _idx_dir((0.0, math.cos(th), math.sin(th))), gap_mm)
        for th in np.radians(np.arange(25.0, 186.0, 2.0))
    ]
    transverse: list[np.ndarray] = []
    sigmoid: list[np.ndarray] = []
    for side in (-1.0, 1.0):
        pts = [
            _just_outside(anat, low, _idx_dir((side * math.sin(phi), -math.cos(phi), -0.05)), gap_mm)
            for phi in np.radians(np.arange(4.0, 76.0, 3.0))
        ]
        transverse.extend(_densify(np.asarray(pts)))
        pts = []
        for f in np.linspace(0.0, 1.0, 20):
            v = (1.0 - f) * np.asarray([side * 0.97, -0.26, -0.1]) + f * np.asarray(
                [side * 0.55, 0.05, -0.85]
            )
            pts.append(_just_outside(anat, low, _idx_dir(tuple(v)), gap_mm))
        sigmoid.extend(_densify(np.asarray(pts)))
    return {
        "superior_sagittal_sinus": _densify(np.asarray(sss)),
        "transverse_sinus": np.asarray(transverse),
        "sigmoid_sinus": np.asarray(sigmoid),
    }


def _densify(points: np.ndarray, step_mm: float = 0.5) -> np.ndarray:
    """Points every ``step_mm`` along a polyline."""
    out = [points[:1]]
    for a, b in zip(points[:-1], points[1:], strict=True):
        n = max(1, int(math.ceil(np.linalg.norm(b - a) / step_mm)))
        out.append(a + (b - a) * (np.arange(1, n + 1)[:, None] / n))
    return np.concatenate(out)


@functools.lru_cache(maxsize=1)
def _dural_sheets() -> tuple[np.ndarray, np.ndarray]:
    """Falx (occupancy) and tentorium (boolean) of the template (fixed anatomy, computed once).

    Falx: the midline (|x| <= 1 mm) sheet of the interhemispheric fissure above z = 8 mm, kept 4 mm away
    from the ventricles. Tentorium: CSF or the 2.5 mm outside the brain that has brain tissue within 6 mm
    above and below (the cleft between occipital lobes and cerebellum), behind y = -42 mm, -35 < z < 5 mm.
    """
    anat = P.load_template()
    x, y, z = mni_coordinates()
    near_brain = (anat.csf & ~anat.ventricles) | ((anat.outside_mm > 0) & (anat.outside_mm <= 2.5))
    # About 3 mm thick (the dura enhances on both faces): full within 1 mm of the midline.
    falx = np.clip(2.0 - np.abs(x), 0.0, 1.0).astype(np.float32) * (
        near_brain & (z > 8) & (y > -100) & (y < 60)
    )
    falx *= ~ndi.binary_dilation(anat.ventricles, iterations=4)
    tissue = anat.brain & ~anat.csf
    above = np.zeros_like(tissue)
    below = np.zeros_like(tissue)
    for s in range(1, 7):
        above[:-s] |= tissue[s:]
        below[s:] |= tissue[:-s]
    tent = near_brain & above & below & (y < -42) & (z < 5) & (z > -35) & (np.abs(x) > 1.0) & (np.abs(x) < 60)
    falx.setflags(write=False)
    tent.setflags(write=False)
    return falx, tent


class _Painter:
    """Blends structures into the template image and records their class (boxes keep it fast)."""

    def __init__(self, image: np.ndarray, classes: np.ndarray) -> None:
        self.image = image
        self.classes = classes

    def __call__(self, name: str, box: Box, occ: np.ndarray, value: float) -> None:
        region = self.image[box]
        occ = occ.astype(np.float32)
        region[...] = region * (1.0 - occ) + value * occ
        self.classes[box][occ >= 0.5] = DISTRACTOR_CLASSES[name]


def add_anatomical_distractors(
    rng: np.random.Generator,
    anat: P.TemplateAnatomy,
    image: np.ndarray,
    classes: np.ndarray,
    realism: Realism,
    skull: bool,
) -> None:
    """Paint the realistic non-lesion structures into ``image`` and their class into ``classes`` (in place).

    Intensities (x white matter) on gradient echo: sinuses 1.6-2.2, cortical veins 1.3-1.9, falx and
    tentorium 1.15-1.5, choroid plexus 1.3-1.8, pituitary 1.5-2.0 and stalk 1.4-1.9, nasal mucosa 1.3-1.9,
    fat 1.3-1.7. On spin echo flowing blood is dark: sinuses 0.1-0.45 and cortical veins 0.85-1.1. Each
    enhancing excess over 1.0 is multiplied by the scanner's ``enhancement_gain``. With ``skull`` the head
    is drawn too (CSF rim, bone with marrow, scalp fat, orbits and nasal cavity).
    """
    shape = image.shape
    gain = realism.enhancement_gain
    gre = realism.sequence == "gre"
    paint = _Painter(image, classes)

    def enh(lo: float, hi: float) -> float:
        return 1.0 + gain * (float(rng.uniform(lo, hi)) - 1.0)

    if skull:
        _paint_head(rng, anat, image, classes)
    # Dural sinuses: tubes 1.5-3 mm outside the brain surface.
    for name, pts in _sinus_paths(anat, float(rng.uniform(1.5, 3.0))).items():
        radius = float(rng.uniform(2.5, 4.0)) if name != "sigmoid_sinus" else float(rng.uniform(2.5, 3.5))
        box, occ = _tube(shape, pts, radius)
        paint(name, box, occ, enh(1.6, 2.2) if gre else float(rng.uniform(0.1, 0.45)))
    full: Box = (slice(None), slice(None), slice(None))
    falx, tent = _dural_sheets()
    paint("falx", full, falx, enh(1.15, 1.5))
    paint("tentorium", full, tent, enh(1.15, 1.5))
    _paint_veins_and_plexus(rng, anat, paint, gre, enh)
    # Pituitary stalk and gland: below the hypothalamus, in the sella (outside the skull-stripped brain).
    top = _just_outside(anat, mni_to_index((0.0, -4.0, -8.0)), np.asarray([-1.0, 0.0, 0.0]), 1.0)
    gland_c = top + np.asarray([-9.0, 2.0, 0.0])  # 9 mm lower, 2 mm anterior (index y grows anteriorly)
    stalk = _densify(np.asarray([top, gland_c + np.asarray([3.0, 0.0, 0.0])]))
    box, occ = _tube(shape, stalk, float(rng.uniform(1.0, 1.6)))
    paint("pituitary_stalk", box, occ, enh(1.4, 1.9))
    half = (float(rng.uniform(3.0, 4.5)), float(rng.uniform(4.0, 6.0)), float(rng.uniform(5.0, 7.0)))
    box, gland = _ellipsoid(shape, gland_c, half)
    paint("pituitary", box, gland & (anat.depth_mm[box] == 0), enh(1.5, 2.0))


def _paint_veins_and_plexus(
    rng: np.random.Generator,
    anat: P.TemplateAnatomy,
    paint: _Painter,
    gre: bool,
    enh: Callable[[float, float], float],
) -> None:
    """Cortical veins (random walks along the surface, as in :mod:`segmentation.phantoms`) and choroid plexus."""
    shape = np.asarray(anat.brain.shape)
    x, y, z = mni_coordinates()
    surface = np.argwhere((anat.outside_mm > 0) & (anat.outside_mm < 3) & (anat.depth_mm == 0) & (z > -20))
    for _ in range(int(rng.integers(8, 16))):
        start = surface[rng.integers(len(surface))].astype(np.float64)
        pts = P.surface_walk(rng, anat, start, (30, 100), max_depth_mm=2.0, max_outside_mm=3.0)
        if pts:
            box, occ = _tube(tuple(shape), np.asarray(pts), float(rng.uniform(0.6, 1.4)))
            paint("cortical_vein", box, occ, enh(1.3, 1.9) if gre else float(rng.uniform(0.85, 1.1)))
    # Choroid plexus: tufts in the atria of the lateral ventricles, kept inside the ventricles.
    atria = np.argwhere(anat.ventricles & (y < -20) & (np.abs(x) > 12))
    for _ in range(int(rng.integers(2, 5)) if len(atria) else 0):
        c = atria[rng.integers(len(atria))].astype(np.float64)
        box, occ = _tube(
            tuple(shape), c[None, :] + rng.normal(scale=2.0, size=(8, 3)), float(rng.uniform(1.2, 2.5))
        )
        paint("choroid_plexus", box, occ * anat.ventricles[box], enh(1.3, 1.8))


def _paint_head(
    rng: np.random.Generator, anat: P.TemplateAnatomy, image: np.ndarray, classes: np.ndarray
) -> None:
    """CSF rim, skull (dark bone, marrow), scalp fat and skin; orbits (fat, dark globe) and nasal mucosa."""
    out = anat.outside_mm
    csf_mm = rng.uniform(1.5, 3.0)
    bone_mm = rng.uniform(5.0, 8.0)
    fat_mm = rng.uniform(3.0, 6.0)
    rim = (out > 0) & (out <= csf_mm)
    bone = (out > csf_mm) & (out <= csf_mm + bone_mm)
    fat = (out > csf_mm + bone_mm) & (out <= csf_mm + bone_mm + fat_mm)
    skin = (out > csf_mm + bone_mm + fat_mm) & (out <= csf_mm + bone_mm + fat_mm + 1.5)
    image[rim] = np.maximum(image[rim], 0.25)
    image[bone] = 0.06
    marrow = bone & (np.abs(out - csf_mm - bone_mm / 2) < bone_mm / 5)
    image[marrow] = float(rng.uniform(0.5, 0.9))
    image[fat] = float(rng.uniform(1.3, 1.7))
    classes[fat] = DISTRACTOR_CLASSES["scalp_fat"]
    image[skin] = 0.7
    shape = image.shape
    for side in (-1.0, 1.0):
        c = mni_to_index((side * 33.0, 40.0, -38.0))
        box, orbit = _ellipsoid(shape, c, (14.0, 20.0, 14.0))
        orbit &= out[box] > 4.0
        image[box][orbit] = float(rng.uniform(1.3, 1.7))
        classes[box][orbit] = DISTRACTOR_CLASSES["orbital_fat"]
        gbox, globe = _ellipsoid(shape, c + np.asarray([0.0, 8.0, 0.0]), (11.0, 11.0, 11.0))
        globe &= classes[gbox] == DISTRACTOR_CLASSES["orbital_fat"]
        image[gbox][globe] = 0.15
        classes[gbox][globe] = 0
    box, nasal = _ellipsoid(shape, mni_to_index((0.0, 38.0, -58.0)), (13.0, 26.0, 18.0))
    nasal &= out[box] > 4.0
    folds = ndi.gaussian_filter(rng.normal(size=nasal.shape).astype(np.float32), 1.5)
    mucosa = nasal & (folds > 0.0)
    image[box][nasal] = 0.05  # air
    image[box][mucosa] = float(rng.uniform(1.3, 1.9))
    classes[box][mucosa] = DISTRACTOR_CLASSES["nasal_mucosa"]


# --------------------------------------------------------------------------------------------------
# Acquisition artefacts
# --------------------------------------------------------------------------------------------------


def _phase_array_axis(phase_axis: PhaseAxis) -> int:
    """Numpy axis (arrays are k, j, i) of the phase-encode index axis."""
    return 1 if phase_axis == "j" else 2


def motion_ghosts(image: np.ndarray, axis: int, period: int, shift_voxels: float) -> np.ndarray:
    """Magnitude image when every ``period``-th phase-encode line saw the object shifted by ``shift_voxels``.

    In k-space a shift is a linear phase; applying it to one line in ``period`` makes ghosts of the moved
    part at multiples of ``N / period`` voxels along ``axis`` (N = matrix size). Computed with the FFT
    (numpy), which is what the scanner's reconstruction does.
    """
    n = image.shape[axis]
    k = np.fft.fft(image, axis=axis)
    ky = np.fft.fftfreq(n) * n
    moved = (np.arange(n) % period) == 0
    phase = np.where(moved, np.exp(-2j * np.pi * ky * shift_voxels / n), 1.0)
    shape = [1] * image.ndim
    shape[axis] = n
    return np.abs(np.fft.ifft(k * phase.reshape(shape), axis=axis)).astype(np.float32)


def fold_wraparound(extended: np.ndarray, axis: int, margin: int) -> np.ndarray:
    """Fold the ``margin`` voxels on each side of ``axis`` back onto the opposite side (aliasing).

    Signal beyond the FOV's far end appears at its start and vice versa: the discrete Fourier
    reconstruction of a too-small FOV is periodic with the FOV.
    """
    if margin <= 0:
        return extended
    ext = np.moveaxis(extended, axis, 0)
    n = ext.shape[0] - 2 * margin
    if margin > n:
        raise P.PhantomError("the wrap margin is larger than the field of view")
    out = ext[margin : margin + n].copy()
    out[:margin] += ext[margin + n :]
    out[n - margin :] += ext[:margin]
    return np.moveaxis(out, 0, axis)


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------


def _paint_template(
    lesions: Sequence[P.LesionSpec],
    realism: Realism,
    rng: np.random.Generator,
    skull: bool,
    distractors: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Template-space image, lesion labels and distractor classes (anatomy, head, distractors, lesions)."""
    base = P.load_template()
    anat = modified_anatomy(base, realism, rng)
    image = np.array(anat.t1, dtype=np.float32)
    labels = np.zeros(image.shape, dtype=np.uint16)
    classes = np.zeros(image.shape, dtype=np.uint8)
    if distractors:
        add_anatomical_distractors(rng, anat, image, classes, realism, skull)
    elif skull:
        _paint_head(rng, anat, image, classes)
        classes[...] = 0
    brain_limit = ((base.depth_mm > 0) | (base.outside_mm <= 1.0)).astype(np.float32)
    for spec in lesions:
        render_realistic_lesion(spec, anat, image, labels, brain_limit, realism.enhancement_gain)
    classes[labels > 0] = 0  # a lesion hides what it overlaps: no distractor voxel is ever lesion
    return image, labels, classes


def _scanner_effects(
    acquired: np.ndarray,
    rng: np.random.Generator,
    realism: Realism,
    geo: P.AcquisitionGeometry,
    margin: int,
    bias_field_strength: float,
    noise_fraction: float,
) -> np.ndarray:
    """Texture and bias (as the basic style), fold-over of the extended FOV, motion ghosts, Rician noise."""
    axis = _phase_array_axis(realism.phase_axis)
    texture = ndi.gaussian_filter(rng.normal(size=acquired.shape).astype(np.float32), 1.2)
    texture *= 0.03 / max(float(texture.std()), 1e-6)
    acquired *= 1.0 + texture * (acquired > 0.05)
    if bias_field_strength > 0:
        acquired *= P._bias_field(acquired.shape, rng, bias_field_strength)
    acquired = fold_wraparound(acquired, axis, margin)
    if realism.ghost_shift_mm > 0:
        shift_voxels = realism.ghost_shift_mm / geo.spacing_mm[2 - axis]
        acquired = motion_ghosts(acquired, axis, realism.ghost_period, shift_voxels)
    if noise_fraction > 0:
        n1 = rng.normal(scale=noise_fraction, size=acquired.shape).astype(np.float32)
        n2 = rng.normal(scale=noise_fraction, size=acquired.shape).astype(np.float32)
        acquired = np.sqrt((acquired + n1) ** 2 + n2**2)
    return acquired


def _lesion_table(
    lesions: Sequence[P.LesionSpec],
    labels: sitk.Image,
    geo: P.AcquisitionGeometry,
    tx: sitk.Transform,
    warp: sitk.Transform | None,
) -> tuple[P.PhantomLesion, ...]:
    """The rendered lesions with their scanner-space centre (through warp and pose) and volume."""
    ids = [s.lesion_id for s in lesions]
    counts = np.bincount(sitk.GetArrayViewFromImage(labels).ravel(), minlength=max(ids, default=0) + 1)
    voxel_mm3 = float(np.prod(geo.spacing_mm))
    inverse = tx.GetInverse()

    def scanner_point(c: Sequence[float]) -> tuple[float, float, float]:
        p = warped_point(c, warp) if warp is not None else tuple(c)
        return tuple(float(v) for v in inverse.TransformPoint([float(v) for v in p]))  # type: ignore[return-value]

    return tuple(
        P.PhantomLesion(
            lesion_id=s.lesion_id,
            center_mm=scanner_point(s.center_mm),
            diameter_mm=s.diameter_mm,
            kind=s.kind,
            location=s.location,
            volume_mm3=float(counts[s.lesion_id]) * voxel_mm3,
        )
        for s in lesions
        if s.diameter_mm > 0
    )


def render_realistic(
    lesions: Sequence[P.LesionSpec],
    *,
    realism: Realism,
    seed: int,
    geometry: P.AcquisitionGeometry | str,
    pose: P.HeadPose | None,
    skull: bool,
    distractors: bool,
    bias_field_strength: float,
    noise_fraction: float,
    scale: float | None,
) -> P.Phantom:
    """:func:`segmentation.phantoms.render_phantom` with a :class:`Realism` (same arguments, same outputs).

    The order follows the physics: anatomy (atrophy, ventricles, contrast) -> distractors and head ->
    lesions -> one resampling through pose and warp onto an FOV extended by the wrap margin -> texture and
    bias -> fold-over -> motion ghosts -> Rician noise. Labels and distractor classes are resampled with the
    same transform onto the nominal FOV and are not ghosted or folded.
    """
    geo = P._resolve_geometry(geometry)
    P._check_render_arguments(lesions, noise_fraction, bias_field_strength)
    rng = np.random.default_rng(seed)
    pose = pose or P.HeadPose()
    base = P.load_template()
    image, labels, classes = _paint_template(lesions, realism, rng, skull, distractors)

    def template_image(arr: np.ndarray) -> sitk.Image:
        img = sitk.GetImageFromArray(arr)
        img.CopyInformation(base.reference)
        return img

    center = base.head_center_mm
    ref = geo.reference_image(center)
    tx: sitk.Transform = pose.transform(center)
    warp = elastic_warp(realism, base.reference)

    axis = _phase_array_axis(realism.phase_axis)
    margin = int(round(realism.wrap_margin_mm / geo.spacing_mm[2 - axis]))
    if margin > 0:
        size = list(geo.size)
        size[2 - axis] += 2 * margin
        ext_geo = P.AcquisitionGeometry(geo.name, geo.plane, geo.spacing_mm, (size[0], size[1], size[2]))
        image_ref = ext_geo.reference_image(center)
    else:
        image_ref = ref
    # warp(pose^-1(x)), sampled once on a 4 mm grid: the warp is smooth on the 40 mm scale, and a
    # B-spline evaluated at every voxel of three resamplings would take most of the rendering time.
    resample_tx = _coarse_field(sitk.CompositeTransform([warp, tx]), image_ref) if warp is not None else tx
    acquired = sitk.GetArrayFromImage(
        sitk.Resample(template_image(image), image_ref, resample_tx, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    )
    acquired_labels = sitk.Resample(
        template_image(labels), ref, resample_tx, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt16
    )
    acquired_classes = sitk.Resample(
        template_image(classes), ref, resample_tx, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8
    )

    acquired = _scanner_effects(acquired, rng, realism, geo, margin, bias_field_strength, noise_fraction)
    wm_units = float(scale) if scale is not None else float(rng.uniform(400.0, 1000.0))
    out = sitk.GetImageFromArray(np.clip(np.round(acquired * wm_units), 0, 32767).astype(np.int16))
    out.CopyInformation(ref)
    acquired_labels.CopyInformation(ref)
    acquired_classes.CopyInformation(ref)
    mask = sitk.Cast(acquired_labels > 0, sitk.sitkUInt8)

    return P.Phantom(
        image=out,
        mask=mask,
        labels=acquired_labels,
        lesions=_lesion_table(lesions, acquired_labels, geo, tx, warp),
        geometry=geo,
        pose=pose,
        seed=seed,
        distractors=acquired_classes,
        realism=realism,
    )


def make_realistic_phantom(
    seed: int,
    *,
    n_lesions: int | None,
    diameter_range_mm: tuple[float, float] | None,
    geometry: P.AcquisitionGeometry | str | None,
    pose: P.HeadPose | None,
    skull: bool,
    distractors: bool,
    bias_field_strength: float,
    noise_fraction: float | None,
    realism: Realism | None = None,
) -> P.Phantom:
    """One realistic synthetic patient; everything not given is drawn from ``seed`` (the sampler).

    Draws the scanner and anatomy (:func:`sample_realism`), the protocol (:func:`sample_geometry`), the
    noise for the field strength, 1-6 lesions of 2-40 mm (:func:`sample_realistic_lesion_specs`) and a pose.
    """
    rng = np.random.default_rng([seed, 21])
    geo = P._resolve_geometry(geometry) if geometry is not None else sample_geometry(rng)
    real = realism if realism is not None else sample_realism(rng, geo.plane)
    noise = noise_fraction if noise_fraction is not None else sample_noise_fraction(rng, real)
    n = int(rng.integers(1, 7)) if n_lesions is None else n_lesions
    specs = sample_realistic_lesion_specs(rng, n, diameter_range_mm or (2.0, 40.0))
    return render_realistic(
        specs,
        realism=real,
        seed=int(rng.integers(2**31 - 1)),
        geometry=geo,
        pose=pose if pose is not None else P.random_pose(rng),
        skull=skull,
        distractors=distractors,
        bias_field_strength=bias_field_strength,
        noise_fraction=noise,
        scale=None,
    )
