"""Reader-review services (trials.review) on the imaged world: every verb recomputes the assessment
through the pipeline's reassess_patient and leaves its review event in the audit trail; bad input
raises a specific exception and changes nothing."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial.distance import pdist

from tests.dashboard.world import CENTRE_L1, CENTRE_L2, CENTRE_MISSED, World, _sphere
from trials import exceptions, storage
from trials.actions import assessments, review
from trials.actions import trials as trial_actions
from trials.exceptions import InvalidInputError, InvalidStateError
from trials.models import Assessment, AuditEvent, Lesion, LesionObservation, SegmentationRun
from trials.records import lesions as lesion_records

pytestmark = pytest.mark.django_db


def _current(world: World, timepoint: object | None = None) -> Assessment:
    return Assessment.objects.get(timepoint=timepoint or world.fu1, criteria="rano_bm", is_current=True)


def _obs(world: World, label: str, timepoint: object | None = None) -> LesionObservation:
    return LesionObservation.objects.get(
        lesion__patient=world.patient, lesion__label=label, timepoint=timepoint or world.fu1
    )


def test_world_starts_as_ai_pd(world: World) -> None:
    assessment = _current(world)
    assert (assessment.overall_response, assessment.status, assessment.source) == ("PD", "draft", "ai")


def test_drop_false_positive_recomputes_and_is_audited(world: World) -> None:
    l2 = world.lesions["L2"]
    review.drop_lesion(
        l2, timepoint=world.fu1, actor=world.radiologist, reason="vessel", correlation_id="c-drop"
    )
    l2.refresh_from_db()
    assert l2.is_false_positive
    after = _current(world)
    assert after.overall_response == "SD"
    # Only L1 counts now: the SLD is its LD at FU1.
    assert after.sum_ld_mm == pytest.approx(_obs(world, "L1").longest_diameter_mm)
    event = AuditEvent.objects.get(action="review.drop_lesion")
    assert (event.actor, event.reason, event.object_type, event.object_id) == (
        world.radiologist,
        "vessel",
        "trials.timepoint",
        str(world.fu1.pk),
    )
    assert event.correlation_id == "c-drop"
    assert AuditEvent.objects.filter(correlation_id="c-drop", object_type="trials.assessment").exists()
    with pytest.raises(InvalidStateError, match="already dropped"):
        review.drop_lesion(l2, timepoint=world.fu1, actor=world.radiologist, reason="vessel")
    review.restore_lesion(l2, timepoint=world.fu1, actor=world.radiologist, reason="it is a lesion")
    assert _current(world).overall_response == "PD"


def test_drop_at_one_visit_makes_it_absent_there_only(world: World) -> None:
    l1, l2 = world.lesions["L1"], world.lesions["L2"]
    obs = review.drop_lesion_at_visit(
        l2, timepoint=world.fu1, actor=world.radiologist, reason="vessel", correlation_id="c-visit"
    )
    l2.refresh_from_db()
    assert not l2.is_false_positive  # still a lesion at the other visits
    assert (obs.present, obs.source, obs.longest_diameter_mm) == (False, "edited", None)
    assert obs.measurable_reason == f"{review.NOT_A_LESION_AT_VISIT}: vessel"
    assert _obs(world, "L2", world.baseline).present
    # RANO-BM on the targets L1 and L2 (both measurable at baseline): L2 counts 0 mm at FU1.
    baseline_sum = _obs(world, "L1", world.baseline).longest_diameter_mm + (
        _obs(world, "L2", world.baseline).longest_diameter_mm
    )
    fu1_sum = _obs(world, "L1").longest_diameter_mm
    assert (fu1_sum - baseline_sum) / baseline_sum <= -0.30  # a partial response by the sums
    after = _current(world)
    assert after.sum_ld_mm == pytest.approx(fu1_sum)
    assert (after.overall_response, after.source) == ("PR", "edited")
    # The AI's own answer stays stored as delivered.
    ai = Assessment.objects.get(timepoint=world.fu1, criteria="rano_bm", source="ai")
    assert ai.overall_response == "PD"
    event = AuditEvent.objects.get(action="review.drop_lesion_at_visit")
    assert (event.actor, event.reason, event.object_id) == (world.radiologist, "vessel", str(world.fu1.pk))
    assert event.after == {"lesion": "L2", "present": False, "scope": "this visit"}
    assert event.correlation_id == "c-visit"
    # Refused: no longer present here, no reason, or a lesion already dropped at every visit.
    with pytest.raises(InvalidInputError, match="not present"):
        review.drop_lesion_at_visit(l2, timepoint=world.fu1, actor=world.radiologist, reason="again")
    with pytest.raises(InvalidInputError, match="needs a reason"):
        review.drop_lesion_at_visit(l1, timepoint=world.fu1, actor=world.radiologist, reason=" ")
    review.drop_lesion(l1, timepoint=world.fu1, actor=world.radiologist, reason="artefact")
    with pytest.raises(InvalidStateError, match="every visit"):
        review.drop_lesion_at_visit(l1, timepoint=world.baseline, actor=world.radiologist, reason="x")


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def _brute_force_ld(mask_zyx: np.ndarray, spacing_xy: tuple[float, float] = (1.0, 1.0)) -> float:
    best = 0.0
    for plane in mask_zyx:
        ys, xs = np.nonzero(plane)
        if xs.size == 0:
            continue
        corners = np.array(
            [
                ((x + dx) * spacing_xy[0], (y + dy) * spacing_xy[1])
                for x, y in zip(xs, ys, strict=True)
                for dx in (-0.5, 0.5)
                for dy in (-0.5, 0.5)
            ]
        )
        best = max(best, float(pdist(corners).max()))
    return best


def test_add_missed_lesion_from_seed(world: World) -> None:
    review.drop_lesion(world.lesions["L2"], timepoint=world.fu1, actor=world.radiologist, reason="vessel")
    assert _current(world).overall_response == "SD"
    runs = SegmentationRun.objects.count()
    obs = review.add_lesion_from_seed(
        world.fu1, seed_index=CENTRE_MISSED, actor=world.radiologist, reason="missed"
    )
    assert (
        obs.lesion.label == "L3" and obs.source == "manual" and obs.lesion.first_seen_timepoint == world.fu1
    )
    # The grown region is the sphere that was painted (independent construction in world.py).
    mask = sitk.GetArrayFromImage(storage.load_observation_mask(obs)) > 0
    assert _dice(mask, _sphere(CENTRE_MISSED, 5.0)) > 0.95
    # Measured by rano.measure: the LD is the largest in-plane distance between voxel corners
    # (rano-bm.md 1), recomputed here by brute force over every axial slice.
    assert obs.longest_diameter_mm == pytest.approx(_brute_force_ld(mask), abs=1e-6)
    assert (
        10.0 <= obs.longest_diameter_mm <= 10.0 + 2 * math.sqrt(2)
    )  # a 10 mm sphere, within a voxel diagonal
    after = _current(world)
    assert after.overall_response == "PD" and after.new_lesion_status == "unequivocal"
    assert AuditEvent.objects.filter(action="review.add_lesion", reason="missed").count() == 1
    # The reader's contour is stored beside the pipeline's runs, not as a run of its own.
    assert SegmentationRun.objects.count() == runs
    assert storage.observation_mask_source(obs) == (
        f"masks/reader/tp{world.fu1.pk}_lesion{obs.lesion_id}.nii.gz",
        1,
    )


def _painted(array_zyx: np.ndarray) -> sitk.Image:
    """A painted region as the view hands it over: a binary image on the FU1 volume's grid."""
    from tests.dashboard.world import ORIGIN_MM, SPACING_MM

    image = sitk.GetImageFromArray(array_zyx.astype(np.uint8))
    image.SetSpacing(SPACING_MM)
    image.SetOrigin(ORIGIN_MM)
    return image


def test_add_missed_lesion_from_a_painted_mask(world: World) -> None:
    sphere = _sphere(CENTRE_MISSED, 5.0)
    obs = review.add_lesion_from_mask(
        world.fu1, mask=_painted(sphere), actor=world.radiologist, reason="painted", correlation_id="c-paint"
    )
    assert (obs.lesion.label, obs.source, obs.lesion.first_seen_timepoint) == ("L3", "manual", world.fu1)
    # Exactly the painted voxels are stored, and measured like every lesion (no region growing).
    mask = sitk.GetArrayFromImage(storage.load_observation_mask(obs)) > 0
    assert np.array_equal(mask, sphere)
    assert obs.volume_mm3 == pytest.approx(sphere.sum() * 2.0)  # 1 x 1 x 2 mm voxels
    assert obs.longest_diameter_mm == pytest.approx(_brute_force_ld(mask), abs=1e-6)
    after = _current(world)
    assert (after.overall_response, after.new_lesion_status, after.source) == ("PD", "unequivocal", "edited")
    event = AuditEvent.objects.get(action="review.add_lesion", correlation_id="c-paint")
    assert event.after["painted_voxels"] == int(sphere.sum()) and event.after["lesion"] == "L3"


def test_painted_mask_overlapping_a_lesion_keeps_that_lesion_s_voxels(world: World) -> None:
    l1 = _sphere(CENTRE_L1, 8.0)
    beside = _sphere((CENTRE_L1[0] + 11, CENTRE_L1[1], CENTRE_L1[2]), 5.0)  # a blob touching L1
    obs = review.add_lesion_from_mask(world.fu1, mask=_painted(beside | l1 & beside), actor=world.radiologist)
    stored = sitk.GetArrayFromImage(storage.load_observation_mask(obs)) > 0
    assert np.array_equal(stored, beside & ~l1) and (beside & l1).any()


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: np.zeros((32, 64, 64), bool), "Nothing was painted"),
        (lambda: _sphere(CENTRE_L2, 9.0), "inside L2"),
        (lambda: _sphere((10, 50, 8), 3.0) | _sphere((50, 10, 24), 3.0), "2 separate parts"),
        (lambda: np.ones((32, 64, 64), bool), "larger than any lesion"),
    ],
    ids=["empty", "inside-L2", "two-parts", "too-large"],
)
def test_painted_mask_is_refused_with_the_reason(world: World, build: Any, message: str) -> None:
    count = LesionObservation.objects.count()
    with pytest.raises(InvalidInputError, match=message):
        review.add_lesion_from_mask(world.fu1, mask=_painted(build()), actor=world.radiologist)
    assert LesionObservation.objects.count() == count


def test_painted_mask_on_another_grid_is_refused(world: World) -> None:
    other = _painted(_sphere(CENTRE_MISSED, 5.0))
    other.SetSpacing((1.0, 1.0, 1.0))
    with pytest.raises(InvalidInputError, match="not on the grid"):
        review.add_lesion_from_mask(world.fu1, mask=other, actor=world.radiologist)


@pytest.mark.parametrize(
    ("seed", "message"),
    [
        ((500, 0, 0), "outside the image"),
        ((2, 2, 2), "leaked"),  # normal tissue: the region floods the whole volume
        (CENTRE_L1, "inside L1"),
    ],
)
def test_add_lesion_refuses_bad_seeds(world: World, seed: tuple[int, int, int], message: str) -> None:
    count = Lesion.objects.count()
    with pytest.raises(exceptions.RegionGrowingError, match=message):
        review.add_lesion_from_seed(world.fu1, seed_index=seed, actor=world.radiologist)
    assert Lesion.objects.count() == count


def test_merge_measures_the_union_once(world: World) -> None:
    kept = review.merge_lesions(
        world.lesions["L1"],
        world.lesions["L2"],
        timepoint=world.fu1,
        actor=world.radiologist,
        reason="one mass",
    )
    absorbed = _obs(world, "L2")
    assert not absorbed.present and absorbed.measurable_reason == "merged into L1"
    # Both discs lie on slice 16: the in-plane Feret diameter of the union is the centre distance plus
    # both radii (8 and 9 mm), within a voxel (outer voxel edges).
    expected = math.dist(CENTRE_L1[:2], CENTRE_L2[:2]) + 8.0 + 9.0
    assert abs(kept.longest_diameter_mm - expected) <= 1.5
    assert kept.volume_mm3 == pytest.approx((_sphere(CENTRE_L1, 8.0) | _sphere(CENTRE_L2, 9.0)).sum() * 2.0)
    with pytest.raises(InvalidInputError, match="itself"):
        review.merge_lesions(
            world.lesions["L1"], world.lesions["L1"], timepoint=world.fu1, actor=world.radiologist
        )
    with pytest.raises(InvalidInputError, match="not present"):
        review.merge_lesions(
            world.lesions["L1"], world.lesions["L2"], timepoint=world.fu1, actor=world.radiologist
        )


def test_split_conserves_volume(world: World) -> None:
    before = _obs(world, "L2").volume_mm3
    i, j, k = CENTRE_L2
    kept, new = review.split_lesion(
        world.lesions["L2"],
        timepoint=world.fu1,
        seed_keep=(i - 5, j, k),
        seed_new=(i + 5, j, k),
        actor=world.radiologist,
        reason="two lesions",
    )
    assert new.lesion.label == "L3" and new.lesion.first_seen_timepoint == world.fu1
    assert kept.volume_mm3 + new.volume_mm3 == pytest.approx(before)
    # The cut is the plane halfway between the seeds, through the centre: halves within 15%.
    assert abs(kept.volume_mm3 - new.volume_mm3) / before < 0.15
    with pytest.raises(InvalidInputError, match="not inside"):
        review.split_lesion(
            world.lesions["L1"],
            timepoint=world.fu1,
            seed_keep=(0, 0, 0),
            seed_new=CENTRE_L1,
            actor=world.radiologist,
        )


def test_target_selection_rules(world: World) -> None:
    targets = review.set_target_selection(
        world.patient, [world.lesions["L1"]], actor=world.radiologist, reason="r"
    )
    assert [t.label for t in targets] == ["L1"]
    l2 = Lesion.objects.get(pk=world.lesions["L2"].pk)
    assert l2.role == "non_target" and l2.role_set_by_reader
    # L1 alone: 17 mm vs 17 mm -> SD; L2 is a non-target still present -> overall SD.
    assert _current(world).overall_response == "SD"
    trial_actions.update_trial(world.trial, max_targets=1, actor=None)
    with pytest.raises(InvalidInputError, match="at most 1"):
        review.set_target_selection(world.patient, list(world.lesions.values()), actor=world.radiologist)
    small = lesion_records.create_lesion(world.patient, actor=None)
    lesion_records.record_observation(
        small, world.baseline, longest_diameter_mm=4.0, measurable=False, actor=None
    )
    with pytest.raises(InvalidInputError, match="cannot be a target"):
        review.set_target_selection(world.patient, [small], actor=world.radiologist)


def test_unequivocal_progression_of_a_non_target(world: World) -> None:
    review.set_target_selection(world.patient, [world.lesions["L1"]], actor=world.radiologist)
    with pytest.raises(InvalidInputError, match="non-targets only"):
        review.set_unequivocal_progression(_obs(world, "L1"), value=True, actor=world.radiologist)
    review.set_unequivocal_progression(_obs(world, "L2"), value=True, actor=world.radiologist, reason="grew")
    assert _current(world).overall_response == "PD"


def test_flags_and_clinical_context(world: World) -> None:
    with pytest.raises(InvalidInputError, match="Unknown lesion flag"):
        review.set_lesion_flags(
            world.lesions["L1"], timepoint=world.fu1, flags={"is_vascular": True}, actor=None
        )
    review.set_lesion_flags(
        world.lesions["L2"],
        timepoint=world.fu1,
        flags={"is_cystic": True},
        actor=world.radiologist,
        reason="cyst",
    )
    assert Lesion.objects.get(pk=world.lesions["L2"].pk).is_cystic
    assert AuditEvent.objects.filter(action="review.set_flags", reason="cyst").count() == 1
    with pytest.raises(InvalidInputError, match="Unknown clinical status"):
        review.set_clinical_context(world.fu1, clinical_status="dying", actor=world.radiologist)
    review.drop_lesion(world.lesions["L2"], timepoint=world.fu1, actor=world.radiologist, reason="vessel")
    assert _current(world).overall_response == "SD"
    review.set_clinical_context(
        world.fu1, clinical_status="worse", actor=world.radiologist, reason="neuro decline"
    )
    assert _current(world).overall_response == "PD"


def test_confirm_needs_the_right_password(world: World) -> None:
    assessment = _current(world)
    with pytest.raises(exceptions.SignatureError, match="does not match"):
        assessments.confirm_assessment(assessment, actor=world.radiologist, password="wrong")
    assessment.refresh_from_db()
    assert assessment.status == "draft" and not AuditEvent.objects.filter(action="confirm").exists()
    signed = assessments.confirm_assessment(assessment, actor=world.radiologist, password=world.password)
    assert (signed.status, signed.signed_by, signed.signature_meaning) == (
        "confirmed",
        world.radiologist,
        "reviewed_confirmed",
    )
    assert signed.signed_at is not None
    with pytest.raises(InvalidStateError):
        assessments.confirm_assessment(signed, actor=world.radiologist, password=world.password)


def test_override_needs_reason_password_and_valid_response(world: World) -> None:
    assessment = _current(world)
    kwargs = {"actor": world.radiologist, "password": world.password}
    with pytest.raises(InvalidInputError, match="needs a reason"):
        assessments.override_assessment(assessment, overall_response="SD", reason="  ", **kwargs)
    with pytest.raises(InvalidInputError, match="Unknown response"):
        assessments.override_assessment(assessment, overall_response="MAYBE", reason="x", **kwargs)
    with pytest.raises(exceptions.SignatureError):
        assessments.override_assessment(
            assessment, overall_response="SD", reason="x", actor=world.radiologist, password="nope"
        )
    new = assessments.override_assessment(
        assessment, overall_response="SD", reason="pseudo-progression", **kwargs
    )
    assert (new.overall_response, new.status, new.source, new.supersedes_id) == (
        "SD",
        "overridden",
        "radiologist",
        assessment.pk,
    )
    assert _current(world).pk == new.pk
    assert AuditEvent.objects.get(action="override").reason == "pseudo-progression"


def test_failed_verb_leaves_files_and_rows_as_they_were(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.core.files.storage import default_storage

    added = review.add_lesion_from_seed(world.fu1, seed_index=CENTRE_MISSED, actor=world.radiologist)
    l3_name = storage.reader_mask_name(added.lesion_id, world.fu1.pk)
    with default_storage.open(l3_name, "rb") as src:
        l3_bytes = src.read()
    l1_before = _obs(world, "L1")

    def failing_reassess(*args: object, **kwargs: object) -> None:
        raise InvalidInputError("the engine refused the data")

    # The failure comes from the last step of the verb, after the contour files were written.
    monkeypatch.setattr(review, "reassess_patient", failing_reassess)
    with pytest.raises(InvalidInputError, match="engine refused"):
        review.merge_lesions(world.lesions["L1"], added.lesion, timepoint=world.fu1, actor=world.radiologist)
    with default_storage.open(l3_name, "rb") as src:
        assert src.read() == l3_bytes
    assert not default_storage.exists(storage.reader_mask_name(world.lesions["L1"].pk, world.fu1.pk))
    l1_after = _obs(world, "L1")
    assert (l1_after.longest_diameter_mm, l1_after.segmentation_run_id) == (
        l1_before.longest_diameter_mm,
        l1_before.segmentation_run_id,
    )
    assert _obs(world, "L3").present
