"""The audit trail: one append-only ``AuditEvent`` per change, written in the change's own transaction.

Every action (``trials.actions``) and every row helper (``trials.records``) calls
:func:`record_audit_event` inside the transaction of the change it records, so the change and its event
commit together or not at all. ``actor`` is the user who acted (``None`` = the system: the pipeline, a
periodic sweep), ``reason`` is why in their words, ``correlation_id`` groups the events of one request
or one pipeline job (the ``X-Request-ID`` of an API call becomes it).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import models, transaction
from django.utils import timezone

from trials.exceptions import InvalidInputError
from trials.models import (
    Assessment,
    AuditChainHead,
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
    TrainingSet,
    Trial,
    TrialMembership,
    TrialModel,
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
    if isinstance(obj, ReceivedStudy | TrialPacsSettings | TrialModel | TrainingSet):
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
    event = AuditEvent(
        actor=actor,
        actor_name=_actor_name(actor),
        action=action,
        trial=trial,
        object_type=object_type,
        object_id=object_id or "",
        object_repr=(object_repr or "")[:255],
        before=_json_safe(before),
        after=_json_safe(after),
        reason=reason or "",
        correlation_id=correlation_id or new_correlation_id(),
    )
    with transaction.atomic():
        _append_to_chain(event)
    return event


# ----------------------------------------------------------------------------------- the hash chain


def _json_safe(data: dict[str, Any] | None) -> dict[str, Any] | None:
    """The value as it reads back from the JSON column (dates as strings), so the hash is stable."""
    return None if data is None else json.loads(json.dumps(data, cls=DjangoJSONEncoder))


#: The fields an event's hash covers, in this order (everything but the id and the hash itself).
HASHED_FIELDS = (
    "seq",
    "prev_hash",
    "created_at",
    "actor_id",
    "actor_name",
    "action",
    "trial_id",
    "object_type",
    "object_id",
    "object_repr",
    "before",
    "after",
    "reason",
    "correlation_id",
)


def event_hash(event: AuditEvent) -> str:
    """SHA-256 (hex) of an event's content and its ``prev_hash``: canonical JSON of :data:`HASHED_FIELDS`
    (sorted keys, no spaces, times in UTC ISO 8601 to the microsecond)."""
    content: dict[str, Any] = {}
    for name in HASHED_FIELDS:
        value = getattr(event, name)
        if name == "created_at":
            value = value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        content[name] = value
    text = json.dumps(
        content, sort_keys=True, separators=(",", ":"), ensure_ascii=True, cls=DjangoJSONEncoder
    )
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _append_to_chain(event: AuditEvent) -> None:
    """Link ``event`` to the end of the chain and insert it.

    The head row is locked first (``SELECT ... FOR UPDATE`` on PostgreSQL; the UPDATE takes SQLite's
    write lock), and stays locked until the caller's transaction ends, so two transactions never link to
    the same predecessor; a rolled-back transaction takes its events and its head update with it. The
    cost is one indexed row lock per transaction that writes audit events.
    """
    head = AuditChainHead.objects.select_for_update().filter(pk=1).first()
    if head is None:
        AuditChainHead.objects.get_or_create(pk=1)
        head = AuditChainHead.objects.select_for_update().get(pk=1)
    event.seq = head.last_seq + 1
    event.prev_hash = head.last_hash
    event.created_at = timezone.now()
    event.hash = event_hash(event)
    event.save(force_insert=True)
    AuditChainHead.objects.filter(pk=1).update(last_seq=event.seq, last_hash=event.hash)


@dataclass(frozen=True)
class ChainReport:
    """What :func:`verify_chain` found: ``ok``, events checked, and the first broken link (seq, why)."""

    ok: bool
    checked: int
    broken_at: int | None = None
    problem: str = ""


def verify_chain(*, batch_size: int = 2000) -> ChainReport:
    """Recompute the hash chain over every audit event in ``seq`` order; report the first broken link.

    Finds an edited row (its hash no longer matches its content), a deleted or inserted one (a gap in
    ``seq``, or a ``prev_hash`` that is not the previous row's hash), reordered rows (the same), and a
    cut-off tail (the chain head names a later event than the last row).
    """
    expected_seq, prev_hash, checked = 1, "", 0
    rows = AuditEvent.objects.order_by("seq").iterator(chunk_size=batch_size)
    for event in rows:
        problem = ""
        if event.seq != expected_seq:
            problem = (
                f"expected event #{expected_seq} of the chain, found #{event.seq} (a row is missing or added)"
            )
        elif event.prev_hash != prev_hash:
            problem = (
                "its prev_hash is not the hash of the event before it (a row was removed, added or moved)"
            )
        elif event_hash(event) != event.hash:
            problem = "its content does not match its hash (the row was changed)"
        if problem:
            return ChainReport(ok=False, checked=checked, broken_at=expected_seq, problem=problem)
        expected_seq, prev_hash, checked = expected_seq + 1, event.hash, checked + 1
    head = AuditChainHead.objects.filter(pk=1).first()
    if head is not None and (head.last_seq, head.last_hash) != (checked, prev_hash):
        return ChainReport(
            ok=False,
            checked=checked,
            broken_at=checked + 1,
            problem=f"the chain head names event #{head.last_seq}, but the trail ends at #{checked} "
            "(events at the end were removed)",
        )
    return ChainReport(ok=True, checked=checked)


__all__ = [
    "HASHED_FIELDS",
    "SYSTEM_ACTOR_NAME",
    "ChainReport",
    "event_hash",
    "new_correlation_id",
    "record_audit_event",
    "snapshot",
    "trial_of",
    "verify_chain",
]
