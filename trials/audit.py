"""The audit trail: one append-only ``AuditEvent`` per change, written in the change's own transaction.

Every action (``trials.actions``) and every row helper (``trials.records``) calls
:func:`record_audit_event` inside the transaction of the change it records, so the change and its event
commit together or not at all. ``actor`` is the user who acted (``None`` = the system: the pipeline, a
periodic sweep), ``reason`` is why in their words, ``correlation_id`` groups the events of one request
or one pipeline job (the ``X-Request-ID`` of an API call becomes it).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import models

from trials.exceptions import InvalidInputError
from trials.models import (
    Assessment,
    AuditEvent,
    ImagingSeries,
    Lesion,
    LesionObservation,
    Patient,
    ProcessingJob,
    ReceivedStudy,
    SegmentationRun,
    Site,
    SubjectMapping,
    Timepoint,
    Trial,
    TrialMembership,
    TrialPacsSettings,
)

#: ``actor_name`` written for changes made by the system (pipeline, management commands).
SYSTEM_ACTOR_NAME = "system"


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
    if isinstance(obj, ReceivedStudy | TrialPacsSettings):
        return obj.trial
    if isinstance(obj, SubjectMapping):
        return obj.site.trial
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


__all__ = ["SYSTEM_ACTOR_NAME", "new_correlation_id", "record_audit_event", "snapshot", "trial_of"]
