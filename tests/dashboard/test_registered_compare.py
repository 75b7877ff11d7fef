"""The registered comparison panel: an earlier visit resampled onto the current visit's grid with the
stored rigid registrations, so the same anatomy lies under the same crosshair.

Case: the world's two visits are rewritten as one "head" with two lesions, the follow-up being the
baseline moved by a known rotation and translation (as a patient positioned differently). The follow-up
is registered to the baseline with the pipeline's own ``rigid_registration``; the oracle is the
follow-up's own volume and lesion mask, against which the served (resampled) baseline must correlate and
overlap far better than the baseline on its own grid does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk

from rano.match import rigid_registration, transform_parameters
from tests.dashboard.world import ORIGIN_MM, SIZE_XYZ, SPACING_MM, World
from tests.factories import make_member, make_patient, make_series, make_timepoint, make_trial
from trials.models import ImagingSeries
from trials.records.imaging import update_series

#: The follow-up's pose: its points map to the baseline's with this rotation (about z) and shift.
ROTATION_Z_DEG = 8.0
SHIFT_MM = (5.0, -4.0, 4.0)


def _head(seed: int = 0) -> tuple[sitk.Image, sitk.Image]:
    """A smooth ellipsoidal 'brain' with texture, and two bright lesions (labels 1, 2) on the world grid."""
    z, y, x = np.indices(SIZE_XYZ[::-1]).astype(float)
    px, py, pz = (
        x * SPACING_MM[0] + ORIGIN_MM[0],
        y * SPACING_MM[1] + ORIGIN_MM[1],
        z * SPACING_MM[2] + ORIGIN_MM[2],
    )
    head = (px / 28) ** 2 + (py / 24) ** 2 + (pz / 26) ** 2 < 1
    volume = head * (300 + 80 * np.sin(px / 5) * np.cos(py / 7) + 2 * pz)
    labels = np.zeros(volume.shape, dtype=np.uint16)
    for value, (centre, radius) in enumerate((((-12.0, -12.0, 0.0), 8.0), ((12.0, 8.0, 0.0), 6.0)), start=1):
        ball = (px - centre[0]) ** 2 + (py - centre[1]) ** 2 + (pz - centre[2]) ** 2 <= radius**2
        volume[ball] = 900
        labels[ball] = value
    volume = volume + np.random.default_rng(seed).normal(0, 5, volume.shape)
    image = sitk.GetImageFromArray(volume.astype(np.float32))
    image.SetSpacing(SPACING_MM)
    image.SetOrigin(ORIGIN_MM)
    mask = sitk.GetImageFromArray(labels)
    mask.CopyInformation(image)
    return image, mask


def _pose() -> sitk.Euler3DTransform:
    pose = sitk.Euler3DTransform()
    pose.SetRotation(0.0, 0.0, np.deg2rad(ROTATION_Z_DEG))
    pose.SetTranslation(SHIFT_MM)
    return pose


def _series(timepoint: Any) -> ImagingSeries:
    return ImagingSeries.objects.get(timepoint=timepoint)


def _mask_name(series: ImagingSeries) -> str:
    return series.segmentation_runs.get().mask_file.name


def _read(response: Any, tmp_path: Path, name: str) -> np.ndarray:
    assert response.status_code == 200, response.status_code
    path = tmp_path / name
    path.write_bytes(b"".join(response.streaming_content) if response.streaming else response.content)
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


@pytest.fixture
def moved(world: World, media_root: Path) -> dict[str, Any]:
    """The world's visits rewritten: FU1 is the baseline moved by ``_pose``; both registered."""
    from trials.views.imaging import clear_cache

    bl_image, bl_mask = _head()
    pose = _pose()  # follow-up points -> baseline points: resample the baseline onto the follow-up grid
    fu_image = sitk.Resample(bl_image, bl_image, pose, sitk.sitkLinear, 0.0)
    fu_mask = sitk.Resample(bl_mask, bl_mask, pose, sitk.sitkNearestNeighbor, 0)
    bl_series, fu_series = _series(world.baseline), _series(world.fu1)
    for series, image, mask in ((bl_series, bl_image, bl_mask), (fu_series, fu_image, fu_mask)):
        sitk.WriteImage(image, str(media_root / series.volume_file.name))
        sitk.WriteImage(mask, str(media_root / _mask_name(series)))
    clear_cache()
    registration = rigid_registration(bl_image, fu_image)  # what the analysis stage computes and stores
    update_series(
        bl_series,
        registration={
            "fixed_series_id": bl_series.pk,
            "moving_series_id": bl_series.pk,
            **transform_parameters(None),
            "metric_value": None,
        },
        actor=None,
    )
    update_series(
        fu_series,
        registration={
            "fixed_series_id": bl_series.pk,
            "moving_series_id": fu_series.pk,
            **registration.as_dict(),
        },
        actor=None,
    )
    return {
        "bl": bl_series,
        "fu": fu_series,
        "bl_array": sitk.GetArrayFromImage(bl_image),
        "fu_array": sitk.GetArrayFromImage(fu_image),
        "bl_mask": sitk.GetArrayFromImage(bl_mask),
        "fu_mask": sitk.GetArrayFromImage(fu_mask),
    }


@pytest.mark.django_db
def test_earlier_visit_is_served_on_the_current_grid(
    rad_client: Any, moved: dict[str, Any], tmp_path: Path
) -> None:
    bl, fu = moved["bl"], moved["fu"]
    volume = _read(rad_client.get(f"/series/{bl.pk}/on/{fu.pk}/volume.nii"), tmp_path, "v.nii")
    assert volume.shape == moved["fu_array"].shape
    inside = moved["fu_array"] > 100  # the follow-up's head
    registered = np.corrcoef(volume[inside], moved["fu_array"][inside])[0, 1]
    unregistered = np.corrcoef(moved["bl_array"][inside], moved["fu_array"][inside])[0, 1]
    assert registered > 0.95
    assert registered - unregistered > 0.2, (registered, unregistered)

    # The lesion label map, nearest neighbour: value n + 1 is the n-th present observation (L1, L2).
    labels = _read(rad_client.get(f"/series/{bl.pk}/on/{fu.pk}/lesions.nii.gz"), tmp_path, "l.nii.gz")
    assert set(np.unique(labels)) == {0, 1, 2}
    for value in (1, 2):
        fu_lesion = moved["fu_mask"] == value
        assert _dice(labels == value, fu_lesion) > 0.8
        assert _dice(moved["bl_mask"] == value, fu_lesion) < 0.5  # where scanner coordinates put it

    calipers = _read(rad_client.get(f"/series/{bl.pk}/on/{fu.pk}/calipers.nii.gz"), tmp_path, "c.nii.gz")
    assert calipers.shape == volume.shape and set(np.unique(calipers)) <= {0, 1, 2}


@pytest.mark.django_db
def test_visit_page_uses_the_registered_panel_or_says_it_is_not(
    rad_client: Any, world: World, moved: dict[str, Any]
) -> None:
    bl, fu = moved["bl"], moved["fu"]
    (panel,) = rad_client.get(f"/visits/{world.fu1.pk}/").context["viewer_data"]["compare"]
    assert panel["registered"] is True and "Registered to FU1" in panel["registration_note"]
    assert panel["volume_url"] == f"/series/{bl.pk}/on/{fu.pk}/volume.nii"
    assert panel["size"] == list(SIZE_XYZ)
    # Lesion positions are carried onto the follow-up grid: L1's caliper middle lands in the follow-up's L1.
    l1 = next(lesion for lesion in panel["lesions"] if lesion["label"] == "L1")
    i, j, k = (int(round(v)) for v in l1["vox"])
    assert moved["fu_mask"][k, j, i] == 1

    update_series(fu, registration=None, actor=None)
    (panel,) = rad_client.get(f"/visits/{world.fu1.pk}/").context["viewer_data"]["compare"]
    assert panel["registered"] is False and "scanner coordinates" in panel["registration_note"]
    assert panel["volume_url"] == f"/series/{bl.pk}/volume.nii"
    assert rad_client.get(f"/series/{bl.pk}/on/{fu.pk}/volume.nii").status_code == 404


@pytest.mark.django_db
def test_resampled_series_are_permission_checked(client: Any, world: World, moved: dict[str, Any]) -> None:
    bl, fu = moved["bl"], moved["fu"]
    url = f"/series/{bl.pk}/on/{fu.pk}/volume.nii"
    assert client.get(url).status_code == 302  # to the login page
    client.force_login(make_member(make_trial("OTHER-BM"), "radiologist", "outsider"))
    for kind in ("volume.nii", "lesions.nii.gz", "calipers.nii.gz"):
        assert client.get(f"/series/{bl.pk}/on/{fu.pk}/{kind}").status_code == 404
    # Two series of different patients are never composed, even when both are registered and visible.
    client.force_login(world.radiologist)
    other = make_timepoint(make_patient(world.trial, subject_id="SUBJ-0002"), visit_label="BASELINE")
    stranger = make_series(other, volume_file=bl.volume_file.name)
    update_series(stranger, registration={**bl.registration, "moving_series_id": stranger.pk}, actor=None)
    assert client.get(f"/series/{stranger.pk}/on/{fu.pk}/volume.nii").status_code == 404
