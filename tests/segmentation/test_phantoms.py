"""Synthetic post-gadolinium phantoms: anatomy, lesions, distractors, geometry, longitudinal series."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

from segmentation import phantoms as P


@pytest.fixture(scope="module")
def anatomy() -> P.TemplateAnatomy:
    return P.load_template()


@pytest.fixture(scope="module")
def small_phantom() -> P.Phantom:
    return P.make_phantom(11, n_lesions=4, diameter_range_mm=(6.0, 25.0), geometry="axial_2mm")


def _deep_spec(anatomy: P.TemplateAnatomy, **kwargs: object) -> P.LesionSpec:
    """A lesion in deep white matter, far from the brain surface (centre picked from the WM map)."""
    deep = np.argwhere((anatomy.wm > 0.9) & (anatomy.depth_mm > 25))
    idx = deep[len(deep) // 2]
    center = anatomy.reference.TransformIndexToPhysicalPoint([int(idx[2]), int(idx[1]), int(idx[0])])
    base = {"lesion_id": 1, "center_mm": tuple(center), "diameter_mm": 20.0, "shape_seed": 5}
    base.update(kwargs)
    return P.LesionSpec(**base)  # type: ignore[arg-type]


def test_template_comes_from_nilearn_and_is_normalised(anatomy: P.TemplateAnatomy) -> None:
    # White matter median scaled to 1; grey matter darker, CSF darker still (T1 contrast).
    assert np.median(anatomy.t1[anatomy.wm > 0.8]) == pytest.approx(1.0, abs=1e-6)
    assert np.median(anatomy.t1[anatomy.gm > 0.8]) < 0.9
    assert np.median(anatomy.t1[anatomy.csf]) < np.median(anatomy.t1[anatomy.gm > 0.8])
    # An adult brain is 1.1-1.8 litres; the template mask holds brain plus some CSF.
    assert 1.1e6 < anatomy.brain.sum() < 2.2e6
    assert anatomy.ventricles.sum() > 5_000  # lateral ventricles, tens of millilitres
    assert anatomy.reference.GetSpacing() == (1.0, 1.0, 1.0)


def test_same_seed_same_volume_other_seed_differs() -> None:
    a = P.make_phantom(3, n_lesions=2, geometry="axial_2mm")
    b = P.make_phantom(3, n_lesions=2, geometry="axial_2mm")
    c = P.make_phantom(4, n_lesions=2, geometry="axial_2mm")
    assert np.array_equal(sitk.GetArrayViewFromImage(a.image), sitk.GetArrayViewFromImage(b.image))
    assert np.array_equal(sitk.GetArrayViewFromImage(a.mask), sitk.GetArrayViewFromImage(b.mask))
    assert not np.array_equal(sitk.GetArrayViewFromImage(a.image), sitk.GetArrayViewFromImage(c.image))


def test_phantom_grid_types_and_lesion_table(small_phantom: P.Phantom) -> None:
    geo = P.GEOMETRIES["axial_2mm"]
    assert small_phantom.image.GetSize() == geo.size
    assert small_phantom.image.GetSpacing() == geo.spacing_mm
    assert small_phantom.image.GetPixelID() == sitk.sitkInt16
    assert small_phantom.mask.GetPixelID() == sitk.sitkUInt8
    labels = sitk.GetArrayViewFromImage(small_phantom.labels)
    mask = sitk.GetArrayViewFromImage(small_phantom.mask)
    assert np.array_equal(mask > 0, labels > 0)
    assert {lesion.lesion_id for lesion in small_phantom.lesions} == set(
        np.unique(labels[labels > 0]).tolist()
    )
    for lesion in small_phantom.lesions:
        assert 6.0 <= lesion.diameter_mm <= 25.0
        # Independent count from the label map, in mm^3 (2 mm voxels = 8 mm^3).
        assert lesion.volume_mm3 == pytest.approx(8.0 * np.count_nonzero(labels == lesion.lesion_id))


def test_solid_lesion_volume_centre_and_enhancement(anatomy: P.TemplateAnatomy) -> None:
    spec = _deep_spec(anatomy, kind="solid", enhancement=1.6)
    pose = P.HeadPose(rotation_deg=(2.0, -3.0, 1.5), translation_mm=(3.0, -2.0, 4.0))
    ph = P.render_phantom([spec], seed=1, geometry="axial_1mm", pose=pose, noise_fraction=0.0,
                          bias_field_strength=0.0, distractors=False, skull=False)  # fmt: skip
    (lesion,) = ph.lesions
    sphere_mm3 = 4.0 / 3.0 * math.pi * 10.0**3
    # Lobulation (+-10 % radius terms) and the 1 mm grid change the volume by well under 30 %.
    assert lesion.volume_mm3 == pytest.approx(sphere_mm3, rel=0.3)
    # The reported centre, mapped through the head pose, lies inside the lesion on the acquired grid.
    idx = ph.labels.TransformPhysicalPointToIndex(lesion.center_mm)
    assert ph.labels[idx] == 1
    img = sitk.GetArrayViewFromImage(ph.image).astype(float)
    lab = sitk.GetArrayViewFromImage(ph.labels)
    brain = img > 0.5 * np.median(img[img > 0])
    assert img[lab == 1].mean() > 1.3 * np.median(img[brain & (lab == 0)])


def test_ring_lesion_has_dark_core_inside_the_mask(anatomy: P.TemplateAnatomy) -> None:
    spec = _deep_spec(anatomy, kind="ring", diameter_mm=24.0, rim_thickness_mm=3.0)
    ph = P.render_phantom([spec], seed=2, geometry="axial_1mm", noise_fraction=0.0, bias_field_strength=0.0,
                          distractors=False, skull=False)  # fmt: skip
    (lesion,) = ph.lesions
    center = ph.image.TransformPhysicalPointToIndex(lesion.center_mm)
    img = sitk.GetArrayViewFromImage(ph.image).astype(float)
    lab = sitk.GetArrayViewFromImage(ph.labels)
    z, y, x = center[2], center[1], center[0]
    core = img[z - 2 : z + 3, y - 2 : y + 3, x - 2 : x + 3]
    assert (lab[z - 2 : z + 3, y - 2 : y + 3, x - 2 : x + 3] == 1).all()  # the necrotic core is lesion
    assert core.mean() < 0.6 * img[lab == 1].max()  # and dark against the enhancing rim


def test_distractors_add_bright_non_lesion_voxels() -> None:
    with_d = P.make_phantom(
        21, n_lesions=1, geometry="axial_2mm", distractors=True, skull=False, noise_fraction=0.0
    )
    without = P.make_phantom(
        21, n_lesions=1, geometry="axial_2mm", distractors=False, skull=False, noise_fraction=0.0
    )

    def bright_outside_lesions(ph: P.Phantom) -> int:
        img = sitk.GetArrayViewFromImage(ph.image).astype(float)
        wm = np.percentile(img[img > 0], 75)
        return int(((img > 1.2 * wm) & (sitk.GetArrayViewFromImage(ph.mask) == 0)).sum())

    assert bright_outside_lesions(with_d) > bright_outside_lesions(without) + 50


def test_geometries_set_direction_and_keep_lesions() -> None:
    ph = P.make_phantom(5, n_lesions=2, diameter_range_mm=(10, 20), geometry="sagittal_1mm")
    direction = np.asarray(ph.image.GetDirection()).reshape(3, 3)
    assert np.allclose(np.abs(direction[:, 2]), [1, 0, 0])  # slices stack along left-right
    assert sitk.GetArrayViewFromImage(ph.mask).sum() > 0
    with pytest.raises(P.PhantomError, match="unknown geometry"):
        P.make_phantom(5, geometry="axial_7mm")


def test_longitudinal_series_trajectories_and_repositioning() -> None:
    series = P.make_longitudinal_series(8, n_visits=3, n_baseline_lesions=4, geometry="axial_2mm")
    assert len(series.visits) == 3
    tracks = {t.trajectory: t for t in series.tracks}
    assert set(tracks) == {"grow", "shrink", "disappear", "stable", "appear"}
    grow, shrink, gone, new = tracks["grow"], tracks["shrink"], tracks["disappear"], tracks["appear"]
    assert grow.diameters_mm[2] > grow.diameters_mm[0]
    assert shrink.diameters_mm[2] < shrink.diameters_mm[0]
    assert gone.diameters_mm[0] > 0 and gone.diameters_mm[2] == 0
    assert new.diameters_mm[0] == 0 and new.diameters_mm[1] > 0

    def ids(visit: P.Phantom) -> set[int]:
        arr = sitk.GetArrayViewFromImage(visit.labels)
        return set(np.unique(arr[arr > 0]).tolist())

    assert gone.lesion_id in ids(series.visits[0]) and gone.lesion_id not in ids(series.visits[2])
    assert new.lesion_id not in ids(series.visits[0]) and new.lesion_id in ids(series.visits[1])
    # Growth is visible in the ground truth: the growing lesion's voxel count increases.
    vols = [int((sitk.GetArrayViewFromImage(v.labels) == grow.lesion_id).sum()) for v in series.visits]
    assert vols[2] > vols[0]
    poses = {v.pose for v in series.visits}
    assert len(poses) == 3  # the head is repositioned at every visit
    for pose in poses:
        assert max(abs(a) for a in pose.rotation_deg) <= 3.0
        assert max(abs(t) for t in pose.translation_mm) <= 4.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_lesions": -1}, "n_lesions"),
        ({"diameter_range_mm": (0.5, 10.0)}, "diameter_range_mm"),
        ({"diameter_range_mm": (20.0, 10.0)}, "diameter_range_mm"),
        ({"noise_fraction": 0.9}, "noise_fraction"),
        ({"bias_field_strength": 2.0}, "bias_field_strength"),
    ],
)
def test_bad_phantom_parameters_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(P.PhantomError, match=message):
        P.make_phantom(1, geometry="axial_2mm", **kwargs)  # type: ignore[arg-type]


def test_bad_lesion_specs_are_refused(anatomy: P.TemplateAnatomy) -> None:
    with pytest.raises(P.PhantomError, match="duplicate"):
        P.render_phantom([_deep_spec(anatomy), _deep_spec(anatomy)], seed=0, geometry="axial_2mm")
    with pytest.raises(P.PhantomError, match="kind"):
        _deep_spec(anatomy, kind="cystic")
    with pytest.raises(P.PhantomError, match="spacing_mm"):
        P.AcquisitionGeometry("x", "axial", (0.0, 1.0, 1.0), (10, 10, 10))
