"""A small imaged trial for the dashboard tests: real volumes and label masks written with SimpleITK under
MEDIA_ROOT, rows created through ``trials.services`` (via tests/factories.py), lesions measured with
``rano.measure`` and assessments computed by the pipeline's ``reassess_patient``.

Design of the case (so that a reader's correction visibly changes the response):
    BASELINE  L1 sphere radius 8 mm, L2 radius 6 mm                 -> SLD ~ 28 mm
    FU1       L1 radius 8 mm, L2 radius 9 mm (+6 mm LD, +21% SLD)   -> PD by the AI
              plus an unsegmented bright sphere (radius 5 mm) the AI missed (seed for "add lesion")
    Dropping L2 as a false positive leaves L1 alone: 16 mm vs 16 mm -> SD.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from rano.measure import measure_lesions
from tests.factories import (
    DEFAULT_PASSWORD,
    make_lesion,
    make_member,
    make_model_version,
    make_patient,
    make_run,
    make_series,
    make_site,
    make_timepoint,
    make_trial,
)
from trials.models import Lesion, Patient, Timepoint, Trial
from trials.records import lesions as lesion_records

SIZE_XYZ = (64, 64, 32)
SPACING_MM = (1.0, 1.0, 2.0)
ORIGIN_MM = (-32.0, -32.0, -32.0)
BACKGROUND = 100.0
LESION_SIGNAL = 300.0

#: Centres (voxel index i, j, k) of the lesions of the case.
CENTRE_L1 = (20, 20, 16)
CENTRE_L2 = (44, 40, 16)
CENTRE_MISSED = (24, 46, 16)


@dataclass
class World:
    """Everything a dashboard test needs."""

    trial: Trial
    patient: Patient
    baseline: Timepoint
    fu1: Timepoint
    lesions: dict[str, Lesion]
    radiologist: Any
    investigator: Any
    data_manager: Any
    password: str = DEFAULT_PASSWORD


def _sphere(centre: tuple[int, int, int], radius_mm: float) -> np.ndarray:
    """Boolean (z, y, x) array of a sphere in physical mm on the case grid."""
    z, y, x = np.indices(SIZE_XYZ[::-1]).astype(float)
    return (
        ((x - centre[0]) * SPACING_MM[0]) ** 2
        + ((y - centre[1]) * SPACING_MM[1]) ** 2
        + ((z - centre[2]) * SPACING_MM[2]) ** 2
    ) <= radius_mm**2


def _image(array: np.ndarray, *, dtype: int) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING_MM)
    image.SetOrigin(ORIGIN_MM)
    return sitk.Cast(image, dtype)


def _write(image: sitk.Image, media_root: Path, name: str) -> str:
    path = media_root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=True)
    return name


def imaged_visit(
    patient: Patient,
    timepoint: Timepoint,
    media_root: Path,
    segmented: dict[str, tuple[tuple[int, int, int], float]],
    *,
    unsegmented: list[tuple[tuple[int, int, int], float]] | None = None,
    lesions: dict[str, Lesion],
    model_version: Any,
    seed: int = 0,
) -> None:
    """Write a visit's volume and AI label mask, and record the AI observations of ``segmented`` lesions.

    Args:
        segmented: lesion label -> (centre index, radius mm) found by the "AI".
        unsegmented: bright spheres present in the image but missing from the mask.
        lesions: label -> Lesion, extended with new lesions as needed.
    """
    rng = np.random.default_rng(seed)
    volume = np.full(SIZE_XYZ[::-1], BACKGROUND, dtype=np.float32) + rng.normal(0, 4, SIZE_XYZ[::-1]).astype(
        np.float32
    )
    labels = np.zeros(SIZE_XYZ[::-1], dtype=np.uint16)
    for number, (_label, (centre, radius)) in enumerate(sorted(segmented.items()), start=1):
        sphere = _sphere(centre, radius)
        volume[sphere] = LESION_SIGNAL + rng.normal(0, 4, int(sphere.sum()))
        labels[sphere] = number
    for centre, radius in unsegmented or []:
        sphere = _sphere(centre, radius)
        volume[sphere] = LESION_SIGNAL + rng.normal(0, 4, int(sphere.sum()))
    tag = f"p{patient.pk}_{timepoint.visit_label.lower()}"
    image = _image(volume, dtype=sitk.sitkFloat32)
    label_image = _image(labels, dtype=sitk.sitkUInt16)
    series = make_series(
        timepoint,
        series_description="T1 post-contrast",
        volume_file=_write(image, media_root, f"series/{tag}/volume.nii.gz"),
        size_voxels=list(SIZE_XYZ),
        spacing_mm=list(SPACING_MM),
        origin_mm=list(ORIGIN_MM),
        direction=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
        source="synthetic",
    )
    run = make_run(
        series,
        model_version,
        status="succeeded",
        mask_file=_write(label_image, media_root, f"masks/{tag}/labels.nii.gz"),
    )
    measured = {m.label: m for m in measure_lesions(label_image, image, relabel=False)}
    for number, label in enumerate(sorted(segmented), start=1):
        if label not in lesions:
            lesions[label] = make_lesion(patient, label=label, first_seen_timepoint=timepoint)
        lesion_records.record_observation(
            lesions[label],
            timepoint,
            segmentation_run=run,
            component_label=number,
            actor=None,
            **lesion_records.measurement_fields([measured[number]]),
        )


def build_world(media_root: Path, *, subject_id: str = "SUBJ-0001") -> World:
    """Create the trial, users of each role, one patient with two imaged visits, and AI assessments."""
    from trials.pipeline.assessment import reassess_patient

    trial = make_trial("DASH-BM", title="Dashboard test trial")
    site = make_site(trial, code="SITE-1", name="Site one")
    patient = make_patient(trial, site=site, subject_id=subject_id)
    baseline = make_timepoint(
        patient, visit_label="BASELINE", scan_date=dt.date(2024, 1, 10), is_baseline=True
    )
    fu1 = make_timepoint(patient, visit_label="FU1", scan_date=dt.date(2024, 3, 10))
    model_version = make_model_version(name="unetr-demo")
    lesions: dict[str, Lesion] = {}
    imaged_visit(
        patient,
        baseline,
        media_root,
        {"L1": (CENTRE_L1, 8.0), "L2": (CENTRE_L2, 6.0)},
        lesions=lesions,
        model_version=model_version,
        seed=1,
    )
    imaged_visit(
        patient,
        fu1,
        media_root,
        {"L1": (CENTRE_L1, 8.0), "L2": (CENTRE_L2, 9.0)},
        unsegmented=[(CENTRE_MISSED, 5.0)],
        lesions=lesions,
        model_version=model_version,
        seed=2,
    )
    reassess_patient(patient, from_timepoint=None, actor=None, reason="initial assessment", edited=False)
    return World(
        trial=trial,
        patient=patient,
        baseline=baseline,
        fu1=fu1,
        lesions=lesions,
        radiologist=make_member(trial, "radiologist", "rad"),
        investigator=make_member(trial, "investigator", "inv"),
        data_manager=make_member(trial, "data_manager", "dm"),
    )
