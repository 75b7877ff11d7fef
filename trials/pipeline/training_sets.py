"""Training sets from the readers' signed reads (README "Learning from the readers"): the files and the
manifest, the held-out patients, and which patients a fine-tuned version was trained on.

Layout (what ``bm-train --data`` reads, :func:`segmentation.train.nifti_pair_sources`), one case per signed
visit, named ``<subject>_<visit>`` (both sanitised; the subject part has no ``_``, so bm-train's split by
patient keeps a patient's visits together):

* ``<case>_t1c.nii.gz``: the visit's stored (de-identified) volume;
* ``<case>_mask.nii.gz``: the final lesion mask a radiologist signed, after their drops, additions,
  merges and splits (:func:`trials.pipeline.references.reference_case`, the validation job's reference);
* ``<case>_ai_mask.nii.gz``: the AI's original mask of the visit's segmentation run, kept for comparison
  (bm-train ignores it);
* ``manifest.json``: cases, pseudonymous subject ids, visit ids, signers, date, sha256 of every file, the
  training and held-out patients.

Held-out patients: the patients of a validation set are never in a training set. The export takes the
subjects to hold out and/or a fraction held out by a deterministic rule (sha256 of trial code and subject
id), records both lists, and a version fine-tuned from the set carries its training patients in its
provenance (``training_set``): the trial's validation job leaves them out (:func:`training_patients`).
No torch here: the web processes export.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Iterable
from typing import Any

import numpy as np
import SimpleITK as sitk

from segmentation.io import sha256_file
from trials.choices import RunStatus
from trials.exceptions import InvalidInputError, MissingImageError
from trials.models import ModelVersion, SegmentationRun, Timepoint, Trial
from trials.pipeline.references import reference_case, signed_assessment
from trials.storage import media_path, read_image, same_grid, stored_name, write_image

#: Format of the manifest (bump when its fields change meaning).
MANIFEST_FORMAT = "mettrack-training-set/1"
MANIFEST_NAME = "manifest.json"
IMAGE_SUFFIX = "_t1c.nii.gz"
MASK_SUFFIX = "_mask.nii.gz"
AI_MASK_SUFFIX = "_ai_mask.nii.gz"


def sanitise(text: str) -> str:
    """A file-name part: letters, digits and ``-`` only (runs of anything else become one ``-``)."""
    return re.sub(r"[^A-Za-z0-9-]+", "-", text).strip("-") or "x"


def case_name(subject_id: str, visit_label: str) -> str:
    """``<subject>_<visit>``, sanitised: bm-train's patient id is the part before the first ``_``."""
    return f"{sanitise(subject_id)}_{sanitise(visit_label)}"


def held_out_by_fraction(trial_code: str, subject_ids: Iterable[str], fraction: float) -> set[str]:
    """Subjects held out by the deterministic rule: sha256("<trial code>:<subject id>") read as a number in
    [0, 1) below ``fraction``. The same subjects for the same trial at every export.

    Raises:
        InvalidInputError: ``fraction`` outside [0, 1).
    """
    if not 0.0 <= fraction < 1.0:
        raise InvalidInputError(
            "The held-out fraction must be at least 0 and below 1.",
            {"hold_out_fraction": ["Must be >= 0 and < 1."]},
        )
    held = set()
    for subject in subject_ids:
        digest = hashlib.sha256(f"{trial_code}:{subject}".encode()).digest()
        if int.from_bytes(digest[:8], "big") / 2**64 < fraction:
            held.add(subject)
    return held


def training_patients(version: ModelVersion, trial: Trial) -> set[str]:
    """Subject ids of ``trial`` that ``version`` was trained on (empty for a version not trained here)."""
    provenance = (version.training_provenance or {}).get("training_set") or {}
    if provenance.get("trial_id") != trial.pk:
        return set()
    return set(provenance.get("training_patients") or [])


def ai_run(visit: Timepoint, series_id: int) -> SegmentationRun | None:
    """The segmentation run whose mask is the AI's answer at the visit: the run of its AI observations, or
    else the series' latest succeeded run with a mask."""
    run_id = (
        visit.observations.filter(segmentation_run__series_id=series_id)
        .values_list("segmentation_run_id", flat=True)
        .order_by("-segmentation_run_id")
        .first()
    )
    runs = SegmentationRun.objects.filter(series_id=series_id, is_shadow=False).exclude(mask_file="")
    if run_id is not None:
        return runs.filter(pk=run_id).first()
    return runs.filter(status=RunStatus.SUCCEEDED).order_by("-pk").first()


def ai_mask(run: SegmentationRun | None, image: sitk.Image) -> sitk.Image:
    """The run's lesion components as one binary mask on the image grid (empty without a run).

    Raises:
        MissingImageError: the run's mask is not on the series grid.
    """
    mask = np.zeros(sitk.GetArrayViewFromImage(image).shape, dtype=np.uint8)
    if run is not None:
        labels = read_image(stored_name(run.mask_file))
        if not same_grid(labels, image):
            raise MissingImageError(f"The mask of segmentation run {run.pk} is not on its series' grid.")
        mask = (sitk.GetArrayViewFromImage(labels) != 0).astype(np.uint8)
    out = sitk.GetImageFromArray(mask)
    out.CopyInformation(image)
    return out


def write_case(visit: Timepoint, folder: str, name: str) -> dict[str, Any]:
    """Write one signed visit's three files as case ``name`` under ``folder`` (a name under MEDIA_ROOT);
    its manifest row.

    Raises:
        MissingImageError: no stored volume, or a kept lesion without a stored contour.
    """
    image, reference = reference_case(visit)
    series = visit.series.exclude(volume_file="").order_by("-pk").first()
    assert series is not None  # reference_case found it
    run = ai_run(visit, series.pk)
    files = {}
    for kind, suffix, written in (
        ("t1c", IMAGE_SUFFIX, image),
        ("mask", MASK_SUFFIX, reference),
        ("ai_mask", AI_MASK_SUFFIX, ai_mask(run, image)),
    ):
        path = write_image(written, f"{folder}/{name}{suffix}", compress=True)
        files[kind] = {"file": path.name, "sha256": sha256_file(path)}
    signed = signed_assessment(visit)
    return {
        "case": name,
        "subject_id": visit.patient.subject_id,
        "visit_id": visit.pk,
        "visit_label": visit.visit_label,
        "series_id": series.pk,
        "ai_run_id": run.pk if run is not None else None,
        "ai_model_version": str(run.model_version) if run is not None else None,
        "assessment_id": signed.pk if signed else None,
        "signed_by": signed.signed_by.get_username() if signed and signed.signed_by else None,
        "signed_at_utc": signed.signed_at.isoformat() if signed and signed.signed_at else None,
        "reference_voxels": int(sitk.GetArrayViewFromImage(reference).astype(bool).sum()),
        "files": files,
    }


def write_training_set(
    trial: Trial,
    visits: list[Timepoint],
    folder: str,
    *,
    held_out: set[str],
    hold_out_rule: dict[str, Any],
    created_by: str,
    created: dt.datetime,
) -> tuple[dict[str, Any], str]:
    """Write the cases of ``visits`` whose subject is not held out, and the manifest, under ``folder``.

    Returns:
        The manifest and the sha256 of ``manifest.json`` as written.
    """
    kept = [visit for visit in visits if visit.patient.subject_id not in held_out]
    names = [case_name(visit.patient.subject_id, visit.visit_label) for visit in kept]
    # Two visit labels may sanitise alike: the visit id then tells them apart.
    names = [f"{n}-{v.pk}" if names.count(n) > 1 else n for n, v in zip(names, kept, strict=True)]
    cases = [write_case(visit, folder, name) for visit, name in zip(kept, names, strict=True)]
    manifest = {
        "format": MANIFEST_FORMAT,
        "layout": "bm-train --data: <case>_t1c.nii.gz + <case>_mask.nii.gz (the signed reference); "
        "<case>_ai_mask.nii.gz is the AI's original mask, for comparison (bm-train ignores it)",
        "trial": trial.code,
        "trial_id": trial.pk,
        "created_utc": created.isoformat(),
        "created_by": created_by,
        "cases": cases,
        "training_patients": sorted({case["subject_id"] for case in cases}),
        "held_out_patients": sorted(held_out),
        "hold_out": hold_out_rule,
    }
    path = media_path(f"{folder}/{MANIFEST_NAME}")
    path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return manifest, sha256_file(path)


__all__ = [
    "AI_MASK_SUFFIX",
    "IMAGE_SUFFIX",
    "MANIFEST_NAME",
    "MASK_SUFFIX",
    "case_name",
    "held_out_by_fraction",
    "sanitise",
    "training_patients",
    "write_training_set",
]
