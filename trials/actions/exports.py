"""Actions on exports: a data manager downloads a trial's data as CSV; every download is audited."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from django.db import transaction

from trials.audit import record_audit_event
from trials.choices import AuditAction
from trials.exports import ExportFilters, export_filename, open_export
from trials.models import Trial


@dataclass(frozen=True)
class TrialExport:
    """One export of a trial: its download file name and the lazily streamed CSV text."""

    filename: str
    chunks: Iterator[str]


@transaction.atomic
def export_trial(
    trial: Trial, kind: str, filters: ExportFilters, *, actor: Any, correlation_id: str = ""
) -> TrialExport:
    """Check an export request, record it in the audit trail (who, which file, which filters), and return
    the CSV to stream (the event is written before the first byte is sent).

    Permission checks are the caller's (``trials.exports.access.trial_for_export``).

    Raises:
        UnknownExportKindError: ``kind`` is not an export.
        ExportError: a filter the trial cannot answer (e.g. a site code it does not have).
    """
    chunks = open_export(kind, trial, filters)
    filename = export_filename(trial, kind, filters)
    record_audit_event(
        actor=actor,
        action=AuditAction.EXPORT,
        trial=trial,
        object_type="trials.trial",
        object_id=str(trial.pk),
        object_repr=filename,
        after={"kind": kind, "file": filename, "filters": filters.as_dict()},
        correlation_id=correlation_id,
    )
    return TrialExport(filename=filename, chunks=chunks)


__all__ = ["TrialExport", "export_trial"]
