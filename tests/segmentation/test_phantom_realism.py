"""The realistic phantom style: rims, oedema, locations, small lesions, distractors, artefacts, warps.

Oracles: analytic sphere volumes, the same phantom rendered without the feature (same seed, no noise),
the image-domain form of k-space line modulation and of aliasing, and SimpleITK's Jacobian of the warp.
Geometries are 1-2 mm and small where the measurement allows it, so that each test takes seconds.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage as ndi

from segmentation import phantom_realism as R
from segmentation import phantoms as P

#: A 1 mm axial grid of 81^3 voxels centred on the head: odd size, so its voxels sit on the template's.
SMALL_1MM = P.AcquisitionGeometry("small_1mm", "axial", (1.0, 1.0, 1.0), (81, 81, 81))
#: 1 mm over the brain only (170 x 210 x 150 mm): the small-lesion volumes need 1 mm, not the scalp.
BRAIN_1MM = P.AcquisitionGeometry("brain_1mm", "axial", (1.0, 1.0, 1.0), (171, 211, 151))
CLEAN = {"noise_fraction": 0.0, "bias_field_strength": 0.0, "scale": 1000.0, "pose": P.HeadPose()}


@pytest.fixture(scope="module")
def anatomy() -> P.TemplateAnatomy:
    return P.load_template()


def _deep_center(anatomy: P.TemplateAnatomy, within_mm: float = 20.0) -> tuple[float, float, float]:
    """A deep white-matter voxel centre close to the head centre (inside the small 1 mm grid)."""
    idx = np.argwhere((anatomy.wm > 0.95) & (anatomy.depth_mm > 20))
    pts = np.asarray(
        [
            anatomy.reference.TransformIndexToPhysicalPoint([int(i[2]), int(i[1]), int(i[0])])
            for i in idx[::20]
        ]
    )
    dist = np.linalg.norm(pts - np.asarray(anatomy.head_center_mm), axis=1)
    ok = pts[dist < within_mm]
    return tuple(float(v) for v in ok[np.argmax(dist[dist < within_mm])])  # type: ignore[return-value]


def _arr(img: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(img).astype(np.float64)


def _ray_profile(
    ph: P.Phantom, center: tuple[float, float, float], direction: np.ndarray, length: float, step: float
):
    """Image and label values every ``step`` mm along a ray from ``center`` (physical mm)."""
    s = np.arange(0.0, length, step)
    pts = np.asarray(center)[None, :] + s[:, None] * direction[None, :]
    idx = np.asarray([ph.image.TransformPhysicalPointToContinuousIndex([float(v) for v in p]) for p in pts])
    coords = idx[:, ::-1].T  # z, y, x
    values = ndi.map_coordinates(_arr(ph.image), coords, order=1)
    labels = ndi.map_coordinates(_arr(ph.labels), coords, order=0)
    return s, values, labels


DIRECTIONS = [np.asarray(v, dtype=float) / np.linalg.norm(v) for v in
              [(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1),
               (1, 1, 1), (1, 1, -1), (1, -1, 1), (1, -1, -1), (-1, 1, 1), (-1, 1, -1), (-1, -1, 1), (-1, -1, -1)]]  # fmt: skip


def _rim_thicknesses(anatomy: P.TemplateAnatomy, unevenness: float) -> tuple[list[float], P.Phantom]:
    center = _deep_center(anatomy)
    spec = P.LesionSpec(1, center, 24.0, kind="ring", rim_thickness_mm=3.0, enhancement=1.7, shape_seed=11,
                        rim_unevenness=unevenness, heterogeneity=0.0)  # fmt: skip
    ph = P.render_phantom([spec], seed=3, geometry=SMALL_1MM, distractors=False, skull=False,
                          realism=R.Realism(), **CLEAN)  # type: ignore[arg-type]  # fmt: skip
    out = []
    for u in DIRECTIONS:
        s, values, labels = _ray_profile(ph, center, u, 20.0, 0.1)
        rim = values > 1350.0  # between the rim (1700) and white matter (<= 1000) / necrotic core (<= 600)
        assert rim.any(), "the rim is present in every direction"
        # The whole rim and the centre are lesion: every sample up to the rim's outer edge is labelled.
        outer = s[rim].max()
        assert (labels[s <= outer - 0.7] == 1).all()
        out.append(float(rim.sum() * 0.1))
    return out, ph


def test_uneven_rim_is_in_the_mask_and_varies_with_direction(anatomy: P.TemplateAnatomy) -> None:
    uneven, ph = _rim_thicknesses(anatomy, 0.5)
    even, _ = _rim_thicknesses(anatomy, 0.0)
    # Uniform 3 mm rim: the 14 measured thicknesses (2.0-2.7 mm: 1 mm grid, edge blur) within a factor
    # 1.5; uneven rim (log spread 0.5, thickness clipped at 0.7 mm): a factor of more than 3.
    assert max(even) / min(even) < 1.5, even
    assert max(uneven) / min(uneven) > 3.0, uneven
    # The centre is dark (necrosis), and inside the mask.
    idx = ph.image.TransformPhysicalPointToIndex(_deep_center(anatomy))
    assert ph.image[idx] < 700 and ph.labels[idx] == 1


def test_oedema_is_darker_than_white_matter_and_not_in_the_mask(anatomy: P.TemplateAnatomy) -> None:
    center = _deep_center(anatomy)
    spec = P.LesionSpec(1, center, 16.0, kind="solid", enhancement=1.6, shape_seed=4, heterogeneity=0.0)
    kw = {
        "seed": 5,
        "geometry": SMALL_1MM,
        "distractors": False,
        "skull": False,
        "realism": R.Realism(),
        **CLEAN,
    }
    with_lesion = P.render_phantom([spec], **kw)  # type: ignore[arg-type]
    without = P.render_phantom([P.LesionSpec(1, center, 0.0)], **kw)  # type: ignore[arg-type]
    img, ref, lab = _arr(with_lesion.image), _arr(without.image), _arr(with_lesion.labels)
    zz, yy, xx = np.indices(img.shape)
    c = with_lesion.image.TransformPhysicalPointToContinuousIndex(center)
    r = np.sqrt((xx - c[0]) ** 2 + (yy - c[1]) ** 2 + (zz - c[2]) ** 2)
    # Outer edge <= 8 mm x 1.15 (axes) x 1.12 (lobulation) < 10.5 mm; the shell 11-13 mm is outside it.
    shell = (r > 11.0) & (r < 13.0) & (ref > 900)  # white matter of the lesion-free render
    assert shell.sum() > 300
    assert (lab[shell] == 0).all()
    assert img[shell].mean() < 0.92 * ref[shell].mean()
    # Far away (> 40 mm) the white matter is untouched.
    far = (r > 40) & (ref > 900)
    assert np.allclose(img[far], ref[far], atol=1.0)


def test_each_location_family_lands_in_its_region(anatomy: P.TemplateAnatomy) -> None:
    rng = np.random.default_rng(9)
    locations = list(R.REALISTIC_LOCATIONS)
    specs = R.sample_realistic_lesion_specs(rng, len(locations), (5.0, 7.0), locations=locations)
    ph = P.render_phantom(specs, seed=1, geometry="axial_2mm", distractors=False, skull=False,
                          realism=R.Realism(), **CLEAN)  # type: ignore[arg-type]  # fmt: skip
    lab = sitk.GetArrayViewFromImage(ph.labels)
    for spec, lesion in zip(specs, ph.lesions, strict=True):
        assert lesion.location == spec.location
        zyx = np.argwhere(lab == spec.lesion_id).mean(axis=0)
        x, y, z = ph.labels.TransformContinuousIndexToPhysicalPoint([float(v) for v in zyx[::-1]])
        x, y = -x, -y  # LPS -> MNI RAS
        t = anatomy.reference.TransformPhysicalPointToIndex(spec.center_mm)[::-1]
        gm, wm = anatomy.gm[t], anatomy.wm[t]
        # Bounds from MNI atlases (mm), independent of the sampler's masks where possible.
        if spec.location == "brainstem":
            assert abs(x) < 14 and -45 < y < -10 and -52 < z < -5, (x, y, z)
        elif spec.location == "cerebellum":
            assert z < -20 and y < -45 and abs(x) < 58, (x, y, z)
        elif spec.location == "junction":
            assert gm > 0.3 and wm > 0.1 and z > -45, (gm, wm)
        elif spec.location == "cortex":
            assert gm > 0.5 and z > -45, gm
        elif spec.location == "deep":
            assert wm > 0.7, wm
        else:
            vent = anatomy.reference.TransformPhysicalPointToIndex(spec.center_mm)[::-1]
            near = ndi.distance_transform_edt(~anatomy.ventricles[tuple(slice(v - 10, v + 11) for v in vent)])
            assert near[10, 10, 10] <= 6.5


@pytest.mark.parametrize("diameter", [2.0, 3.0, 4.0, 5.0])
def test_small_lesions_have_the_sphere_volume(diameter: float) -> None:
    rng = np.random.default_rng(int(diameter * 10))
    specs = R.sample_realistic_lesion_specs(rng, 16, (diameter, diameter), locations=["deep"] * 16)
    ph = P.render_phantom(specs, seed=2, geometry=BRAIN_1MM, distractors=False, skull=False,
                          realism=R.Realism(), **CLEAN)  # type: ignore[arg-type]  # fmt: skip
    sphere = math.pi * diameter**3 / 6.0
    volumes = np.asarray([lesion.volume_mm3 for lesion in ph.lesions])
    assert (volumes > 0).all()  # every small lesion is in the mask
    # Centres are jittered within the voxel, so the 1 mm lattice count is unbiased: the mean of 16 is
    # within 20 % of the sphere (its spread is ~1 voxel per lesion; shapes keep the sphere's volume).
    assert volumes.mean() == pytest.approx(sphere, rel=0.2)
    img, lab = _arr(ph.image), _arr(ph.labels)
    peaks = ndi.maximum(img, lab, index=[lesion.lesion_id for lesion in ph.lesions])
    assert np.mean(peaks) > 1.2 * 1000.0  # they enhance (white matter is 1000: scale, no bias or noise)


@pytest.fixture(scope="module")
def distractor_phantoms() -> dict[str, P.Phantom]:
    # One lesion sits on the falx (where the falx is densest, >= 6 mm deep), so that the two overlap.
    anat = P.load_template()
    falx = R._dural_sheets()[0] > 0.5
    density = np.where(falx & (anat.depth_mm > 6), ndi.uniform_filter(falx.astype(np.float32), 11), 0.0)
    falx_idx = np.unravel_index(np.argmax(density), density.shape)
    on_falx = P.LesionSpec(
        99,
        tuple(anat.reference.TransformIndexToPhysicalPoint([int(v) for v in falx_idx[::-1]])),
        16.0,
        shape_seed=1,
    )
    specs = [
        on_falx,
        *R.sample_realistic_lesion_specs(np.random.default_rng(4), 6, (4.0, 25.0), avoid=[on_falx]),
    ]
    return {
        seq: P.render_phantom(specs, seed=8, geometry="axial_2mm", realism=R.Realism(sequence=seq), **CLEAN)  # type: ignore[arg-type]
        for seq in ("gre", "se")
    }


def test_distractors_present_never_lesion_and_bright_or_flow_voids(
    distractor_phantoms: dict[str, P.Phantom],
) -> None:
    for seq, ph in distractor_phantoms.items():
        img = _arr(ph.image)
        assert ph.distractors is not None
        cls = sitk.GetArrayViewFromImage(ph.distractors)
        mask = sitk.GetArrayViewFromImage(ph.mask)
        assert not ((cls > 0) & (mask > 0)).any()  # no distractor voxel is lesion, even on the falx
        assert (sitk.GetArrayViewFromImage(ph.labels) == 99).sum() > 100
        wm = 1000.0  # white matter: the scale (no bias field, no noise, 3 % texture)
        for name, value in R.DISTRACTOR_CLASSES.items():
            voxels = img[cls == value]
            assert voxels.size > 0, f"{name} missing ({seq})"
            median = float(np.median(voxels))
            if seq == "se" and name in R.FLOWING_BLOOD and name != "cortical_vein":
                assert median < 0.6 * wm, (seq, name, median)  # flow void
            elif seq == "se" and name == "cortical_vein":
                assert median < 1.2 * wm, (seq, name, median)  # little enhancement
            elif name != "pituitary_stalk":  # 1-2 voxels thick at 2 mm: partial volume
                assert median > 1.1 * wm, (seq, name, median)


def test_distractor_regions_follow_the_anatomy(distractor_phantoms: dict[str, P.Phantom]) -> None:
    ph = distractor_phantoms["gre"]
    assert ph.distractors is not None
    cls = sitk.GetArrayViewFromImage(ph.distractors)

    def mni(name: str) -> np.ndarray:
        zyx = np.argwhere(cls == R.DISTRACTOR_CLASSES[name])
        pts = np.asarray(
            [ph.distractors.TransformIndexToPhysicalPoint([int(v) for v in p[::-1]]) for p in zyx[::7]]
        )
        return pts * np.asarray([-1.0, -1.0, 1.0])

    sss, falx, tent = mni("superior_sagittal_sinus"), mni("falx"), mni("tentorium")
    assert np.abs(sss[:, 0]).max() < 6 and sss[:, 2].max() > 60  # midline, over the vertex
    assert np.abs(falx[:, 0]).max() < 3
    assert tent[:, 1].max() < -40 and tent[:, 2].max() < 10
    for name in ("transverse_sinus", "sigmoid_sinus"):
        pts = mni(name)
        assert (pts[:, 0] > 20).any() and (pts[:, 0] < -20).any()  # both sides
    assert np.abs(mni("pituitary")[:, 0]).max() < 10 and mni("pituitary")[:, 2].max() < -10


def test_motion_ghosts_are_copies_at_the_phase_encode_period() -> None:
    # Image-domain oracle: moving every P-th k-space line by d voxels adds (shift_d(img) - img) / P at
    # every multiple of N / P voxels along the phase-encode axis.
    rng = np.random.default_rng(0)
    img = ndi.gaussian_filter(rng.random((6, 40, 12)), 2.0) * (np.arange(40) < 16)[None, :, None]
    got = R.motion_ghosts(img, axis=1, period=4, shift_voxels=3)
    diff = np.roll(img, 3, axis=1) - img
    expected = img + sum(np.roll(diff, j * 10, axis=1) for j in range(4)) / 4.0
    assert np.allclose(got, np.abs(expected), atol=1e-5)

    base = R.Realism(phase_axis="j")
    kw = {"seed": 3, "geometry": "axial_2mm", "distractors": False, "skull": False, **CLEAN}
    still = _arr(P.render_phantom([], realism=base, **kw).image)  # type: ignore[arg-type]
    moved_ph = P.render_phantom([], realism=R.Realism(ghost_period=4, ghost_shift_mm=4.0), **kw)  # type: ignore[arg-type]
    moved = _arr(moved_ph.image)
    diff = np.roll(still, 2, axis=1) - still
    expected = np.abs(still + sum(np.roll(diff, j * 30, axis=1) for j in range(4)) / 4.0)
    assert np.abs(moved - expected).max() <= 2.0  # int16 rounding of both
    # The ghost lands in the background at N / P = 30 rows: energy there, none without motion.
    background = still < 5
    assert moved[background].mean() > 10 * max(still[background].mean(), 0.5)
    assert np.array_equal(sitk.GetArrayViewFromImage(moved_ph.mask), np.zeros_like(moved, dtype=np.uint8))


def test_wraparound_folds_the_head_outside_a_tight_fov(anatomy: P.TemplateAnatomy) -> None:
    center = _deep_center(anatomy)
    spec = P.LesionSpec(1, center, 12.0, shape_seed=2)
    tight = P.AcquisitionGeometry("tight", "axial", (2.0, 2.0, 2.0), (120, 80, 90))  # 160 mm AP FOV
    wide = P.AcquisitionGeometry("wide", "axial", (2.0, 2.0, 2.0), (120, 120, 90))  # 240 mm AP FOV
    kw = {"seed": 6, "distractors": True, "skull": True, **CLEAN}
    wrapped = P.render_phantom([spec], geometry=tight, realism=R.Realism(wrap_margin_mm=40.0), **kw)  # type: ignore[arg-type]
    unwrapped = P.render_phantom([spec], geometry=tight, realism=R.Realism(), **kw)  # type: ignore[arg-type]
    full = P.render_phantom([spec], geometry=wide, realism=R.Realism(), **kw)  # type: ignore[arg-type]
    w, u, f = _arr(wrapped.image), _arr(unwrapped.image), _arr(full.image)
    assert f[:, :20].sum() > 0 and f[:, 100:].sum() > 0  # the head does reach beyond the tight FOV
    # Oracle: the 240 mm acquisition folded by hand (rows beyond each end added to the other end).
    folded = f[:, 20:100].copy()
    folded[:, :20] += f[:, 100:]
    folded[:, 60:] += f[:, :20]
    assert np.abs(w - folded).max() <= 3.0
    assert w[:, 60:].sum() > u[:, 60:].sum() + 0.9 * f[:, :20].sum()
    # The truth is not wrapped: the mask is the wide acquisition's mask over the tight FOV.
    assert np.array_equal(
        sitk.GetArrayViewFromImage(wrapped.mask), sitk.GetArrayViewFromImage(full.mask)[:, 20:100]
    )


def test_elastic_warp_is_bounded_smooth_and_invertible() -> None:
    realism = R.Realism(warp_max_mm=6.0, warp_seed=12)
    warp = R.elastic_warp(realism)
    assert warp is not None and R.elastic_warp(R.Realism()) is None
    # The head's 180 mm cube, inside the template domain (outside it the warp is the identity).
    ref = P.AcquisitionGeometry("cube", "axial", (2.0, 2.0, 2.0), (90, 90, 90)).reference_image(
        P.load_template().head_center_mm
    )
    field = sitk.TransformToDisplacementFieldFilter()
    field.SetReferenceImage(ref)
    field.SetOutputPixelType(sitk.sitkVectorFloat64)
    disp = field.Execute(warp)
    u = sitk.GetArrayFromImage(disp)
    norm = np.linalg.norm(u, axis=-1)
    assert 4.0 < norm.max() <= 6.0 + 1e-6
    jac = sitk.GetArrayFromImage(sitk.DisplacementFieldJacobianDeterminant(disp))
    assert jac.min() > 0.5 and jac.max() < 1.5
    # Smooth: neighbouring 2 mm voxels differ by under 0.6 mm.
    assert max(float(np.abs(np.diff(u, axis=a)).max()) for a in range(3)) < 0.6


def test_warp_moves_a_lesion_by_the_displacement_at_its_centre(anatomy: P.TemplateAnatomy) -> None:
    realism = R.Realism(warp_max_mm=6.0, warp_seed=18)
    warp = R.elastic_warp(realism)
    assert warp is not None
    center = _deep_center(anatomy, 30.0)
    spec = P.LesionSpec(1, center, 16.0, shape_seed=3)
    kw = {"seed": 4, "geometry": "axial_2mm", "distractors": False, "skull": False, **CLEAN}
    plain = P.render_phantom([spec], realism=R.Realism(), **kw)  # type: ignore[arg-type]
    warped = P.render_phantom([spec], realism=realism, **kw)  # type: ignore[arg-type]

    def centroid(ph: P.Phantom) -> np.ndarray:
        zyx = np.argwhere(sitk.GetArrayViewFromImage(ph.labels) == 1).mean(axis=0)
        return np.asarray(ph.labels.TransformContinuousIndexToPhysicalPoint([float(v) for v in zyx[::-1]]))

    # Resampling pulls template points warp(x) to x: the lesion at c shows at x = c - u(x) (3 iterations).
    c = np.asarray(center)
    x = c.copy()
    for _ in range(3):
        x = c - (np.asarray(warp.TransformPoint([float(v) for v in x])) - x)
    expected_shift = x - c
    assert np.linalg.norm(expected_shift) > 2.0  # the warp really moves this lesion
    shift = centroid(warped) - centroid(plain)
    assert np.linalg.norm(shift - expected_shift) < 0.5, (shift, expected_shift)
    assert np.linalg.norm(np.asarray(warped.lesions[0].center_mm) - centroid(warped)) < 0.6
    # Volume scales with 1 / det(Jacobian of the warp) at the lesion (central differences, 1 mm).
    jac = np.stack([(np.asarray(warp.TransformPoint([float(v) for v in x + e])) - np.asarray(
        warp.TransformPoint([float(v) for v in x - e]))) / 2.0 for e in np.eye(3)], axis=1)  # fmt: skip
    ratio = warped.lesions[0].volume_mm3 / plain.lesions[0].volume_mm3
    assert ratio == pytest.approx(1.0 / np.linalg.det(jac), rel=0.08)


def test_atrophy_and_ventricle_size_enlarge_the_csf(anatomy: P.TemplateAnatomy) -> None:
    rng = np.random.default_rng(0)
    same = R.modified_anatomy(anatomy, R.Realism(), rng)
    assert np.array_equal(same.t1, anatomy.t1) and np.array_equal(same.csf, anatomy.csf)
    atrophic = R.modified_anatomy(anatomy, R.Realism(atrophy_mm=1.5), np.random.default_rng(0))
    big_vent = R.modified_anatomy(anatomy, R.Realism(ventricle_dilation_mm=3.0), np.random.default_rng(0))
    csf0 = int(anatomy.csf.sum())
    assert atrophic.csf.sum() > 1.2 * csf0
    assert (atrophic.t1[atrophic.csf & ~anatomy.csf] < 0.5).all()  # the new CSF is dark
    # They grow by at least 2 mm on average (boundary voxels x 2), and only within 3 mm of the old ones.
    surface = int((anatomy.ventricles & ~ndi.binary_erosion(anatomy.ventricles)).sum())
    grown = big_vent.ventricles & ~anatomy.ventricles
    assert grown.sum() > 2 * surface
    assert not (grown & ~ndi.binary_dilation(anatomy.ventricles, np.ones((3, 3, 3)), iterations=3)).any()
    assert big_vent.csf.sum() > csf0


def test_sampler_draws_variety_and_is_reproducible() -> None:
    draws = [R.sample_realism(np.random.default_rng(s)) for s in range(60)]
    assert {d.field_strength for d in draws} == {"1.5T", "3T"}
    assert {d.sequence for d in draws} == {"gre", "se"}
    for attr in ("ghost_shift_mm", "wrap_margin_mm", "warp_max_mm", "atrophy_mm", "ventricle_dilation_mm"):
        values = [getattr(d, attr) for d in draws]
        assert 0 < sum(v > 0 for v in values) < len(values), attr
    assert sum(d.phase_axis == "j" for d in draws) > 40  # axial: mostly anterior-posterior
    sagittal = [R.sample_realism(np.random.default_rng(s), "sagittal") for s in range(60)]
    assert sum(d.phase_axis == "i" for d in sagittal) > 40  # the sagittal grid's AP axis is i
    three = [d.grey_white_contrast for d in draws if d.field_strength == "3T"]
    one_five = [d.grey_white_contrast for d in draws if d.field_strength == "1.5T"]
    assert min(three) >= max(one_five)
    geos = [R.sample_geometry(np.random.default_rng(s)) for s in range(40)]
    spacings = np.asarray([g.spacing_mm for g in geos])
    assert spacings.min() >= 0.5 and spacings.max() <= 1.2 and spacings[:, 0].min() < 0.6
    assert {g.plane for g in geos} == {"axial", "sagittal", "coronal"}
    a = P.make_phantom(7, style="realistic", n_lesions=2, geometry="axial_2mm")
    b = P.make_phantom(7, style="realistic", n_lesions=2, geometry="axial_2mm")
    assert a.realism == b.realism and a.realism is not None
    assert np.array_equal(sitk.GetArrayViewFromImage(a.image), sitk.GetArrayViewFromImage(b.image))
    assert np.array_equal(sitk.GetArrayViewFromImage(a.mask), sitk.GetArrayViewFromImage(b.mask))


def test_basic_style_is_the_default_and_rejects_realism_settings() -> None:
    with pytest.raises(P.PhantomError):
        P.make_phantom(1, realism=R.Realism())
    with pytest.raises(P.PhantomError):
        P.make_phantom(1, style="fancy")  # type: ignore[arg-type]
    with pytest.raises(P.PhantomError):
        R.Realism(warp_max_mm=10.0, warp_spacing_mm=40.0)  # could fold
    basic = P.make_phantom(3, n_lesions=1, geometry="axial_2mm")
    assert basic.distractors is None and basic.realism is None
