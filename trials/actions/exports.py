"""Actions on exports: a data manager downloads a trial's data as CSV, or its SDTM datasets as SAS
transport files with their Define-XML; every download is audited."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from django.db import transaction

from trials.audit import record_audit_event
from trials.choices import AuditAction
from trials.exports import ExportFilters, export_filename, open_export
from trials.exports.submission import SUBMISSION_DATASETS, define_xml, xpt_bytes, xpt_filename
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
    _audit_export(trial, kind, filename, filters, actor=actor, correlation_id=correlation_id)
    return TrialExport(filename=filename, chunks=chunks)


def _audit_export(
    trial: Trial, kind: str, filename: str, filters: ExportFilters, *, actor: Any, correlation_id: str
) -> None:
    """The export's audit event: who, which file, which filters (before the first byte is sent)."""
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


@dataclass(frozen=True)
class SubmissionFile:
    """One submission file of a trial: its download name, media type and bytes."""

    filename: str
    media_type: str
    content: bytes


def export_submission_file(
    trial: Trial, name: str, filters: ExportFilters, *, actor: Any, correlation_id: str = ""
) -> SubmissionFile:
    """An SDTM dataset as SAS XPORT v5 (``tu``, ``tr``, ``rs``) or the Define-XML describing them
    (``define``), audited like a CSV export (who, which file, which filters).

    Raises:
        UnknownExportKindError: no such submission file.
        ExportError: a filter the trial cannot answer, or a value beyond the XPT v5 limits.
    """
    if name == "define":
        content, filename, media_type = define_xml(trial), "define.xml", "application/xml"
    else:
        content = xpt_bytes(name, trial, filters)
        filename = xpt_filename(SUBMISSION_DATASETS[name])
        media_type = "application/x-sas-xport"
    with transaction.atomic():
        _audit_export(trial, name, filename, filters, actor=actor, correlation_id=correlation_id)
    return SubmissionFile(filename, media_type, content)


__all__ = ["SubmissionFile", "TrialExport", "export_submission_file", "export_trial"]
