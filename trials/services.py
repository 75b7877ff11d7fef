"""State changes of MetTrack: every verb is one transactional function that writes its AuditEvent.

Conventions (the whole project relies on them):
    * Each function is ``@transaction.atomic``; the change and its ``AuditEvent`` commit together or
      not at all. Follow-up work (Celery tasks) is enqueued with ``transaction.on_commit``.
    * Keyword-only ``actor`` (a user, or ``None`` for the system/pipeline), ``reason`` (free text, may be
      empty except where noted) and ``correlation_id`` (request id or pipeline run id; a new one is
      generated when empty so that one call's events can be grouped).
    * Bad input raises ``trials.exceptions.InvalidInputError`` (field messages in ``field_errors``),
      duplicates ``DuplicateError``, a verb in the wrong state ``InvalidStateError``. Never IntegrityError.
    * Permission checks are the caller's job (API: ``trials.permissions``); services check consistency
      (e.g. a patient's site belongs to the patient's trial).

What is here:
    Audit:        record_audit_event, snapshot, new_correlation_id, trial_of
    Trials:       create_trial, update_trial, create_site, update_site, add_membership, update_membership,
                  remove_membership
    Patients:     create_patient, update_patient, create_timepoint, update_timepoint
    Imaging:      register_series, update_series, register_model_version, create_segmentation_run,
                  update_segmentation_run
    Lesions:      next_lesion_label, create_lesion, update_lesion, record_observation, update_observation
    Assessments:  create_assessment (supersedes the current one), confirm_assessment, override_assessment
    Jobs:         create_job (enqueue on commit), set_job_task_id, start_job, update_job_progress,
                  finish_job, fail_job (job start and progress are telemetry on the job row, not audited)

Exports and other verbs outside this module record themselves with ``record_audit_event`` inside their
own ``transaction.atomic`` block, e.g. ``record_audit_event(actor=user, action="export", obj=trial, ...)``.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import NON_FIELD_ERRORS
from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, models, router, transaction
from django.db.models import F, Q
from django.db.models.constants import LOOKUP_SEP
from django.utils import timezone

from trials.choices import (
    AssessmentSource,
    AssessmentStatus,
    AuditAction,
    Criteria,
    JobKind,
    JobState,
    ObservationSource,
    ResponseChoices,
    SignatureMeaning,
)
from trials.exceptions import DuplicateError, InvalidInputError, InvalidStateError
from trials.models import (
    Assessment,
    AuditEvent,
    ImagingSeries,
    Lesion,
    LesionObservation,
    ModelVersion,
    Patient,
    ProcessingJob,
    SegmentationRun,
    Site,
    Timepoint,
    Trial,
    TrialMembership,
)

M = TypeVar("M", bound=models.Model)

#: ``actor_name`` written for changes made by the system (pipeline, management commands).
SYSTEM_ACTOR_NAME = "system"

# Error codes Django gives uniqueness violations found by full_clean(); ours carry "duplicate".
_DUPLICATE_CODES = {"duplicate", "unique", "unique_together"}


# --------------------------------------------------------------------------------------------- audit


def new_correlation_id() -> str:
    """Return a new random correlation id (32 hex characters)."""
    return uuid.uuid4().hex


def snapshot(obj: models.Model, fields: Iterable[str] | None = None) -> dict[str, Any]:
    """Return a JSON-safe dict of an object's concrete field values (foreign keys as ids).

    Args:
        obj: any model instance.
        fields: field names to include (default: all concrete fields).

    Returns:
        ``{attname: value}`` where dates are ISO strings and files are their storage names.
    """
    wanted = set(fields) if fields is not None else None
    data: dict[str, Any] = {}
    for field in obj._meta.concrete_fields:
        if wanted is not None and field.name not in wanted and field.attname not in wanted:
            continue
        value = field.value_from_object(obj)
        if isinstance(field, models.FileField):
            value = value.name if value else ""
        data[field.attname] = value
    # Round-trip through the JSON encoder so dates, decimals and UUIDs become plain JSON values.
    return json.loads(json.dumps(data, cls=DjangoJSONEncoder))


def trial_of(obj: models.Model | None) -> Trial | None:
    """Return the trial an object belongs to, or None for objects outside any trial (model versions).

    Args:
        obj: a trials model instance.
    """
    if obj is None:
        return None
    if isinstance(obj, Trial):
        return obj
    if isinstance(obj, Site | TrialMembership | Patient | ProcessingJob | AuditEvent):
        return obj.trial
    if isinstance(obj, Timepoint | Lesion):
        return obj.patient.trial
    if isinstance(obj, ImagingSeries | LesionObservation | Assessment):
        return obj.timepoint.patient.trial
    if isinstance(obj, SegmentationRun):
        return obj.series.timepoint.patient.trial
    return None


def _actor_name(actor: Any | None) -> str:
    if actor is None:
        return SYSTEM_ACTOR_NAME
    return actor.get_username()


def record_audit_event(
    *,
    actor: Any | None,
    action: str,
    obj: models.Model | None = None,
    trial: Trial | None = None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    reason: str = "",
    correlation_id: str = "",
    object_type: str | None = None,
    object_id: str | None = None,
    object_repr: str | None = None,
) -> AuditEvent:
    """Append one AuditEvent. Call it inside the transaction of the change it records.

    Args:
        actor: the user who acted, or None for the system.
        action: verb, usually an ``AuditAction`` value ("create", "update", "confirm", ...).
        obj: the object acted on; gives object_type/id/repr and the trial unless given explicitly.
        trial: the trial the event belongs to (default: ``trial_of(obj)``).
        before: field values before the change (None for a creation).
        after: field values after the change (None for a deletion).
        reason: why, in the actor's words.
        correlation_id: request or pipeline id shared by related events.
        object_type: ``app_label.model`` when no ``obj`` is given.
        object_id: primary key when no ``obj`` is given.
        object_repr: text shown for the object when no ``obj`` is given.

    Returns:
        The saved AuditEvent.
    """
    if obj is not None:
        object_type = object_type or obj._meta.label_lower
        object_id = object_id if object_id is not None else str(obj.pk or "")
        object_repr = object_repr if object_repr is not None else str(obj)[:255]
        trial = trial if trial is not None else trial_of(obj)
    if not object_type:
        raise InvalidInputError("An audit event needs an object or an object_type.")
    return AuditEvent.objects.create(
        actor=actor,
        actor_name=_actor_name(actor),
        action=action,
        trial=trial,
        object_type=object_type,
        object_id=object_id or "",
        object_repr=(object_repr or "")[:255],
        before=before,
        after=after,
        reason=reason or "",
        correlation_id=correlation_id or new_correlation_id(),
    )


# ------------------------------------------------------------------------------------------ helpers


def _service_error_from_validation(exc: DjangoValidationError, model: type[models.Model]) -> Exception:
    """Turn a Django ValidationError from full_clean() into DuplicateError or InvalidInputError."""
    field_errors: dict[str, list[str]] = {}
    duplicate_messages: list[str] = []
    error_dict = exc.error_dict if hasattr(exc, "error_dict") else {NON_FIELD_ERRORS: exc.error_list}
    for field, errors in error_dict.items():
        for error in errors:
            text = " ".join(str(m) for m in error.messages)
            if error.code in _DUPLICATE_CODES:
                duplicate_messages.append(text)
            field_errors.setdefault(field, []).append(text)
    name = model._meta.verbose_name
    if duplicate_messages and len(duplicate_messages) == sum(len(v) for v in field_errors.values()):
        return DuplicateError(" ".join(duplicate_messages), field_errors)
    summary = "; ".join(f"{field}: {' '.join(messages)}" for field, messages in field_errors.items())
    return InvalidInputError(f"Invalid {name}: {summary}", field_errors)


def _loaded_relations(obj: models.Model) -> list[str]:
    """Foreign keys of ``obj`` set to an object already read from (or saved to) the database.

    Validating such a key would only look the row up again: the rows MetTrack refers to are never deleted
    (foreign keys PROTECT; only memberships are deleted, and nothing refers to them), and the database's
    foreign-key constraint would still refuse, at commit, a row removed behind the application's back.
    """
    names = []
    for field in obj._meta.concrete_fields:
        if field.is_relation and field.many_to_one and field.is_cached(obj):
            related = field.get_cached_value(obj)
            if related is not None and related.pk is not None and not related._state.adding:
                names.append(field.name)
    return names


def _q_fields(condition: Any) -> set[str] | None:
    """Field names a constraint's condition refers to, or None when it is not a plain ``Q``."""
    if not isinstance(condition, Q):
        return None
    names: set[str] = set()
    for child in condition.children:
        if isinstance(child, Q):
            inner = _q_fields(child)
            if inner is None:
                return None
            names |= inner
            continue
        lookup, value = child
        names.add(lookup.split(LOOKUP_SEP)[0])
        if isinstance(value, F):
            names.add(value.name.split(LOOKUP_SEP)[0])
        elif hasattr(value, "resolve_expression"):
            return None
    return names


def _constraint_touches(constraint: models.BaseConstraint, changed: set[str]) -> bool:
    """Whether a constraint can be broken by a change of the ``changed`` fields (when unsure, True)."""
    if getattr(constraint, "expressions", ()):
        return True
    names = set(getattr(constraint, "fields", ()) or ())
    condition = getattr(constraint, "condition", None)
    if condition is not None:
        referred = _q_fields(condition)
        if referred is None:
            return True
        names |= referred
    return bool(names & changed) or not names


def _full_clean(obj: models.Model, changed: Iterable[str] | None = None) -> None:
    """``obj.full_clean()``, without the checks that cannot fail.

    - A foreign key given as a loaded object is not looked up again (Django's ``full_clean(exclude=...)``
      would also leave such a field out of the uniqueness checks; here only its field validation is).
    - An update (``changed``: the names of the fields it changes) validates the changed fields and the
      uniqueness rules and constraints they take part in: the unchanged values were validated when they
      were written, and a rule over unchanged fields held then.

    Written out because ``full_clean`` has no such options; the steps and the error merging are Django's.
    """
    fields = obj._meta.concrete_fields
    if changed is None:
        unchanged: set[str] = set()
        changed_fields = None
    else:
        names = set(changed)
        changed_fields = {f.name for f in fields if f.name in names or f.attname in names}
        unchanged = {f.name for f in fields} - changed_fields
    errors: dict[str, Any] = {}
    try:
        obj.clean_fields(exclude=set(_loaded_relations(obj)) | unchanged)
    except DjangoValidationError as exc:
        errors = exc.update_error_dict(errors)
    try:
        obj.clean()
    except DjangoValidationError as exc:
        errors = exc.update_error_dict(errors)
    # As full_clean: a field that is already invalid is not checked for uniqueness.
    invalid = {name for name in errors if name != NON_FIELD_ERRORS}
    # unique=True fields (MetTrack declares every other uniqueness rule as a constraint)
    try:
        obj.validate_unique(exclude=invalid | unchanged)
    except DjangoValidationError as exc:
        errors = exc.update_error_dict(errors)
    using = router.db_for_write(type(obj), instance=obj)
    constraint_errors: dict[str, Any] = {}
    for model_class, constraints in obj.get_constraints():
        for constraint in constraints:
            if changed_fields is not None and not _constraint_touches(constraint, changed_fields):
                continue
            try:
                constraint.validate(model_class, obj, exclude=invalid, using=using)
            except DjangoValidationError as exc:
                if getattr(exc, "code", None) == "unique" and len(getattr(constraint, "fields", ())) == 1:
                    constraint_errors.setdefault(constraint.fields[0], []).append(exc)
                else:
                    constraint_errors = exc.update_error_dict(constraint_errors)
    if constraint_errors:
        errors = DjangoValidationError(constraint_errors).update_error_dict(errors)
    if errors:
        raise DjangoValidationError(errors)


def _save_validated(obj: M, changed: Iterable[str] | None = None) -> M:
    """Validate (fields, choices, unique constraints) and save.

    ``changed``: for an update, the fields it changes (see :func:`_full_clean`).

    A concurrent insert can still pass validation and then hit the database constraint; the
    IntegrityError becomes a DuplicateError. Every caller is an ``@transaction.atomic`` service, whose
    block the DuplicateError leaves: nested in a caller's transaction, that block is a savepoint and is
    rolled back alone, so the caller's transaction stays usable (tests/trials/test_races.py). No savepoint
    of its own per save (two more queries each).
    """
    try:
        _full_clean(obj, changed)
    except DjangoValidationError as exc:
        raise _service_error_from_validation(exc, type(obj)) from exc
    try:
        obj.save()
    except IntegrityError as exc:
        raise DuplicateError(_duplicate_message(obj, exc)) from exc
    return obj


def _duplicate_message(obj: models.Model, exc: IntegrityError) -> str:
    """The violated constraint's own message when the database names it (PostgreSQL), else a generic one."""
    diag = getattr(exc.__cause__, "diag", None)
    constraint_name = getattr(diag, "constraint_name", None)
    for constraint in obj._meta.constraints:
        if constraint.name == constraint_name and isinstance(constraint, models.UniqueConstraint):
            return str(constraint.violation_error_message)
    return f"This {obj._meta.verbose_name} conflicts with an existing one (a uniqueness rule)."


def _check_fields(model: type[models.Model], changes: dict[str, Any], allowed: Iterable[str]) -> None:
    unknown = sorted(set(changes) - set(allowed))
    if unknown:
        raise InvalidInputError(
            f"{model._meta.verbose_name} fields that cannot be set here: {', '.join(unknown)}.",
            {name: ["This field cannot be set here."] for name in unknown},
        )


def _create(
    model: type[M],
    *,
    actor: Any | None,
    reason: str,
    correlation_id: str,
    action: str = AuditAction.CREATE,
    **fields: Any,
) -> M:
    obj = model(**fields)
    _save_validated(obj)
    record_audit_event(
        actor=actor,
        action=action,
        obj=obj,
        after=snapshot(obj),
        reason=reason,
        correlation_id=correlation_id,
    )
    return obj


def _update(
    obj: M,
    changes: dict[str, Any],
    *,
    allowed: Iterable[str],
    actor: Any | None,
    reason: str,
    correlation_id: str,
    action: str = AuditAction.UPDATE,
) -> M:
    _check_fields(type(obj), changes, allowed)
    # Lock the row so two concurrent edits serialise and each audit "before" is the true before.
    loaded = {name: getattr(obj, name) for name in _loaded_relations(obj)}
    obj.refresh_from_db(from_queryset=type(obj)._base_manager.select_for_update())
    for name, related in loaded.items():  # refresh_from_db drops them; keep those still referred to
        field = obj._meta.get_field(name)
        if getattr(obj, field.attname) == related.pk:
            field.set_cached_value(obj, related)
    before = snapshot(obj, changes.keys())
    for name, value in changes.items():
        setattr(obj, name, value)
    after = snapshot(obj, changes.keys())
    # Record only what really changed, so the audit trail reads as the change itself.
    changed = [key for key in after if before.get(key) != after[key]]
    if not changed:
        return obj
    before = {key: before[key] for key in changed}
    after = {key: after[key] for key in changed}
    _save_validated(obj, changed)
    record_audit_event(
        actor=actor,
        action=action,
        obj=obj,
        before=before,
        after=after,
        reason=reason,
        correlation_id=correlation_id,
    )
    return obj


# ------------------------------------------------------------------------------------ trials, sites

TRIAL_EDITABLE_FIELDS = ("title", "description", *Trial.CRITERIA_SETTING_FIELDS)


@transaction.atomic
def create_trial(
    *,
    code: str,
    title: str,
    description: str = "",
    actor: Any | None,
    reason: str = "",
    correlation_id: str = "",
    **criteria_settings: Any,
) -> Trial:
    """Create a trial; criteria settings not given take the rano-bm.md section 9 defaults.

    Args:
        code: unique protocol code.
        title: trial title.
        description: optional text.
        actor: acting user or None. reason, correlation_id: see module docstring.
        **criteria_settings: any of ``Trial.CRITERIA_SETTING_FIELDS``.

    Raises:
        DuplicateError: the code is taken. InvalidInputError: unknown setting or invalid value.
    """
    _check_fields(Trial, criteria_settings, Trial.CRITERIA_SETTING_FIELDS)
    return _create(
        Trial,
        actor=actor,
        reason=reason,
        correlation_id=correlation_id,
        code=code,
        title=title,
        description=description,
        **criteria_settings,
    )


@transaction.atomic
def update_trial(
    trial: Trial, *, actor: Any | None, reason: str = "", correlation_id: str = "", **changes: Any
) -> Trial:
    """Change a trial's title, description or criteria settings (the code never changes)."""
    return _update(
        trial,
        changes,
        allowed=TRIAL_EDITABLE_FIELDS,
        actor=actor,
        reason=reason,
        correlation_id=correlation_id,
    )


@transaction.atomic
def create_site(
    trial: Trial,
    *,
    code: str,
    name: str,
    actor: Any | None,
    reason: str = "",
    correlation_id: str = "",
) -> Site:
    """Add a site to a trial. Raises DuplicateError when the code exists in the trial."""
    return _create(
        Site, actor=actor, reason=reason, correlation_id=correlation_id, trial=trial, code=code, name=name
    )


@transaction.atomic
def update_site(
    site: Site, *, actor: Any | None, reason: str = "", correlation_id: str = "", **changes: Any
) -> Site:
    """Change a site's code or name."""
    return _update(
        site, changes, allowed=("code", "name"), actor=actor, reason=reason, correlation_id=correlation_id
    )


def _check_same_trial(trial: Trial, site: Site | None, what: str = "site") -> None:
    if site is not None and site.trial_id != trial.pk:
        raise InvalidInputError(
            f"The {what} {site.code} belongs to another trial.", {what: ["Must belong to the same trial."]}
        )


@transaction.atomic
def add_membership(
    trial: Trial,
    *,
    user: Any,
    role: str,
    site: Site | None = None,
    actor: Any | None,
    reason: str = "",
    correlation_id: str = "",
) -> TrialMembership:
    """Give a user a role in a trial.

    Raises:
        DuplicateError: the user already has this role in the trial.
        InvalidInputError: unknown role, or a site of another trial.
    """
    _check_same_trial(trial, site)
    return _create(
        TrialMembership,
        actor=actor,
        reason=reason,
        correlation_id=correlation_id,
        trial=trial,
        user=user,
        role=role,
        site=site,
    )


@transaction.atomic
def update_membership(
    membership: TrialMembership,
    *,
    actor: Any | None,
    reason: str = "",
    correlation_id: str = "",
    **changes: Any,
) -> TrialMembership:
    """Change a membership's role or site."""
    if "site" in changes:
        _check_same_trial(membership.trial, changes["site"])
    return _update(
        membership,
        changes,
        allowed=("role", "site"),
        actor=actor,
        reason=reason,
        correlation_id=correlation_id,
    )


@transaction.atomic
def remove_membership(
    membership: TrialMembership, *, actor: Any | None, reason: str = "", correlation_id: str = ""
) -> None:
    """Revoke a user's role in a trial."""
    before = snapshot(membership)
    record_audit_event(
        actor=actor,
        action=AuditAction.DELETE,
        obj=membership,
        before=before,
        reason=reason,
        correlation_id=correlation_id,
    )
    membership.delete()


# ------------------------------------------------------------------------------ patients, visits

PATIENT_EDITABLE_FIELDS = ("site", "subject_id", "enrolment_date", "treatment_start_date")
TIMEPOINT_EDITABLE_FIELDS = (
    "visit_label",
    "scan_date",
    "is_baseline",
    "corticosteroid_status",
    "clinical_status",
    "notes",
)


@transaction.atomic
def create_patient(
    trial: Trial,
    *,
    site: Site,
    subject_id: str,
    enrolment_date: Any = None,
    treatment_start_date: Any = None,
    actor: Any | None,
    reason: str = "",
    correlation_id: str = "",
) -> Patient:
    """Enrol a patient under a pseudonymous subject id (never a name).

    Raises:
        DuplicateError: the subject id exists in the trial.
        InvalidInputError: the site belongs to another trial, or a field is invalid.
    """
    _check_same_trial(trial, site)
    return _create(
        Patient,
        actor=actor,
        reason=reason,
        correlation_id=correlation_id,
        trial=trial,
        site=site,
        subject_id=subject_id,
        enrolment_date=enrolment_date,
        treatment_start_date=treatment_start_date,
    )


@transaction.atomic
def update_patient(
    patient: Patient, *, actor: Any | None, reason: str = "", correlation_id: str = "", **changes: Any
) -> Patient:
    """Change a patient's site, subject id or dates."""
    if "site" in changes:
        _check_same_trial(patient.trial, changes["site"])
    return _update(
        patient,
        changes,
        allowed=PATIENT_EDITABLE_FIELDS,
        actor=actor,
        reason=reason,
        correlation_id=correlation_id,
    )


@transaction.atomic
def create_timepoint(
    patient: Patient,
    *,
    visit_label: str,
    scan_date: Any,
    is_baseline: bool = False,
    corticosteroid_status: str = "none",
    clinical_status: str = "stable",
    notes: str = "",
    actor: Any | None,
    reason: str = "",
    correlation_id: str = "",
) -> Timepoint:
    """Add a visit to a patient.

    Raises:
        DuplicateError: the visit label exists for the patient, or a second baseline.
        InvalidInputError: invalid status or date.
    """
    return _create(
        Timepoint,
        actor=actor,
        reason=reason,
        correlation_id=correlation_id,
        patient=patient,
        visit_label=visit_label,
        scan_date=scan_date,
        is_baseline=is_baseline,
        corticosteroid_status=corticosteroid_status,
        clinical_status=clinical_status,
        notes=notes,
    )


@transaction.atomic
def update_timepoint(
    timepoint: Timepoint, *, actor: Any | None, reason: str = "", correlation_id: str = "", **changes: Any
) -> Timepoint:
    """Change a visit's label, date, baseline flag, steroid or clinical status, notes."""
    return _update(
        timepoint,
        changes,
        allowed=TIMEPOINT_EDITABLE_FIELDS,
        actor=actor,
        reason=reason,
        correlation_id=correlation_id,
    )


# ------------------------------------------------------------------------------------------ imaging

SERIES_FIELDS = (
    "study_instance_uid",
    "modality",
    "series_description",
    "size_voxels",
    "spacing_mm",
    "origin_mm",
    "direction",
    "volume_file",
    "checksum_sha256",
    "source",
    "original_filename",
    "uploaded_by",
)


@transaction.atomic
def register_series(
    timepoint: Timepoint,
    *,
    series_instance_uid: str,
    actor: Any | None,
    reason: str = "",
    correlation_id: str = "",
    **fields: Any,
) -> ImagingSeries:
    """Record an imaging series of a visit (the caller has stored the volume).

    Args:
        timepoint: the visit.
        series_instance_uid: DICOM (0020,000E); unique across the database.
        **fields: any of ``SERIES_FIELDS``.

    Raises:
        DuplicateError: the Series Instance UID is already registered.
    """
    _check_fields(ImagingSeries, fields, SERIES_FIELDS)
    return _create(
        ImagingSeries,
        actor=actor,
        reason=reason,
        correlation_id=correlation_id,
        timepoint=timepoint,
        series_instance_uid=series_instance_uid,
        **fields,
    )


@transaction.atomic
def update_series(
    series: ImagingSeries, *, actor: Any | None, reason: str = "", correlation_id: str = "", **changes: Any
) -> ImagingSeries:
    """Change a series' stored volume, geometry or description (never its UID)."""
    return _update(
        series, changes, allowed=SERIES_FIELDS, actor=actor, reason=reason, correlation_id=correlation_id
    )


MODEL_VERSION_FIELDS = (
    "config",
    "weights_path",
    "training_provenance",
    "validation_metrics",
    "intended_use",
    "is_demo",
    "is_active",
)


@transaction.atomic
def register_model_version(
    *,
    name: str,
    version: str,
    architecture: str,
    weights_sha256: str,
    actor: Any | None,
    reason: str = "",
    correlation_id: str = "",
    **fields: Any,
) -> ModelVersion:
    """Register segmentation weights. Raises DuplicateError when the sha256 or name+version exist."""
    _check_fields(ModelVersion, fields, MODEL_VERSION_FIELDS)
    return _create(
        ModelVersion,
        actor=actor,
        reason=reason,
        correlation_id=correlation_id,
        name=name,
        version=version,
        architecture=architecture,
        weights_sha256=weights_sha256,
        **fields,
    )


SEGMENTATION_RUN_FIELDS = (
    "device",
    "status",
    "timings_s",
    "started_at",
    "finished_at",
    "mask_file",
    "rtstruct_file",
    "seg_file",
    "error",
)


@transaction.atomic
def create_segmentation_run(
    series: ImagingSeries,
    model_version: ModelVersion,
    *,
    actor: Any | None,
    reason: str = "",
    correlation_id: str = "",
    **fields: Any,
) -> SegmentationRun:
    """Start recording a segmentation of a series by a model.

    Raises:
        DuplicateError: this series was already segmented with the same weights (sha256).
    """
    _check_fields(SegmentationRun, fields, SEGMENTATION_RUN_FIELDS)
    return _create(
        SegmentationRun,
        actor=actor,
        reason=reason,
        correlation_id=correlation_id,
        series=series,
        model_version=model_version,
        model_weights_sha256=model_version.weights_sha256,
        **fields,
    )


@transaction.atomic
def update_segmentation_run(
    run: SegmentationRun, *, actor: Any | None, reason: str = "", correlation_id: str = "", **changes: Any
) -> SegmentationRun:
    """Record a run's status, outputs, timings or error."""
    return _update(
        run,
        changes,
        allowed=SEGMENTATION_RUN_FIELDS,
        actor=actor,
        reason=reason,
        correlation_id=correlation_id,
    )


# ------------------------------------------------------------------------------------------ lesions

LESION_FIELDS = (
    "role",
    "first_seen_timepoint",
    "is_cystic",
    "is_dural",
    "is_bony",
    "is_leptomeningeal",
    "previously_irradiated",
    "progressing_since_treatment",
    "too_small_to_measure",
    "is_false_positive",
    "notes",
)

OBSERVATION_FIELDS = (
    "segmentation_run",
    "source",
    "present",
    "merged_into",
    "component_label",
    "fragment_count",
    "longest_diameter_mm",
    "perpendicular_diameter_mm",
    "volume_mm3",
    "max_3d_diameter_mm",
    "centroid_x_mm",
    "centroid_y_mm",
    "centroid_z_mm",
    "slice_count",
    "ld_slice_index",
    "caliper_points_mm",
    "perpendicular_points_mm",
    "intensity_mean",
    "intensity_sd",
    "intensity_min",
    "intensity_max",
    "measurable",
    "measurable_reason",
    "unequivocal_progression",
)


def next_lesion_label(patient: Patient) -> str:
    """Return the next free stable label of a patient: L1, L2, ... (never reuses a label)."""
    numbers = [
        int(label[1:])
        for label in Lesion.objects.filter(patient=patient).values_list("label", flat=True)
        if label.startswith("L") and label[1:].isdigit()
    ]
    return f"L{max(numbers, default=0) + 1}"


@transaction.atomic
def create_lesion(
    patient: Patient,
    *,
    label: str | None = None,
    actor: Any | None,
    reason: str = "",
    correlation_id: str = "",
    **fields: Any,
) -> Lesion:
    """Create a lesion of a patient.

    Args:
        patient: whose lesion.
        label: stable label; default the next free ``L<n>``.
        **fields: any of ``LESION_FIELDS``.

    Raises:
        DuplicateError: the label exists for the patient.
        InvalidInputError: ``first_seen_timepoint`` is another patient's visit.
    """
    _check_fields(Lesion, fields, LESION_FIELDS)
    first_seen = fields.get("first_seen_timepoint")
    if first_seen is not None and first_seen.patient_id != patient.pk:
        raise InvalidInputError(
            "The first-seen visit belongs to another patient.",
            {"first_seen_timepoint": ["Must be a visit of the same patient."]},
        )
    if label is None:
        # Serialise label allocation per patient: lock the patient row.
        Patient.objects.select_for_update().filter(pk=patient.pk).first()
        label = next_lesion_label(patient)
    if actor is not None and "role" in fields:
        fields["role_set_by_reader"] = True
    return _create(
        Lesion,
        actor=actor,
        reason=reason,
        correlation_id=correlation_id,
        patient=patient,
        label=label,
        **fields,
    )


@transaction.atomic
def update_lesion(
    lesion: Lesion, *, actor: Any | None, reason: str = "", correlation_id: str = "", **changes: Any
) -> Lesion:
    """Change a lesion's role or reader flags. The label never changes.

    A role change by a user (``actor`` not None) marks ``role_set_by_reader`` so that the engine's
    target selection does not overwrite the reader's choice.
    """
    _check_fields(Lesion, changes, LESION_FIELDS)
    if actor is not None and "role" in changes and changes["role"] != lesion.role:
        changes["role_set_by_reader"] = True
    return _update(
        lesion,
        changes,
        allowed=(*LESION_FIELDS, "role_set_by_reader"),
        actor=actor,
        reason=reason,
        correlation_id=correlation_id,
    )


@transaction.atomic
def record_observation(
    lesion: Lesion,
    timepoint: Timepoint,
    *,
    actor: Any | None,
    reason: str = "",
    correlation_id: str = "",
    **measurements: Any,
) -> LesionObservation:
    """Record a lesion at a visit with its measurements (rano-bm.md section 1).

    Args:
        lesion: the lesion.
        timepoint: a visit of the same patient.
        **measurements: any of ``OBSERVATION_FIELDS``.

    Raises:
        DuplicateError: the lesion already has an observation at this visit (use update_observation).
        InvalidInputError: visit of another patient, run of another visit, or invalid values.
    """
    _check_fields(LesionObservation, measurements, OBSERVATION_FIELDS)
    if timepoint.patient_id != lesion.patient_id:
        raise InvalidInputError(
            "The visit and the lesion belong to different patients.",
            {"timepoint": ["Must be a visit of the lesion's patient."]},
        )
    run = measurements.get("segmentation_run")
    if run is not None and run.series.timepoint_id != timepoint.pk:
        raise InvalidInputError(
            "The segmentation run is of another visit.",
            {"segmentation_run": ["Must be a run on a series of this visit."]},
        )
    _check_caliper(measurements)
    _check_measurements(measurements)
    _check_merged_into(lesion, measurements)
    return _create(
        LesionObservation,
        actor=actor,
        reason=reason,
        correlation_id=correlation_id,
        lesion=lesion,
        timepoint=timepoint,
        **measurements,
    )


#: Upper bounds of a plausible brain lesion measurement (a whole adult head is about 200 mm and 1.5 l):
#: beyond them a value is a typing or unit error, refused before it can drive a response.
MAX_DIAMETER_MM = 300.0
MAX_VOLUME_MM3 = 3_000_000.0
_DIAMETER_FIELDS = ("longest_diameter_mm", "perpendicular_diameter_mm", "max_3d_diameter_mm")


def _check_measurements(values: dict[str, Any], current: LesionObservation | None = None) -> None:
    """Refuse impossible measurements (negative, not finite, beyond a head, perpendicular > LD).

    Args:
        values: the fields being set.
        current: the observation being changed (its other values take part in the LD check).
    """
    errors: dict[str, list[str]] = {}
    for name in (*_DIAMETER_FIELDS, "volume_mm3"):
        value = values.get(name)
        if value is None:
            continue
        limit = MAX_VOLUME_MM3 if name == "volume_mm3" else MAX_DIAMETER_MM
        unit = "mm3" if name == "volume_mm3" else "mm"
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            errors[name] = ["Must be a number."]
        elif value < 0:
            errors[name] = ["Must be 0 or more."]
        elif value > limit:
            errors[name] = [
                f"{value:g} {unit} is beyond any brain lesion (at most {limit:g} {unit}): check the unit."
            ]
    if not errors:
        longest = values.get("longest_diameter_mm", getattr(current, "longest_diameter_mm", None))
        perpendicular = values.get(
            "perpendicular_diameter_mm", getattr(current, "perpendicular_diameter_mm", None)
        )
        if longest is not None and perpendicular is not None and perpendicular > longest + 1e-6:
            field = (
                "perpendicular_diameter_mm"
                if "perpendicular_diameter_mm" in values
                else "longest_diameter_mm"
            )
            errors[field] = [
                f"The perpendicular diameter ({perpendicular:g} mm) cannot exceed the longest diameter "
                f"({longest:g} mm): the longest diameter is the longest chord (rano-bm.md section 1)."
            ]
    if errors:
        raise InvalidInputError(
            "Invalid measurement: " + "; ".join(f"{k}: {' '.join(v)}" for k, v in errors.items()), errors
        )


def _check_merged_into(lesion: Lesion, values: dict[str, Any]) -> None:
    """A lesion merges into another lesion of its patient, and a merged lesion is not seen on its own."""
    into = values.get("merged_into")
    if into is None:
        return
    if into.pk == lesion.pk or into.patient_id != lesion.patient_id:
        raise InvalidInputError(
            "A lesion merges into another lesion of the same patient.",
            {"merged_into": ["Must be another lesion of this patient."]},
        )
    if values.get("present") is True:
        raise InvalidInputError(
            "A lesion merged into another has no component of its own at this visit (present must be false).",
            {"present": ["Must be false for a merged lesion."]},
        )


def _check_caliper(values: dict[str, Any]) -> None:
    for name in ("caliper_points_mm", "perpendicular_points_mm"):
        points = values.get(name)
        if points is None:
            continue
        ok = (
            isinstance(points, list | tuple)
            and len(points) == 2
            and all(
                isinstance(p, list | tuple)
                and len(p) == 3
                and all(isinstance(c, int | float) and not isinstance(c, bool) for c in p)
                for p in points
            )
        )
        if not ok:
            raise InvalidInputError(
                f"{name} must be two physical points [[x, y, z], [x, y, z]] in mm.",
                {name: ["Expected [[x, y, z], [x, y, z]] (numbers, mm)."]},
            )
        values[name] = [[float(c) for c in p] for p in points]


@transaction.atomic
def update_observation(
    observation: LesionObservation,
    *,
    actor: Any | None,
    reason: str = "",
    correlation_id: str = "",
    **changes: Any,
) -> LesionObservation:
    """Correct an observation. A user's edit of an AI observation turns its source into ``edited``."""
    _check_fields(LesionObservation, changes, OBSERVATION_FIELDS)
    _check_caliper(changes)
    _check_measurements(changes, observation)
    if changes.get("present") is True:
        changes.setdefault("merged_into", None)  # seen on its own again: no longer inside another mass
    _check_merged_into(observation.lesion, changes)
    run = changes.get("segmentation_run")
    if run is not None and run.series.timepoint_id != observation.timepoint_id:
        raise InvalidInputError(
            "The segmentation run is of another visit.",
            {"segmentation_run": ["Must be a run on a series of this visit."]},
        )
    if actor is not None and observation.source == ObservationSource.AI and "source" not in changes:
        changes["source"] = ObservationSource.EDITED
    return _update(
        observation,
        changes,
        allowed=OBSERVATION_FIELDS,
        actor=actor,
        reason=reason,
        correlation_id=correlation_id,
    )


# -------------------------------------------------------------------------------------- assessments

ASSESSMENT_RESULT_FIELDS = (
    "sum_ld_mm",
    "baseline_sum_ld_mm",
    "nadir_sum_ld_mm",
    "sum_volume_mm3",
    "baseline_sum_volume_mm3",
    "nadir_sum_volume_mm3",
    "pct_change_from_baseline",
    "pct_change_from_nadir",
    "nadir_timepoint",
    "target_response",
    "non_target_response",
    "new_lesion_status",
    "overall_response",
    "volumetric_response",
    "confirmed",
    "best_overall_response",
    "progression_date",
    "reasons",
    "settings",
    "engine_version",
    "comment",
)


def _current_assessment(timepoint: Timepoint, criteria: str) -> Assessment | None:
    row = (
        Assessment.objects.select_for_update()
        .filter(timepoint=timepoint, criteria=criteria, is_current=True)
        .first()
    )
    if row is not None:
        row.timepoint = timepoint  # the caller's object, with the patient and trial it has loaded
    return row


def _retire(assessment: Assessment, *, actor: Any | None, reason: str, correlation_id: str) -> None:
    _update(
        assessment,
        {"is_current": False},
        allowed=("is_current",),
        actor=actor,
        reason=reason,
        correlation_id=correlation_id,
        action="supersede",
    )


@transaction.atomic
def create_assessment(
    timepoint: Timepoint,
    *,
    criteria: str = Criteria.RANO_BM,
    source: str = AssessmentSource.AI,
    actor: Any | None,
    reason: str = "",
    correlation_id: str = "",
    **results: Any,
) -> Assessment:
    """Store a new draft assessment of a visit; it supersedes the current one of the same criteria.

    ``settings`` defaults to the trial's ``criteria_settings()``: every assessment stores what it used.

    Args:
        timepoint: the visit.
        criteria: ``Criteria`` value.
        source: ``AssessmentSource`` value.
        **results: any of ``ASSESSMENT_RESULT_FIELDS``.

    Raises:
        InvalidInputError: invalid response value or field.
    """
    _check_fields(Assessment, results, ASSESSMENT_RESULT_FIELDS)
    results.setdefault("settings", timepoint.patient.trial.criteria_settings())
    previous = _current_assessment(timepoint, criteria)
    if previous is not None:
        _retire(
            previous,
            actor=actor,
            reason=reason or "superseded by a new assessment",
            correlation_id=correlation_id,
        )
    return _create(
        Assessment,
        actor=actor,
        reason=reason,
        correlation_id=correlation_id,
        timepoint=timepoint,
        criteria=criteria,
        source=source,
        status=AssessmentStatus.DRAFT,
        supersedes=previous,
        is_current=True,
        **results,
    )


def _require_user(actor: Any | None, verb: str) -> None:
    if actor is None or not getattr(actor, "is_authenticated", False):
        raise InvalidInputError(f"Only a signed-in user can {verb} an assessment (the signature is theirs).")


def _require_current(assessment: Assessment, verb: str) -> None:
    if not assessment.is_current:
        raise InvalidStateError(
            f"Assessment {assessment.pk} has been superseded; {verb} the current assessment of the visit."
        )


@transaction.atomic
def confirm_assessment(
    assessment: Assessment,
    *,
    actor: Any,
    reason: str = "",
    correlation_id: str = "",
) -> Assessment:
    """A radiologist confirms the current draft assessment and signs it ("reviewed and confirmed").

    The signature's meaning follows from the verb, never from the caller: a confirmed row cannot carry
    an "overridden" manifestation. Callers acting for a person verify the signature first
    (:func:`trials.review.confirm_with_signature`).

    Raises:
        InvalidInputError: no user (the system cannot sign).
        InvalidStateError: the assessment is superseded or already confirmed/overridden.
    """
    _require_user(actor, "confirm")
    assessment = Assessment.objects.select_for_update().get(pk=assessment.pk)
    _require_current(assessment, "confirm")
    if assessment.status != AssessmentStatus.DRAFT:
        raise InvalidStateError(
            f"Assessment {assessment.pk} is already {assessment.status}; only a draft can be confirmed."
        )
    return _update(
        assessment,
        {
            "status": AssessmentStatus.CONFIRMED,
            "signed_by": actor,
            "signed_at": timezone.now(),
            "signature_meaning": SignatureMeaning.REVIEWED_AND_CONFIRMED,
        },
        allowed=("status", "signed_by", "signed_at", "signature_meaning"),
        actor=actor,
        reason=reason,
        correlation_id=correlation_id,
        action=AuditAction.CONFIRM,
    )


@transaction.atomic
def override_assessment(
    assessment: Assessment,
    *,
    overall_response: str,
    actor: Any,
    reason: str,
    correlation_id: str = "",
    **changes: Any,
) -> Assessment:
    """A radiologist replaces the response of the current assessment; a new signed row supersedes it.

    Args:
        assessment: the current assessment of the visit (any status).
        overall_response: the reader's ``ResponseChoices`` value.
        reason: required: why the reader disagrees.
        **changes: other result fields to change (target_response, non_target_response, comment...).

    Raises:
        InvalidInputError: no user, empty reason, or invalid response.
        InvalidStateError: the assessment is superseded, or it is the baseline's (no response there).
    """
    _require_user(actor, "override")
    if not (reason or "").strip():
        raise InvalidInputError("An override needs a reason.", {"reason": ["This field is required."]})
    _check_fields(Assessment, changes, ASSESSMENT_RESULT_FIELDS)
    if overall_response not in ResponseChoices.values:
        raise InvalidInputError(
            f"Unknown response {overall_response!r}.",
            {"overall_response": [f"Must be one of {', '.join(ResponseChoices.values)}."]},
        )
    old = Assessment.objects.select_for_update().select_related("timepoint").get(pk=assessment.pk)
    _require_current(old, "override")
    if old.timepoint.is_baseline:
        raise InvalidStateError(
            "The baseline visit has no response to override (rano-bm.md section 6); correct its lesions, "
            "flags or target selection instead, or confirm it."
        )
    _retire(old, actor=actor, reason=reason, correlation_id=correlation_id)
    values = {name: getattr(old, name) for name in ASSESSMENT_RESULT_FIELDS}
    values.update(changes)
    values["overall_response"] = overall_response
    new = Assessment(
        timepoint=old.timepoint,
        criteria=old.criteria,
        source=AssessmentSource.RADIOLOGIST,
        status=AssessmentStatus.OVERRIDDEN,
        signed_by=actor,
        signed_at=timezone.now(),
        signature_meaning=SignatureMeaning.REVIEWED_AND_OVERRIDDEN,
        supersedes=old,
        is_current=True,
        **values,
    )
    _save_validated(new)
    record_audit_event(
        actor=actor,
        action=AuditAction.OVERRIDE,
        obj=new,
        before=snapshot(old),
        after=snapshot(new),
        reason=reason,
        correlation_id=correlation_id,
    )
    return new


# --------------------------------------------------------------------------------------------- jobs


@transaction.atomic
def create_job(
    kind: str,
    *,
    obj: models.Model | None = None,
    trial: Trial | None = None,
    params: dict[str, Any] | None = None,
    time_limit_s: int | None = None,
    enqueue: Callable[[ProcessingJob], Any] | None = None,
    actor: Any | None,
    reason: str = "",
    correlation_id: str = "",
) -> ProcessingJob:
    """Save a queued job and, once the transaction commits, hand it to ``enqueue``.

    Saving first means a worker never receives the id of a job that does not exist (or was rolled back).

    Args:
        kind: ``JobKind`` value.
        obj: what the job works on (generic reference); its trial is used when ``trial`` is not given.
        trial: trial of the job (for per-trial access).
        params: task arguments (ids only).
        time_limit_s: hard time limit the task should run under.
        enqueue: called with the job after commit, e.g. ``lambda job: task.delay(job.pk)``; it may call
            ``set_job_task_id``.

    Raises:
        InvalidInputError: unknown kind.
    """
    if kind not in JobKind.values:
        raise InvalidInputError(
            f"Unknown job kind {kind!r}.", {"kind": [f"Must be one of {', '.join(JobKind.values)}."]}
        )
    correlation_id = correlation_id or new_correlation_id()
    job = ProcessingJob(
        kind=kind,
        trial=trial if trial is not None else trial_of(obj),
        content_type=ContentType.objects.get_for_model(obj) if obj is not None else None,
        object_id=obj.pk if obj is not None else None,
        params=params or {},
        time_limit_s=time_limit_s,
        correlation_id=correlation_id,
        created_by=actor,
        state=JobState.QUEUED,
    )
    _save_validated(job)
    record_audit_event(
        actor=actor,
        action=AuditAction.ENQUEUE,
        obj=job,
        after=snapshot(job),
        reason=reason,
        correlation_id=correlation_id,
    )
    if enqueue is not None:
        transaction.on_commit(lambda: enqueue(job))
    return job


def set_job_task_id(job: ProcessingJob, celery_task_id: str) -> None:
    """Remember the Celery task id of a job (plumbing, not audited)."""
    ProcessingJob.objects.filter(pk=job.pk).update(celery_task_id=celery_task_id)
    job.celery_task_id = celery_task_id


@transaction.atomic
def start_job(job: ProcessingJob, *, celery_task_id: str = "", stage: str = "") -> ProcessingJob:
    """Mark a job running and count the attempt.

    Progress is operational telemetry kept on the job row itself, so starting and progress are not
    audit events; the outcome (finish_job / fail_job) is.
    """
    job = ProcessingJob.objects.select_for_update().get(pk=job.pk)
    job.state = JobState.RUNNING
    job.started_at = timezone.now()
    job.finished_at = None
    job.attempts = F("attempts") + 1
    job.error = ""
    job.stage = stage
    if celery_task_id:
        job.celery_task_id = celery_task_id
    job.save()
    job.refresh_from_db()
    return job


def update_job_progress(job: ProcessingJob, *, progress_pct: int, stage: str = "", message: str = "") -> None:
    """Record progress (0-100) of a running job, visible at once to the dashboard and the API.

    Raises:
        InvalidInputError: progress outside 0-100.
    """
    if not 0 <= progress_pct <= 100:
        raise InvalidInputError(f"progress_pct must be within 0-100, got {progress_pct}.")
    ProcessingJob.objects.filter(pk=job.pk).update(
        progress_pct=progress_pct, stage=stage, message=message[:500]
    )
    job.progress_pct, job.stage, job.message = progress_pct, stage, message[:500]


@transaction.atomic
def finish_job(
    job: ProcessingJob,
    *,
    result: dict[str, Any] | None = None,
    message: str = "",
    actor: Any | None = None,
    correlation_id: str = "",
) -> ProcessingJob:
    """Mark a job succeeded (100%) and audit it."""
    return _update(
        job,
        {
            "state": JobState.SUCCEEDED,
            "progress_pct": 100,
            "finished_at": timezone.now(),
            "result": result or {},
            "message": message[:500],
        },
        allowed=("state", "progress_pct", "finished_at", "result", "message"),
        actor=actor,
        reason="",
        correlation_id=correlation_id or job.correlation_id,
        action=AuditAction.FINISH,
    )


@transaction.atomic
def fail_job(
    job: ProcessingJob,
    *,
    error: str,
    message: str = "",
    actor: Any | None = None,
    correlation_id: str = "",
) -> ProcessingJob:
    """Mark a job failed with a clear error and audit it."""
    return _update(
        job,
        {"state": JobState.FAILED, "finished_at": timezone.now(), "error": error, "message": message[:500]},
        allowed=("state", "finished_at", "error", "message"),
        actor=actor,
        reason="",
        correlation_id=correlation_id or job.correlation_id,
        action=AuditAction.FAIL,
    )


__all__ = [
    "SYSTEM_ACTOR_NAME",
    "add_membership",
    "confirm_assessment",
    "create_assessment",
    "create_job",
    "create_lesion",
    "create_patient",
    "create_segmentation_run",
    "create_site",
    "create_timepoint",
    "create_trial",
    "fail_job",
    "finish_job",
    "new_correlation_id",
    "next_lesion_label",
    "override_assessment",
    "record_audit_event",
    "record_observation",
    "register_model_version",
    "register_series",
    "remove_membership",
    "set_job_task_id",
    "snapshot",
    "start_job",
    "trial_of",
    "update_job_progress",
    "update_lesion",
    "update_membership",
    "update_observation",
    "update_patient",
    "update_segmentation_run",
    "update_series",
    "update_site",
    "update_timepoint",
    "update_trial",
]
