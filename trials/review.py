"""Radiologist review: every reader correction is one transactional function with its AuditEvent.

Each verb changes lesions, observations or visits through ``trials.services`` (so each row change is
audited as usual), writes one summarising ``review.*`` AuditEvent on the visit under review (who, what,
why, with before/after), and then recomputes the patient's assessments from the first affected visit on
with the pipeline's ``reassess_patient`` -- all in one transaction, so a failed recomputation leaves no
half-applied correction behind.

Reader-drawn contours (an added lesion, a merge, a split) are stored as one binary mask per lesion and
visit on the series grid, ``masks/reader/tp<visit id>_lesion<lesion id>.nii.gz``; the observation then
has no segmentation run (its source is ``manual`` or ``edited``) and the viewer draws that mask instead.
Keeping them out of ``SegmentationRun`` leaves the pipeline's runs (and its lesion matching) untouched.

Permission checks are the caller's job (``trials.permissions``: ``edit_lesions`` for corrections,
``review_assessments`` for confirm/override), as for every service.

What is here:
    drop_lesion, restore_lesion, add_lesion_from_seed, merge_lesions, split_lesion,
    set_target_selection, set_lesion_flags, set_unequivocal_progression, set_clinical_context,
    confirm_with_signature, override_with_signature, verify_signature,
    load_series_image, load_observation_mask, observation_mask_source, read_stored_image, grow_region
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from contextvars import ContextVar
from typing import Any, ParamSpec, TypeVar

import numpy as np
import SimpleITK as sitk
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models.fields.files import FieldFile

from rano.errors import RanoError
from rano.measure import LesionMeasurement, measure_lesions
from rano.settings import ResponseSettings
from trials import services
from trials.choices import (
    ClinicalStatus,
    CorticosteroidStatus,
    LesionRole,
    ObservationSource,
    ResponseChoices,
)
from trials.exceptions import InvalidInputError, InvalidStateError
from trials.models import (
    Assessment,
    ImagingSeries,
    Lesion,
    LesionObservation,
    Patient,
    Timepoint,
)

P = ParamSpec("P")
R = TypeVar("R")

#: Folder (in the default storage) of reader-drawn lesion masks.
READER_MASK_DIR = "masks/reader"

#: Reader flags a radiologist may set on a lesion (rano-bm.md section 2).
LESION_FLAGS: tuple[str, ...] = (
    "is_cystic",
    "is_dural",
    "is_bony",
    "is_leptomeningeal",
    "previously_irradiated",
    "progressing_since_treatment",
    "too_small_to_measure",
)

#: Region growing: ConfidenceConnected keeps voxels within ``multiplier`` standard deviations of the
#: mean of the current region, re-estimated ``iterations`` times from a neighbourhood of ``radius``.
DEFAULT_GROW_MULTIPLIER = 2.5
DEFAULT_GROW_ITERATIONS = 4
DEFAULT_GROW_RADIUS_VOXELS = 1
#: A grown region larger than this has leaked into normal tissue (a 50 mm sphere is ~65,000 mm3).
DEFAULT_MAX_GROWN_VOLUME_MM3 = 65_000.0


class SignatureError(InvalidInputError):
    """The password re-entered for an electronic signature is wrong (nothing was signed)."""


class RegionGrowingError(InvalidInputError):
    """Region growing from a seed gave no usable lesion (outside the image, leaked, or too small)."""


class MissingImageError(InvalidStateError):
    """The visit has no stored volume or mask to work on (the pipeline has not produced it)."""


# ------------------------------------------------------------------------------------------ imaging


def read_stored_image(name: str) -> sitk.Image:
    """Read a NIfTI (or any SimpleITK format) from the default storage, with its geometry.

    Remote storages (no local path) are copied to a temporary file first.

    Raises:
        MissingImageError: nothing is stored under ``name``.
    """
    if not name or not default_storage.exists(name):
        raise MissingImageError(f"No image is stored under {name!r}.")
    try:
        return sitk.ReadImage(default_storage.path(name))
    except NotImplementedError:
        suffix = ".nii.gz" if name.endswith(".nii.gz") else os.path.splitext(name)[1]
        handle, path = tempfile.mkstemp(suffix=suffix)
        try:
            with os.fdopen(handle, "wb") as out, default_storage.open(name, "rb") as src:
                out.write(src.read())
            return sitk.ReadImage(path)
        finally:
            os.unlink(path)


def read_image_file(file: FieldFile) -> sitk.Image:
    """Read a stored file field (a series volume, a run's mask).

    Raises:
        MissingImageError: no file is stored.
    """
    if not file:
        raise MissingImageError("No image file is stored for this object.")
    return read_stored_image(file.name)


def load_series_image(series: ImagingSeries) -> sitk.Image:
    """The stored volume of a series as a float32 SimpleITK image.

    Raises:
        MissingImageError: the series has no stored volume.
    """
    if not series.volume_file:
        raise MissingImageError(f"Series {series.series_instance_uid} has no stored volume yet.")
    return sitk.Cast(read_image_file(series.volume_file), sitk.sitkFloat32)


def _same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-4)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-3)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-4)
    )


def reader_mask_name(lesion_id: int, timepoint_id: int) -> str:
    """Storage name of the reader-drawn mask of one lesion at one visit."""
    return f"{READER_MASK_DIR}/tp{timepoint_id}_lesion{lesion_id}.nii.gz"


def observation_mask_source(observation: LesionObservation) -> tuple[str, int] | None:
    """Where an observation's contour is stored: ``(storage name, label value)``, or None.

    The AI's contour is its run's label image at ``component_label``; a reader-drawn one (no run) is
    the binary mask ``reader_mask_name(...)`` with label 1.
    """
    run = observation.segmentation_run
    if run is not None and run.mask_file and observation.component_label is not None:
        return run.mask_file.name, int(observation.component_label)
    name = reader_mask_name(observation.lesion_id, observation.timepoint_id)
    if run is None and default_storage.exists(name):
        return name, 1
    return None


def load_observation_mask(observation: LesionObservation) -> sitk.Image:
    """Binary (UInt8) mask of one lesion at one visit.

    Raises:
        MissingImageError: the observation has no stored contour.
    """
    source = observation_mask_source(observation)
    if source is None:
        raise MissingImageError(
            f"{observation.lesion.label} has no stored contour at {observation.timepoint.visit_label}."
        )
    name, value = source
    labels = read_stored_image(name)
    return sitk.Cast(sitk.BinaryThreshold(labels, value, value, 1, 0), sitk.sitkUInt8)


def grow_region(
    image: sitk.Image,
    seed_index: Sequence[int],
    *,
    multiplier: float = DEFAULT_GROW_MULTIPLIER,
    iterations: int = DEFAULT_GROW_ITERATIONS,
    radius_voxels: int = DEFAULT_GROW_RADIUS_VOXELS,
    max_volume_mm3: float = DEFAULT_MAX_GROWN_VOLUME_MM3,
) -> sitk.Image:
    """Grow a lesion from a seed voxel on the enhancing signal (SimpleITK ConfidenceConnected).

    Only the 26-connected component that contains the seed is kept, and holes are filled slice by slice
    (a necrotic core is part of the lesion's extent for its diameters).

    Args:
        image: the visit's volume (any pixel type).
        seed_index: voxel index (i, j, k) of the seed, SimpleITK order.
        multiplier: confidence interval half-width in standard deviations.
        iterations: re-estimations of the region statistics.
        radius_voxels: neighbourhood radius for the initial statistics.
        max_volume_mm3: larger regions are refused as leaks into normal tissue.

    Returns:
        A UInt8 mask (1 = lesion) on the image grid.

    Raises:
        RegionGrowingError: seed outside the image, on background (zero signal), region leaked or empty.
    """
    size = image.GetSize()
    seed = tuple(int(v) for v in seed_index)
    if len(seed) != 3 or any(not 0 <= s < n for s, n in zip(seed, size, strict=False)):
        raise RegionGrowingError(f"Seed {list(seed)} lies outside the image of size {list(size)}.")
    as_float = sitk.Cast(image, sitk.sitkFloat32)
    if as_float[seed] <= 0:
        raise RegionGrowingError(
            "The seed lies on background (no signal): click inside the enhancing lesion."
        )
    grown = sitk.ConfidenceConnected(
        as_float,
        seedList=[seed],
        numberOfIterations=iterations,
        multiplier=multiplier,
        initialNeighborhoodRadius=radius_voxels,
        replaceValue=1,
    )
    components = sitk.ConnectedComponent(grown, True)
    seed_label = components[seed]
    if seed_label == 0:
        raise RegionGrowingError("Region growing kept nothing around the seed.")
    mask = sitk.Cast(sitk.BinaryThreshold(components, seed_label, seed_label, 1, 0), sitk.sitkUInt8)
    mask = sitk.BinaryFillhole(mask, fullyConnected=False, foregroundValue=1)
    spacing = mask.GetSpacing()
    volume_mm3 = float(sitk.GetArrayViewFromImage(mask).sum()) * spacing[0] * spacing[1] * spacing[2]
    if volume_mm3 > max_volume_mm3:
        raise RegionGrowingError(
            f"The grown region ({volume_mm3:.0f} mm3) leaked beyond {max_volume_mm3:.0f} mm3: "
            "place the seed in the brightest part of the lesion."
        )
    return mask


def _measure_one(
    mask: sitk.Image, image: sitk.Image | None, trial_settings: ResponseSettings
) -> LesionMeasurement:
    """Measure a binary mask as one lesion with rano.measure (the same code as the pipeline)."""
    labels = sitk.Cast(mask > 0, sitk.sitkUInt8)
    try:
        measured = measure_lesions(labels, image, settings=trial_settings, relabel=False)
    except RanoError as exc:
        raise InvalidInputError(f"The lesion could not be measured: {exc}") from exc
    if not measured:
        raise RegionGrowingError("The lesion mask is empty.")
    measurement = measured[0]
    if measurement.volume_mm3 < trial_settings.min_lesion_volume_mm3:
        raise RegionGrowingError(
            f"The lesion ({measurement.volume_mm3:.1f} mm3) is below the "
            f"{trial_settings.min_lesion_volume_mm3:.1f} mm3 minimum lesion volume."
        )
    return measurement


def _response_settings(patient: Patient) -> ResponseSettings:
    trial = patient.trial
    return ResponseSettings(
        max_targets=trial.max_targets,
        measurable_min_ld_mm=trial.measurable_min_ld_mm,
        min_lesion_volume_mm3=trial.min_lesion_volume_mm3,
        too_small_mm=trial.too_small_mm,
        new_lesion_min_ld_mm=trial.new_lesion_min_ld_mm,
    )


def observation_fields(measurement: LesionMeasurement) -> dict[str, Any]:
    """LesionObservation fields from a rano.measure result (physical mm)."""
    cx, cy, cz = measurement.centroid_mm
    return {
        "present": True,
        "longest_diameter_mm": measurement.longest_diameter_mm,
        "perpendicular_diameter_mm": measurement.perpendicular_diameter_mm,
        "volume_mm3": measurement.volume_mm3,
        "max_3d_diameter_mm": measurement.max_3d_diameter_mm,
        "centroid_x_mm": cx,
        "centroid_y_mm": cy,
        "centroid_z_mm": cz,
        "slice_count": measurement.slice_count,
        "ld_slice_index": measurement.ld_slice_index,
        "caliper_points_mm": [list(p) for p in measurement.ld_endpoints_mm]
        if measurement.ld_endpoints_mm
        else None,
        "perpendicular_points_mm": (
            [list(p) for p in measurement.perpendicular_endpoints_mm]
            if measurement.perpendicular_endpoints_mm
            else None
        ),
        "intensity_mean": measurement.intensity_mean,
        "intensity_sd": measurement.intensity_sd,
        "intensity_min": measurement.intensity_min,
        "intensity_max": measurement.intensity_max,
        "measurable": measurement.measurable,
        "measurable_reason": measurement.not_measurable_reason or "",
    }


def _primary_series(timepoint: Timepoint) -> ImagingSeries:
    series = timepoint.series.exclude(volume_file="").order_by("id").first()
    if series is None:
        raise MissingImageError(f"Visit {timepoint.visit_label} has no stored imaging series.")
    return series


_JOURNAL: ContextVar[_MaskJournal | None] = ContextVar("review_mask_journal", default=None)


def _undo_files_on_error(func: Callable[P, R]) -> Callable[P, R]:
    """Run a review verb with a mask journal: its file writes are undone if it raises."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with _MaskJournal() as journal:
            token = _JOURNAL.set(journal)
            try:
                return func(*args, **kwargs)
            finally:
                _JOURNAL.reset(token)

    return wrapper


def _journal() -> _MaskJournal:
    journal = _JOURNAL.get()
    if journal is None:  # a programming error: every verb that writes masks is decorated
        raise RuntimeError("reader masks are written only inside a review verb")
    return journal


class _MaskJournal:
    """Reader-mask file writes of one review verb, undone if the verb fails.

    Files are not part of the database transaction: when a later step raises (e.g. the re-assessment),
    the transaction rolls back and the journal puts the previous files back, so the stored contours
    always match the committed observations.
    """

    def __init__(self) -> None:
        self._previous: list[tuple[str, bytes | None]] = []

    def __enter__(self) -> _MaskJournal:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            return
        for name, data in reversed(self._previous):
            if default_storage.exists(name):
                default_storage.delete(name)
            if data is not None:
                default_storage.save(name, ContentFile(data))

    def _remember(self, name: str) -> None:
        data = None
        if default_storage.exists(name):
            with default_storage.open(name, "rb") as src:
                data = src.read()
        self._previous.append((name, data))

    def delete(self, name: str) -> None:
        """Delete a stored file (if any), remembering it."""
        if default_storage.exists(name):
            self._remember(name)
            default_storage.delete(name)

    def store(self, lesion: Lesion, timepoint: Timepoint, mask: sitk.Image, reference: sitk.Image) -> None:
        """Store (or replace) the reader-drawn binary mask of a lesion at a visit.

        The file name is fixed per lesion and visit, so a later correction replaces the earlier
        contour; the observation row's change is what the audit trail records.

        Raises:
            InvalidInputError: the mask is not on the series grid.
        """
        if not _same_grid(mask, reference):
            raise InvalidInputError("A lesion mask lies on another grid than the series volume.")
        binary = sitk.Cast(mask > 0, sitk.sitkUInt8)
        handle, path = tempfile.mkstemp(suffix=".nii.gz")
        os.close(handle)
        try:
            sitk.WriteImage(binary, path, useCompression=True)
            with open(path, "rb") as src:
                data = src.read()
        finally:
            os.unlink(path)
        name = reader_mask_name(lesion.pk, timepoint.pk)
        self._remember(name)
        if default_storage.exists(name):
            default_storage.delete(name)
        stored = default_storage.save(name, ContentFile(data))
        if stored != name:  # a concurrent writer took the name: keep the naming contract explicit
            default_storage.delete(stored)
            raise InvalidStateError(
                f"The contour of {lesion.label} is being saved by someone else; try again."
            )


# ------------------------------------------------------------------------------------ reassessment


def _reassess(
    patient: Patient, from_timepoint: Timepoint, *, actor: Any, reason: str, correlation_id: str
) -> None:
    """Recompute the patient's assessments from ``from_timepoint`` on (the pipeline's service)."""
    from trials.pipeline import reassess_patient  # the pipeline imports services; import late

    reassess_patient(
        patient, from_timepoint=from_timepoint, actor=actor, reason=reason, correlation_id=correlation_id
    )


def _earliest_visit(lesion: Lesion, fallback: Timepoint) -> Timepoint:
    first = Timepoint.objects.filter(observations__lesion=lesion).order_by("scan_date", "visit_label").first()
    if first is None or (fallback.scan_date < first.scan_date):
        return fallback
    return first


def _check_visit(lesion: Lesion, timepoint: Timepoint) -> None:
    if lesion.patient_id != timepoint.patient_id:
        raise InvalidInputError(
            f"{lesion.label} and visit {timepoint.visit_label} belong to different patients.",
            {"timepoint": ["Must be a visit of the lesion's patient."]},
        )


def _review_event(
    action: str,
    timepoint: Timepoint,
    *,
    actor: Any,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    reason: str,
    correlation_id: str,
) -> None:
    services.record_audit_event(
        actor=actor,
        action=f"review.{action}",
        obj=timepoint,
        before=before,
        after=after,
        reason=reason,
        correlation_id=correlation_id,
    )


def _cid(correlation_id: str) -> str:
    return correlation_id or services.new_correlation_id()


# ------------------------------------------------------------------ record edits (API and admin)
#
# The REST API and the admin edit visits, lesions and observations field by field. Any change but a
# note can change a response (steroids and clinical status, section 6; flags and roles, section 2;
# measurements and non-target progression, sections 3-4), so these wrappers re-assess the patient
# after the service has stored and audited the change, in the same transaction.


def _changed(obj: Any, before: dict[str, Any]) -> bool:
    return any(name != "notes" and getattr(obj, name) != value for name, value in before.items())


@transaction.atomic
def edit_timepoint(
    timepoint: Timepoint, *, actor: Any, reason: str = "", correlation_id: str = "", **changes: Any
) -> Timepoint:
    """:func:`trials.services.update_timepoint`, then re-assessment when the change can alter a response."""
    cid = _cid(correlation_id)
    before = {name: getattr(timepoint, name) for name in changes}
    services.update_timepoint(timepoint, actor=actor, reason=reason, correlation_id=cid, **changes)
    if _changed(timepoint, before):
        _reassess(timepoint.patient, timepoint, actor=actor, reason=reason, correlation_id=cid)
    return timepoint


@transaction.atomic
def edit_lesion(
    lesion: Lesion, *, actor: Any, reason: str = "", correlation_id: str = "", **changes: Any
) -> Lesion:
    """:func:`trials.services.update_lesion`, then re-assessment when the change can alter a response."""
    cid = _cid(correlation_id)
    before = {name: getattr(lesion, name) for name in changes}
    services.update_lesion(lesion, actor=actor, reason=reason, correlation_id=cid, **changes)
    first = Timepoint.objects.filter(observations__lesion=lesion).order_by("scan_date").first()
    if _changed(lesion, before) and first is not None:
        _reassess(lesion.patient, first, actor=actor, reason=reason, correlation_id=cid)
    return lesion


def _refuse_ai_source(values: dict[str, Any]) -> None:
    """A reader's measurement cannot be labelled as the AI's (traceability of every number)."""
    if values.get("source") == ObservationSource.AI:
        raise InvalidInputError(
            "A reader's measurement cannot be recorded as the AI's.",
            {"source": ["Only the pipeline records AI observations; yours are manual or edited."]},
        )


@transaction.atomic
def edit_observation(
    observation: LesionObservation, *, actor: Any, reason: str = "", correlation_id: str = "", **changes: Any
) -> LesionObservation:
    """:func:`trials.services.update_observation`, then re-assessment when the change can alter a
    response. A reader's measurement is never labelled as the AI's: an AI row becomes ``edited``."""
    _refuse_ai_source(changes)
    # Derived, not the client's: the service turns a person's edit of an AI row into "edited" and a
    # reader's row keeps its source.
    changes.pop("source", None)
    cid = _cid(correlation_id)
    before = {name: getattr(observation, name) for name in changes}
    services.update_observation(observation, actor=actor, reason=reason, correlation_id=cid, **changes)
    if _changed(observation, before):
        timepoint = observation.timepoint
        _reassess(timepoint.patient, timepoint, actor=actor, reason=reason, correlation_id=cid)
    return observation


@transaction.atomic
def add_observation(
    lesion: Lesion,
    timepoint: Timepoint,
    *,
    actor: Any,
    reason: str = "",
    correlation_id: str = "",
    **fields: Any,
) -> LesionObservation:
    """:func:`trials.services.record_observation`, then re-assessment of the patient. A reader's
    observation is ``manual``."""
    _refuse_ai_source(fields)
    fields["source"] = ObservationSource.MANUAL
    cid = _cid(correlation_id)
    observation = services.record_observation(
        lesion, timepoint, actor=actor, reason=reason, correlation_id=cid, **fields
    )
    _reassess(timepoint.patient, timepoint, actor=actor, reason=reason, correlation_id=cid)
    return observation


# ---------------------------------------------------------------------------------- lesion verbs


@transaction.atomic
def drop_lesion(
    lesion: Lesion, *, timepoint: Timepoint, actor: Any, reason: str = "", correlation_id: str = ""
) -> Lesion:
    """Drop a false-positive lesion: it no longer counts at any visit (its rows stay, flagged).

    Args:
        lesion: the lesion the reader rejects.
        timepoint: the visit under review (where the audit entry is shown).

    Raises:
        InvalidStateError: the lesion is already dropped.
    """
    _check_visit(lesion, timepoint)
    if lesion.is_false_positive:
        raise InvalidStateError(f"{lesion.label} is already dropped as a false positive.")
    return _set_false_positive(lesion, True, "drop_lesion", timepoint, actor, reason, correlation_id)


@transaction.atomic
def restore_lesion(
    lesion: Lesion, *, timepoint: Timepoint, actor: Any, reason: str = "", correlation_id: str = ""
) -> Lesion:
    """Undo ``drop_lesion``: the lesion counts again.

    Raises:
        InvalidStateError: the lesion is not dropped.
    """
    _check_visit(lesion, timepoint)
    if not lesion.is_false_positive:
        raise InvalidStateError(f"{lesion.label} is not dropped.")
    return _set_false_positive(lesion, False, "restore_lesion", timepoint, actor, reason, correlation_id)


def _set_false_positive(
    lesion: Lesion,
    value: bool,
    action: str,
    timepoint: Timepoint,
    actor: Any,
    reason: str,
    correlation_id: str,
) -> Lesion:
    """Shared body of drop_lesion / restore_lesion (checks done): flag, audit on the visit, re-assess."""
    cid = _cid(correlation_id)
    services.update_lesion(lesion, is_false_positive=value, actor=actor, reason=reason, correlation_id=cid)
    _review_event(
        action,
        timepoint,
        actor=actor,
        before={"lesion": lesion.label, "is_false_positive": not value},
        after={"lesion": lesion.label, "is_false_positive": value},
        reason=reason,
        correlation_id=cid,
    )
    _reassess(
        lesion.patient, _earliest_visit(lesion, timepoint), actor=actor, reason=reason, correlation_id=cid
    )
    return lesion


@_undo_files_on_error
@transaction.atomic
def add_lesion_from_seed(
    timepoint: Timepoint,
    *,
    seed_index: Sequence[int],
    actor: Any,
    reason: str = "",
    correlation_id: str = "",
    multiplier: float = DEFAULT_GROW_MULTIPLIER,
    iterations: int = DEFAULT_GROW_ITERATIONS,
) -> LesionObservation:
    """Add a lesion the AI missed: grow it from a seed voxel, measure it like the rest, record it.

    A region matching a lesion seen at another visit (and not shown at this one) is that lesion, e.g. a
    residual target the AI missed; otherwise it is a new lesion with the next stable label, first seen
    at this visit. The observation has source ``manual``; the contour is painted into the visit's
    reader mask.

    Args:
        timepoint: the visit the reader is reading.
        seed_index: voxel index (i, j, k) of the click in the visit's volume (SimpleITK order).
        multiplier, iterations: region-growing parameters (see ``grow_region``).

    Returns:
        The new lesion's observation.

    Raises:
        MissingImageError: the visit has no stored volume.
        RegionGrowingError: the seed gives no usable region, or lies inside an existing lesion.
    """
    cid = _cid(correlation_id)
    series = _primary_series(timepoint)
    image = load_series_image(series)
    mask = grow_region(image, seed_index, multiplier=multiplier, iterations=iterations)
    seed = tuple(int(v) for v in seed_index)
    for existing in timepoint.observations.select_related("lesion", "segmentation_run").filter(
        present=True, lesion__is_false_positive=False
    ):
        try:
            existing_mask = load_observation_mask(existing)
        except MissingImageError:
            continue
        if existing_mask.GetSize() == image.GetSize() and existing_mask[seed]:
            raise RegionGrowingError(f"The seed lies inside {existing.lesion.label}: it is already a lesion.")
    measurement = _measure_one(mask, image, _response_settings(timepoint.patient))
    from trials.pipeline import earlier_lesion_for  # the pipeline imports services; import late

    # A lesion seen at another visit keeps its label (rano-bm.md sections 3 and 5): only a region that
    # matches no known lesion is a new one.
    lesion = earlier_lesion_for(timepoint, mask, image)
    known = lesion is not None
    if lesion is None:
        lesion = services.create_lesion(
            timepoint.patient,
            first_seen_timepoint=timepoint,
            role=LesionRole.NON_TARGET,
            actor=actor,
            reason=reason,
            correlation_id=cid,
        )
    _journal().store(lesion, timepoint, mask, image)
    existing = LesionObservation.objects.filter(lesion=lesion, timepoint=timepoint).first()
    if existing is not None:  # the AI's "absent" at this visit, corrected
        observation = services.update_observation(
            existing,
            source=ObservationSource.MANUAL,
            actor=actor,
            reason=reason,
            correlation_id=cid,
            **observation_fields(measurement),
        )
    else:
        observation = services.record_observation(
            lesion,
            timepoint,
            source=ObservationSource.MANUAL,
            actor=actor,
            reason=reason,
            correlation_id=cid,
            **observation_fields(measurement),
        )
    _review_event(
        "add_lesion",
        timepoint,
        actor=actor,
        before=None,
        after={
            "lesion": lesion.label,
            "known_lesion": known,
            "seed_index": list(seed),
            "longest_diameter_mm": round(measurement.longest_diameter_mm, 2),
            "volume_mm3": round(measurement.volume_mm3, 1),
        },
        reason=reason,
        correlation_id=cid,
    )
    _reassess(timepoint.patient, timepoint, actor=actor, reason=reason, correlation_id=cid)
    return observation


def _present_observation(lesion: Lesion, timepoint: Timepoint) -> LesionObservation:
    observation = (
        LesionObservation.objects.select_related("lesion", "segmentation_run", "timepoint")
        .filter(lesion=lesion, timepoint=timepoint)
        .first()
    )
    if observation is None or not observation.present:
        raise InvalidInputError(
            f"{lesion.label} is not present at {timepoint.visit_label}.",
            {"lesion": ["Must be present at this visit."]},
        )
    return observation


@_undo_files_on_error
@transaction.atomic
def merge_lesions(
    keep: Lesion,
    absorb: Lesion,
    *,
    timepoint: Timepoint,
    actor: Any,
    reason: str = "",
    correlation_id: str = "",
) -> LesionObservation:
    """Merge two lesions at a visit into one mass, measured once and kept under ``keep``'s label.

    ``absorb`` counts 0 mm at this visit (rano-bm.md 3: "the merged mass is measured once ... the others
    count 0 mm"); its observation stays, marked absent with the reason.

    Raises:
        InvalidInputError: the same lesion twice, lesions of another patient, or one not present.
        MissingImageError: a lesion has no stored contour at this visit.
    """
    cid = _cid(correlation_id)
    if keep.pk == absorb.pk:
        raise InvalidInputError(
            "A lesion cannot be merged with itself.", {"absorb": ["Choose another lesion."]}
        )
    _check_visit(keep, timepoint)
    _check_visit(absorb, timepoint)
    keep_obs = _present_observation(keep, timepoint)
    absorb_obs = _present_observation(absorb, timepoint)
    series = _primary_series(timepoint)
    image = load_series_image(series)
    union = sitk.Or(load_observation_mask(keep_obs), load_observation_mask(absorb_obs))
    measurement = _measure_one(union, image, _response_settings(timepoint.patient))
    _journal().store(keep, timepoint, union, image)
    _journal().delete(reader_mask_name(absorb.pk, timepoint.pk))
    before = {
        keep.label: keep_obs.longest_diameter_mm,
        absorb.label: absorb_obs.longest_diameter_mm,
    }
    services.update_observation(
        keep_obs,
        segmentation_run=None,
        component_label=None,
        fragment_count=1,
        actor=actor,
        reason=reason,
        correlation_id=cid,
        **observation_fields(measurement),
    )
    services.update_observation(
        absorb_obs,
        present=False,
        longest_diameter_mm=0.0,
        perpendicular_diameter_mm=0.0,
        volume_mm3=0.0,
        caliper_points_mm=None,
        perpendicular_points_mm=None,
        segmentation_run=None,
        component_label=None,
        merged_into=keep,
        measurable_reason=f"merged into {keep.label}",
        actor=actor,
        reason=reason,
        correlation_id=cid,
    )
    _review_event(
        "merge_lesions",
        timepoint,
        actor=actor,
        before={"longest_diameter_mm": before},
        after={
            "kept": keep.label,
            "absorbed": absorb.label,
            "longest_diameter_mm": round(measurement.longest_diameter_mm, 2),
        },
        reason=reason,
        correlation_id=cid,
    )
    _reassess(timepoint.patient, timepoint, actor=actor, reason=reason, correlation_id=cid)
    keep_obs.refresh_from_db()
    return keep_obs


@_undo_files_on_error
@transaction.atomic
def split_lesion(
    lesion: Lesion,
    *,
    timepoint: Timepoint,
    seed_keep: Sequence[int],
    seed_new: Sequence[int],
    actor: Any,
    reason: str = "",
    correlation_id: str = "",
) -> tuple[LesionObservation, LesionObservation]:
    """Split a lesion the AI joined: each voxel goes to the nearer of two reader seed points (in mm).

    The part around ``seed_keep`` stays ``lesion``; the part around ``seed_new`` becomes a new lesion
    (next label, first seen at this visit). Both are measured with rano.measure.

    Args:
        seed_keep, seed_new: voxel indices (i, j, k) inside the lesion.

    Returns:
        ``(kept observation, new observation)``.

    Raises:
        InvalidInputError: a seed outside the lesion, both seeds equal, or a part below the minimum volume.
    """
    cid = _cid(correlation_id)
    _check_visit(lesion, timepoint)
    observation = _present_observation(lesion, timepoint)
    series = _primary_series(timepoint)
    image = load_series_image(series)
    mask = load_observation_mask(observation)
    if not _same_grid(mask, image):
        raise InvalidInputError("The lesion mask lies on another grid than the series volume.")
    seeds = [tuple(int(v) for v in s) for s in (seed_keep, seed_new)]
    size = mask.GetSize()
    for seed in seeds:
        if len(seed) != 3 or any(not 0 <= s < n for s, n in zip(seed, size, strict=False)) or not mask[seed]:
            raise InvalidInputError(
                f"Seed {list(seed)} is not inside {lesion.label}.",
                {"seed": ["Click inside the lesion contour."]},
            )
    if seeds[0] == seeds[1]:
        raise InvalidInputError("The two seeds must differ.", {"seed": ["Choose two different points."]})
    array = sitk.GetArrayFromImage(mask) > 0
    zyx = np.argwhere(array)
    spacing_xyz = np.array(mask.GetSpacing())
    direction = np.array(mask.GetDirection()).reshape(3, 3)

    # Distances in physical mm (spacing is never isotropic by assumption): index (i, j, k) offsets are
    # scaled by the spacing and rotated by the direction cosines; the origin cancels out.
    def _phys(points_xyz: np.ndarray) -> np.ndarray:
        return (direction @ (points_xyz * spacing_xyz).T).T

    coords = _phys(zyx[:, ::-1].astype(float))
    seed_coords = _phys(np.array(seeds, dtype=float))
    d_keep = np.linalg.norm(coords - seed_coords[0], axis=1)
    d_new = np.linalg.norm(coords - seed_coords[1], axis=1)
    parts = []
    for selector in (d_keep <= d_new, d_new < d_keep):
        part_array = np.zeros(array.shape, dtype=np.uint8)
        chosen = zyx[selector]
        part_array[chosen[:, 0], chosen[:, 1], chosen[:, 2]] = 1
        part = sitk.GetImageFromArray(part_array)
        part.CopyInformation(mask)
        parts.append(part)
    settings = _response_settings(timepoint.patient)
    keep_measure = _measure_one(parts[0], image, settings)
    new_measure = _measure_one(parts[1], image, settings)
    new_lesion = services.create_lesion(
        timepoint.patient,
        first_seen_timepoint=timepoint,
        role=LesionRole.NON_TARGET,
        actor=actor,
        reason=reason,
        correlation_id=cid,
    )
    _journal().store(lesion, timepoint, parts[0], image)
    _journal().store(new_lesion, timepoint, parts[1], image)
    before_ld = observation.longest_diameter_mm
    services.update_observation(
        observation,
        segmentation_run=None,
        component_label=None,
        fragment_count=1,
        actor=actor,
        reason=reason,
        correlation_id=cid,
        **observation_fields(keep_measure),
    )
    new_observation = services.record_observation(
        new_lesion,
        timepoint,
        source=ObservationSource.MANUAL,
        actor=actor,
        reason=reason,
        correlation_id=cid,
        **observation_fields(new_measure),
    )
    _review_event(
        "split_lesion",
        timepoint,
        actor=actor,
        before={"lesion": lesion.label, "longest_diameter_mm": before_ld},
        after={
            lesion.label: round(keep_measure.longest_diameter_mm, 2),
            new_lesion.label: round(new_measure.longest_diameter_mm, 2),
        },
        reason=reason,
        correlation_id=cid,
    )
    _reassess(timepoint.patient, timepoint, actor=actor, reason=reason, correlation_id=cid)
    observation.refresh_from_db()
    return observation, new_observation


@transaction.atomic
def set_target_selection(
    patient: Patient,
    targets: Iterable[Lesion],
    *,
    actor: Any,
    reason: str = "",
    correlation_id: str = "",
) -> list[Lesion]:
    """Replace the engine's target selection with the reader's (rano-bm.md section 2).

    Every listed lesion becomes a target and every other lesion of the patient a non-target; the
    choice is marked as the reader's, so the engine keeps it.

    Raises:
        InvalidInputError: more targets than the trial allows, a lesion of another patient, a dropped
            lesion, or one not measurable at baseline (an irradiated lesion also needs "progressing").
        MissingImageError: the patient has no baseline visit.
    """
    cid = _cid(correlation_id)
    baseline = patient.timepoints.filter(is_baseline=True).first()
    if baseline is None:
        raise MissingImageError(
            f"{patient.subject_id} has no baseline visit: targets are chosen at baseline."
        )
    chosen = list({lesion.pk: lesion for lesion in targets}.values())
    max_targets = patient.trial.max_targets
    if len(chosen) > max_targets:
        raise InvalidInputError(
            f"{len(chosen)} targets chosen; this trial allows at most {max_targets}.",
            {"targets": [f"At most {max_targets}."]},
        )
    baseline_obs = {
        o.lesion_id: o
        for o in LesionObservation.objects.filter(timepoint=baseline, lesion__in=[c.pk for c in chosen])
    }
    for lesion in chosen:
        if lesion.patient_id != patient.pk:
            raise InvalidInputError(
                f"{lesion.label} belongs to another patient.", {"targets": ["Same patient only."]}
            )
        if lesion.is_false_positive:
            raise InvalidInputError(
                f"{lesion.label} was dropped as a false positive.", {"targets": ["Not a lesion."]}
            )
        obs = baseline_obs.get(lesion.pk)
        if obs is None or not obs.present or not obs.measurable:
            why = (
                obs.measurable_reason
                if obs is not None and obs.measurable_reason
                else "not measurable at baseline"
            )
            raise InvalidInputError(
                f"{lesion.label} cannot be a target: {why}.", {"targets": ["Measurable only."]}
            )
        blocking = [
            f for f in ("is_cystic", "is_dural", "is_bony", "is_leptomeningeal") if getattr(lesion, f)
        ]
        if blocking:
            raise InvalidInputError(
                f"{lesion.label} is flagged {', '.join(b.removeprefix('is_') for b in blocking)}: not measurable.",
                {"targets": ["Measurable only."]},
            )
        if lesion.previously_irradiated and not lesion.progressing_since_treatment:
            raise InvalidInputError(
                f"{lesion.label} was irradiated and is not marked as progressing since treatment.",
                {"targets": ["Mark it as progressing first."]},
            )
    chosen_ids = {lesion.pk for lesion in chosen}
    before: dict[str, str] = {}
    after: dict[str, str] = {}
    for lesion in Lesion.objects.filter(patient=patient).order_by("id"):
        role = LesionRole.TARGET if lesion.pk in chosen_ids else LesionRole.NON_TARGET
        before[lesion.label] = lesion.role
        after[lesion.label] = role
        # update_lesion marks a changed role as the reader's; the pipeline then keeps every current role
        # as the selection (an unchanged selection needs no mark: the engine already chose it).
        if lesion.role != role:
            services.update_lesion(lesion, role=role, actor=actor, reason=reason, correlation_id=cid)
    _review_event(
        "set_targets", baseline, actor=actor, before=before, after=after, reason=reason, correlation_id=cid
    )
    _reassess(patient, baseline, actor=actor, reason=reason, correlation_id=cid)
    return list(Lesion.objects.filter(patient=patient, role=LesionRole.TARGET))


@transaction.atomic
def set_lesion_flags(
    lesion: Lesion,
    *,
    timepoint: Timepoint,
    flags: dict[str, bool],
    actor: Any,
    reason: str = "",
    correlation_id: str = "",
) -> Lesion:
    """Set reader flags of a lesion: cystic, dural, bony, leptomeningeal, previously irradiated,
    progressing since treatment, too small to measure (rano-bm.md sections 2-3).

    Raises:
        InvalidInputError: an unknown flag or a non-boolean value.
    """
    cid = _cid(correlation_id)
    _check_visit(lesion, timepoint)
    unknown = sorted(set(flags) - set(LESION_FLAGS))
    if unknown:
        raise InvalidInputError(
            f"Unknown lesion flag(s): {', '.join(unknown)}; known: {', '.join(LESION_FLAGS)}.",
            {name: ["Unknown flag."] for name in unknown},
        )
    if any(not isinstance(value, bool) for value in flags.values()):
        raise InvalidInputError("Lesion flags must be true or false.")
    before = {name: getattr(lesion, name) for name in flags}
    services.update_lesion(lesion, actor=actor, reason=reason, correlation_id=cid, **flags)
    changed = {name: value for name, value in flags.items() if before[name] != value}
    if changed:
        _review_event(
            "set_flags",
            timepoint,
            actor=actor,
            before={"lesion": lesion.label, **{k: before[k] for k in changed}},
            after={"lesion": lesion.label, **changed},
            reason=reason,
            correlation_id=cid,
        )
        _reassess(
            lesion.patient, _earliest_visit(lesion, timepoint), actor=actor, reason=reason, correlation_id=cid
        )
    return lesion


@transaction.atomic
def set_unequivocal_progression(
    observation: LesionObservation,
    *,
    value: bool,
    actor: Any,
    reason: str = "",
    correlation_id: str = "",
) -> LesionObservation:
    """The reader's judgement of unequivocal progression of a non-target lesion (rano-bm.md 4).

    Raises:
        InvalidInputError: the lesion is a target (targets progress by their measurements).
    """
    cid = _cid(correlation_id)
    lesion = observation.lesion
    if lesion.role != LesionRole.NON_TARGET:
        raise InvalidInputError(
            f"{lesion.label} is a target lesion; unequivocal progression is judged on non-targets only.",
            {"unequivocal_progression": ["Non-target lesions only."]},
        )
    before = observation.unequivocal_progression
    services.update_observation(
        observation, unequivocal_progression=bool(value), actor=actor, reason=reason, correlation_id=cid
    )
    if before != bool(value):
        _review_event(
            "set_unequivocal_progression",
            observation.timepoint,
            actor=actor,
            before={"lesion": lesion.label, "unequivocal_progression": before},
            after={"lesion": lesion.label, "unequivocal_progression": bool(value)},
            reason=reason,
            correlation_id=cid,
        )
        _reassess(lesion.patient, observation.timepoint, actor=actor, reason=reason, correlation_id=cid)
    return observation


@transaction.atomic
def set_clinical_context(
    timepoint: Timepoint,
    *,
    corticosteroid_status: str | None = None,
    clinical_status: str | None = None,
    actor: Any,
    reason: str = "",
    correlation_id: str = "",
) -> Timepoint:
    """Set the visit's corticosteroid use and clinical status (rano-bm.md section 6).

    Raises:
        InvalidInputError: an unknown status value.
    """
    cid = _cid(correlation_id)
    changes: dict[str, str] = {}
    if corticosteroid_status is not None:
        if corticosteroid_status not in CorticosteroidStatus.values:
            raise InvalidInputError(
                f"Unknown corticosteroid status {corticosteroid_status!r}.",
                {"corticosteroid_status": [f"One of {', '.join(CorticosteroidStatus.values)}."]},
            )
        changes["corticosteroid_status"] = corticosteroid_status
    if clinical_status is not None:
        if clinical_status not in ClinicalStatus.values:
            raise InvalidInputError(
                f"Unknown clinical status {clinical_status!r}.",
                {"clinical_status": [f"One of {', '.join(ClinicalStatus.values)}."]},
            )
        changes["clinical_status"] = clinical_status
    before = {name: getattr(timepoint, name) for name in changes}
    changed = {name: value for name, value in changes.items() if before[name] != value}
    if not changed:
        return timepoint
    services.update_timepoint(timepoint, actor=actor, reason=reason, correlation_id=cid, **changed)
    _review_event(
        "set_clinical_context",
        timepoint,
        actor=actor,
        before={k: before[k] for k in changed},
        after=changed,
        reason=reason,
        correlation_id=cid,
    )
    _reassess(timepoint.patient, timepoint, actor=actor, reason=reason, correlation_id=cid)
    return timepoint


# ------------------------------------------------------------------------------------- signatures


def verify_signature(actor: Any, password: str) -> None:
    """Check the password re-entered to sign (21 CFR Part 11 style re-authentication).

    Raises:
        SignatureError: no signed-in user, or the password does not match.
    """
    if actor is None or not getattr(actor, "is_authenticated", False):
        raise SignatureError("Only a signed-in user can sign.")
    if not password or not actor.check_password(password):
        raise SignatureError(
            "The password does not match: the signature was not applied.",
            {"password": ["Incorrect password."]},
        )


@transaction.atomic
def confirm_with_signature(
    assessment: Assessment, *, actor: Any, password: str, reason: str = "", correlation_id: str = ""
) -> Assessment:
    """Confirm the current AI assessment, signed by re-entering the password.

    The signature is the assessment's ``signed_by``, ``signed_at`` and ``signature_meaning``
    ("reviewed and confirmed"); the confirm AuditEvent records it.

    Raises:
        SignatureError: wrong password. InvalidStateError: superseded or already signed.
    """
    verify_signature(actor, password)
    return services.confirm_assessment(
        assessment, actor=actor, reason=reason, correlation_id=_cid(correlation_id)
    )


@transaction.atomic
def override_with_signature(
    assessment: Assessment,
    *,
    overall_response: str,
    actor: Any,
    password: str,
    reason: str,
    correlation_id: str = "",
    **changes: Any,
) -> Assessment:
    """Override the response with the reader's, with a required reason, signed by the password.

    Args:
        **changes: other result fields the reader sets (target_response, non_target_response, comment).

    Raises:
        SignatureError: wrong password. InvalidInputError: empty reason or unknown response.
        InvalidStateError: the assessment is superseded.
    """
    verify_signature(actor, password)
    if not (reason or "").strip():
        raise InvalidInputError("An override needs a reason.", {"reason": ["This field is required."]})
    if overall_response not in ResponseChoices.values:
        raise InvalidInputError(
            f"Unknown response {overall_response!r}.",
            {"overall_response": [f"One of {', '.join(ResponseChoices.values)}."]},
        )
    from trials.pipeline import override_assessment  # the pipeline imports services; import late

    # The pipeline's override: derived fields from the reader's response, later visits re-assessed.
    return override_assessment(
        assessment,
        overall_response=overall_response,
        actor=actor,
        reason=reason,
        correlation_id=_cid(correlation_id),
        **changes,
    )
