"""Audited row writes: validate, save and record the ``AuditEvent``, for every row helper and action.

:func:`create_row` and :func:`update_row` are the only ways MetTrack writes a clinical row: each
validates the row (field validation, ``clean()``, uniqueness rules and constraints, without the checks
that cannot fail), saves it and appends the audit event with what changed, in the caller's transaction.
A uniqueness violation becomes :class:`~trials.exceptions.DuplicateError` (HTTP 409), any other invalid
value :class:`~trials.exceptions.InvalidInputError` (HTTP 400) with field messages; never an
``IntegrityError``.

Callers are ``@transaction.atomic`` functions (the row helpers of this package, the actions).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

from django.core.exceptions import NON_FIELD_ERRORS
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError, models, router
from django.db.models import F, Q
from django.db.models.constants import LOOKUP_SEP

from trials.audit import record_audit_event, snapshot
from trials.choices import AuditAction
from trials.exceptions import DuplicateError, InvalidInputError
from trials.models import Site, Trial

M = TypeVar("M", bound=models.Model)

# Error codes Django gives uniqueness violations found by full_clean(); ours carry "duplicate".
_DUPLICATE_CODES = {"duplicate", "unique", "unique_together"}


def _service_error(exc: DjangoValidationError, model: type[models.Model]) -> Exception:
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
        if isinstance(field, models.ForeignKey) and field.many_to_one and field.is_cached(obj):
            related = field.get_cached_value(obj)
            if related is not None and related.pk is not None and not related._state.adding:
                names.append(field.name)
    return names


def _q_fields(condition: Any) -> set[str] | None:
    """Field names a constraint's condition refers to, or None when it is not a plain ``Q``."""
    if not isinstance(condition, Q):
        return None
    names: set[str] = set()
    for child in condition.children:  # each a Q or a (lookup, value) pair
        if isinstance(child, Q):
            inner = _q_fields(child)
            if inner is None:
                return None
            names |= inner
            continue
        lookup, value = child  # type: ignore[misc]  # django-stubs types a Q's children as tree Nodes
        names.add(lookup.split(LOOKUP_SEP)[0])
        if isinstance(value, F):
            names.add(str(getattr(value, "name", "")).split(LOOKUP_SEP)[0])
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


def full_clean(obj: models.Model, changed: Iterable[str] | None = None) -> None:
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
                single: tuple[str, ...] = tuple(getattr(constraint, "fields", None) or ())
                if getattr(exc, "code", None) == "unique" and len(single) == 1:
                    constraint_errors.setdefault(single[0], []).append(exc)
                else:
                    constraint_errors = exc.update_error_dict(constraint_errors)
    if constraint_errors:
        errors = DjangoValidationError(constraint_errors).update_error_dict(errors)
    if errors:
        raise DjangoValidationError(errors)


def save_validated(obj: M, changed: Iterable[str] | None = None) -> M:
    """Validate (fields, choices, unique constraints) and save.

    ``changed``: for an update, the fields it changes (see :func:`full_clean`).

    A concurrent insert can still pass validation and then hit the database constraint; the
    IntegrityError becomes a DuplicateError. Every caller is an ``@transaction.atomic`` function, whose
    block the DuplicateError leaves: nested in a caller's transaction, that block is a savepoint and is
    rolled back alone, so the caller's transaction stays usable (tests/trials/test_races.py). No savepoint
    of its own per save (two more queries each).
    """
    try:
        full_clean(obj, changed)
    except DjangoValidationError as exc:
        raise _service_error(exc, type(obj)) from exc
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


def check_fields(model: type[models.Model], changes: dict[str, Any], allowed: Iterable[str]) -> None:
    """Refuse a change of a field the caller may not set (InvalidInputError naming each)."""
    unknown = sorted(set(changes) - set(allowed))
    if unknown:
        raise InvalidInputError(
            f"{model._meta.verbose_name} fields that cannot be set here: {', '.join(unknown)}.",
            {name: ["This field cannot be set here."] for name in unknown},
        )


def check_same_trial(trial: Trial, site: Site | None, what: str = "site") -> None:
    """Refuse a site (or other object with a trial) that belongs to another trial than ``trial``."""
    if site is not None and site.trial_id != trial.pk:
        raise InvalidInputError(
            f"The {what} {site.code} belongs to another trial.", {what: ["Must belong to the same trial."]}
        )


def create_row(
    model: type[M],
    *,
    actor: Any | None,
    reason: str,
    correlation_id: str,
    action: str = AuditAction.CREATE,
    **fields: Any,
) -> M:
    """Validate and insert a row of ``model`` and audit it (``action``, the row as ``after``)."""
    obj = model(**fields)
    save_validated(obj)
    record_audit_event(
        actor=actor,
        action=action,
        obj=obj,
        after=snapshot(obj),
        reason=reason,
        correlation_id=correlation_id,
    )
    return obj


def update_row(
    obj: M,
    changes: dict[str, Any],
    *,
    allowed: Iterable[str],
    actor: Any | None,
    reason: str,
    correlation_id: str,
    action: str = AuditAction.UPDATE,
) -> M:
    """Apply ``changes`` (only fields in ``allowed``) to a locked, re-read row; validate, save and audit.

    The audit event records only the fields whose value changed (before and after); a change that
    changes nothing writes nothing.
    """
    check_fields(type(obj), changes, allowed)
    # Lock the row so two concurrent edits serialise and each audit "before" is the true before.
    loaded = {name: getattr(obj, name) for name in _loaded_relations(obj)}
    obj.refresh_from_db(from_queryset=type(obj)._base_manager.select_for_update())
    for name, related in loaded.items():  # refresh_from_db drops them; keep those still referred to
        field = obj._meta.get_field(name)
        assert isinstance(field, models.ForeignKey)  # _loaded_relations names foreign keys only
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
    save_validated(obj, changed)
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


__all__ = ["check_fields", "check_same_trial", "create_row", "full_clean", "save_validated", "update_row"]
