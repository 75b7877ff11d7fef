"""Actions on received DICOM studies: route and store them, or keep them in the inbox for a data manager.

A study reaches MetTrack by C-STORE (``manage.py dicom_listener``), STOW-RS or a DICOMweb pull, always as
a folder of raw instances (``<series>/<instances>``). :func:`receive_study` decides, and records why:

1. the patient: the Clinical Trial attributes (Protocol ID names the trial, Subject ID the patient;
   PS3.3 C.7.1.3) when the site sets them, else the site's Patient ID through the subject mapping (kept
   as an HMAC, :func:`patient_key`);
2. the series: the trial's series rules (``segmentation.routing.choose_series``);
3. the visit: Time Point ID, else the study date within the trial's window of a visit's scan date
   (``segmentation.routing.choose_visit``); else a new unscheduled visit is proposed for confirmation.

A routed study goes through the upload action (``upload_series``: validation, de-identification,
storage, pipeline job), exactly as a zip upload does. One that cannot be routed is recorded in the inbox
(``ReceivedStudy`` with state ``inbox``) with its raw instances moved under ``DICOM_INBOX_DIR``; a data
manager assigns it (:func:`assign_received_study`) or discards it (:func:`discard_received_study`).
Each outcome writes an audit event; no Patient ID or name is stored, logged or audited.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import io
import logging
import shutil
import uuid
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pydicom
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from segmentation.listener import STORAGE_CLASSES
from segmentation.routing import (
    ReceivedSeries,
    SeriesChoice,
    SeriesRules,
    Visit,
    VisitChoice,
    choose_series,
    choose_visit,
    study_from_folder,
)
from segmentation.routing import (
    ReceivedStudy as StudyHeaders,
)
from segmentation.scu import find_studies, retrieve_study
from segmentation.spool import Spool
from trials.actions.imaging import upload_series
from trials.actions.patients import create_timepoint
from trials.audit import new_correlation_id, record_audit_event
from trials.choices import DeliveryProtocol, ReceiveChannel, ReceivedStudyState, SeriesSource
from trials.exceptions import (
    DuplicateError,
    DuplicateSeriesError,
    InvalidInputError,
    InvalidStateError,
    UploadRejectedError,
)
from trials.models import (
    ImagingSeries,
    PacsDestination,
    Patient,
    ReceivedStudy,
    SubjectMapping,
    Timepoint,
    Trial,
    TrialPacsSettings,
)
from trials.records.base import create_row, update_row

logger = logging.getLogger(__name__)


def patient_key(patient_id: str) -> str:
    """HMAC-SHA256 (hex) of a site's Patient ID under ``DICOM_ID_KEY`` ('' for an empty ID).

    The key defaults to one derived from ``SECRET_KEY``; the hash is what the subject mapping stores.
    """
    patient_id = patient_id.strip()
    if not patient_id:
        return ""
    key = getattr(settings, "DICOM_ID_KEY", "") or f"mettrack-patient-id:{settings.SECRET_KEY}"
    return hmac.new(key.encode(), patient_id.encode(), hashlib.sha256).hexdigest()


def series_rules(trial: Trial) -> SeriesRules:
    """The trial's series rules (defaults when it has no PACS settings)."""
    pacs = TrialPacsSettings.objects.filter(trial=trial).first()
    return SeriesRules.from_dict(pacs.series_rules if pacs else None)


def _visit_window_days(trial: Trial) -> int:
    pacs = TrialPacsSettings.objects.filter(trial=trial).first()
    return pacs.visit_window_days if pacs else 14


@dataclass(frozen=True)
class Routing:
    """The decision on one study; ``inbox_reason`` is empty when every part was decided."""

    patient: Patient | None
    timepoint: Timepoint | None
    series: SeriesChoice | None
    visit: VisitChoice | None
    reasons: dict[str, Any] = field(default_factory=dict)
    inbox_reason: str = ""

    @property
    def trial(self) -> Trial | None:
        return self.patient.trial if self.patient else None


def _trial_by_protocol(protocol_id: str) -> Trial | None:
    wanted = protocol_id.strip()
    by_setting = Trial.objects.filter(pacs_settings__protocol_id__iexact=wanted).first()
    return by_setting or Trial.objects.filter(code__iexact=wanted).first()


def route_patient(study: StudyHeaders) -> tuple[Patient | None, str]:
    """The patient a study belongs to, and why (or why none)."""
    protocol = study.trial.get("ClinicalTrialProtocolID", "")
    subject = study.trial.get("ClinicalTrialSubjectID", "")
    if protocol and subject:
        trial = _trial_by_protocol(protocol)
        if trial is None:
            return None, f"Clinical Trial Protocol ID '{protocol}' names no trial"
        patient = Patient.objects.filter(trial=trial, subject_id__iexact=subject.strip()).first()
        if patient is None:
            return None, f"Clinical Trial Subject ID '{subject}' names no patient of trial {trial.code}"
        return patient, f"Clinical Trial attributes: protocol '{protocol}', subject '{subject}'"
    if not study.patient_key:
        return None, "no Clinical Trial attributes and no Patient ID"
    mappings = list(
        SubjectMapping.objects.filter(patient_id_hmac=study.patient_key).select_related("patient")
    )
    if len({m.patient_id for m in mappings}) == 1:
        return mappings[0].patient, "the site's Patient ID is mapped to this subject"
    if mappings:
        return None, "the site's Patient ID is mapped to several subjects (of different sites)"
    return None, "unknown patient: no Clinical Trial attributes and the Patient ID is not mapped to a subject"


def route_study(study: StudyHeaders, *, only_trials: Collection[int] | None = None) -> Routing:
    """Decide patient, series and visit of a study (nothing is written).

    Args:
        study: The received study's headers.
        only_trials: Ids of the trials the sender may store into (None: any); a study of another trial
            goes to the inbox.
    """
    patient, patient_reason = route_patient(study)
    reasons: dict[str, Any] = {"patient": patient_reason}
    if patient is None:
        return Routing(None, None, None, None, reasons, patient_reason)
    if only_trials is not None and patient.trial_id not in only_trials:
        why = f"the sender may not store studies of trial {patient.trial.code}"
        return Routing(patient, None, None, None, reasons, why)
    choice = choose_series(study.series, series_rules(patient.trial))
    reasons["series"] = choice.as_dict()
    timepoints = {tp.pk: tp for tp in patient.timepoints.all()}
    visits = [Visit(tp.pk, tp.visit_label, tp.scan_date) for tp in timepoints.values()]
    visit = choose_visit(
        visits,
        time_point_id=study.trial.get("ClinicalTrialTimePointID"),
        study_date=study.study_date,
        window_days=_visit_window_days(patient.trial),
    )
    reasons["visit"] = visit.reason
    timepoint = timepoints[visit.visit.key] if visit.visit else None
    inbox = ""
    if choice.selected is None:
        inbox = choice.reason
    elif timepoint is None:
        inbox = visit.reason
    return Routing(patient, timepoint, choice, visit, reasons, inbox)


def _series_summary(study: StudyHeaders, choice: SeriesChoice | None) -> list[dict[str, Any]]:
    verdicts = {v.series_instance_uid: v for v in choice.verdicts} if choice else {}
    rows = []
    for series in study.series:
        row = series.as_dict()
        verdict = verdicts.get(series.series_instance_uid)
        if verdict is not None:
            row.update(passed=verdict.passed, reasons=list(verdict.reasons))
        rows.append(row)
    return rows


def _store(
    received: ReceivedStudy, timepoint: Timepoint, series_folder: Path, *, actor: Any | None, reason: str
) -> tuple[str, str, ImagingSeries | None]:
    """Upload one series folder to a visit; return the state to record (routed or assigned: ''), why,
    and the stored series (the existing one for a duplicate)."""
    try:
        result = upload_series(
            timepoint,
            series_folder,
            source=SeriesSource.PACS,
            actor=actor,
            reason=f"{reason} ({received.get_channel_display()} from {received.sender_ae_title or 'an unknown AE'})",
        )
    except DuplicateSeriesError as exc:
        return ReceivedStudyState.DUPLICATE, "the series is already stored (sent again)", exc.existing
    except UploadRejectedError as exc:
        return ReceivedStudyState.REJECTED, exc.message, None
    return "", f"stored as series {result.series.pk} of visit {timepoint.visit_label}", result.series


def receive_study(
    folder: str | Path,
    *,
    channel: str,
    sender_ae_title: str = "",
    sender_host: str = "",
    only_trials: Collection[int] | None = None,
    actor: Any | None = None,
    correlation_id: str = "",
) -> ReceivedStudy:
    """Route a received study (a folder ``<series>/<instances>``), store it or put it in the inbox.

    The folder is consumed: deleted once the series is stored (or found a duplicate, or rejected), moved
    under ``DICOM_INBOX_DIR`` when the study goes to the inbox.

    Args:
        folder: The study's folder.
        channel: ``ReceiveChannel`` value. sender_ae_title, sender_host: Who sent it.
        only_trials: Trials the sender may store into (see :func:`route_study`).
        actor: The sending user (STOW-RS), None for a DICOM node.

    Returns:
        The recorded ``ReceivedStudy``.

    Raises:
        InsufficientStorageError: no room to store the series (the folder is left in place).
    """
    folder = Path(folder)
    correlation_id = correlation_id or new_correlation_id()
    study = study_from_folder(folder, patient_key=patient_key)
    routing = route_study(study, only_trials=only_trials)
    received = ReceivedStudy(
        channel=channel,
        sender_ae_title=sender_ae_title[:16],
        sender_host=sender_host[:255],
        study_instance_uid=study.study_instance_uid[:64],
        study_date=study.study_date,
        patient_key=study.patient_key,
        clinical_trial=study.trial,
        series=_series_summary(study, routing.series),
        decision=routing.reasons,
        trial=routing.trial,
        patient=routing.patient,
        timepoint=routing.timepoint,
        proposed_visit_label=routing.visit.proposed_label if routing.visit else "",
    )
    if routing.inbox_reason:
        inbox_dir = Path(settings.DICOM_INBOX_DIR)
        inbox_dir.mkdir(parents=True, exist_ok=True)
        name = f"study-{uuid.uuid4().hex}"
        shutil.move(str(folder), inbox_dir / name)
        received.inbox_folder = name
        received.state = ReceivedStudyState.INBOX
        received.reason = routing.inbox_reason
    else:
        assert routing.timepoint is not None and routing.series is not None and routing.series.selected
        state, why, received.imaging_series = _store(
            received,
            routing.timepoint,
            folder / routing.series.selected.folder,
            actor=actor,
            reason=f"received by {channel}: {routing.series.reason}",
        )
        received.state = state or ReceivedStudyState.ROUTED
        received.reason = why
    _record(received, action="receive", actor=actor, correlation_id=correlation_id)
    if folder.exists():
        shutil.rmtree(folder, ignore_errors=True)
    logger.info("received study %s: %s (%d series)", received.pk, received.state, len(study.series))
    return received


@transaction.atomic
def _record(received: ReceivedStudy, *, action: str, actor: Any | None, correlation_id: str) -> None:
    received.save()
    record_audit_event(
        actor=actor,
        action=action,
        obj=received,
        after={
            "state": received.state,
            "reason": received.reason,
            "channel": received.channel,
            "sender_ae_title": received.sender_ae_title,
            "patient_id": received.patient_id,
            "timepoint_id": received.timepoint_id,
            "imaging_series_id": received.imaging_series_id,
            "decision": received.decision,
        },
        reason=received.reason,
        correlation_id=correlation_id,
    )


PACS_SETTINGS_FIELDS = ("protocol_id", "series_rules", "visit_window_days", "viewer_url_template")


@transaction.atomic
def set_pacs_settings(
    trial: Trial, *, actor: Any | None, reason: str = "", correlation_id: str = "", **changes: Any
) -> TrialPacsSettings:
    """Create or change a trial's PACS settings (protocol id, series rules, visit window, viewer URL).

    Raises:
        InvalidInputError: an unknown field, or series rules ``SeriesRules`` refuses.
    """
    unknown = sorted(set(changes) - set(PACS_SETTINGS_FIELDS))
    if unknown:
        raise InvalidInputError(f"Unknown PACS setting(s): {', '.join(unknown)}.")
    if "series_rules" in changes:
        try:
            SeriesRules.from_dict(changes["series_rules"])
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(str(exc), {"series_rules": [str(exc)]}) from exc
    correlation_id = correlation_id or new_correlation_id()
    current = TrialPacsSettings.objects.filter(trial=trial).first()
    if current is None:
        return create_row(
            TrialPacsSettings,
            actor=actor,
            reason=reason,
            correlation_id=correlation_id,
            trial=trial,
            **changes,
        )
    return update_row(
        current,
        changes,
        allowed=PACS_SETTINGS_FIELDS,
        actor=actor,
        reason=reason,
        correlation_id=correlation_id,
    )


DESTINATION_FIELDS = ("name", "protocol", "ae_title", "host", "port", "url", "sends", "trigger", "is_active")
#: What a destination may be sent (files of a segmentation run).
SENDABLE = ("seg", "rtstruct", "sr")


def _check_destination(values: dict[str, Any]) -> None:
    errors: dict[str, list[str]] = {}
    sends = values.get("sends") or []
    if not isinstance(sends, list) or not sends or any(kind not in SENDABLE for kind in sends):
        errors["sends"] = [f"A non-empty list of {', '.join(SENDABLE)}."]
    if values.get("protocol") == DeliveryProtocol.CSTORE:
        for name in ("ae_title", "host", "port"):
            if not values.get(name):
                errors[name] = ["Required for C-STORE."]
    elif values.get("protocol") == DeliveryProtocol.STOW and not str(values.get("url") or "").startswith(
        ("http://", "https://")
    ):
        errors["url"] = ["The DICOMweb root (http:// or https://) is required for STOW-RS."]
    if errors:
        raise InvalidInputError(
            "Invalid destination: " + "; ".join(f"{k}: {v[0]}" for k, v in errors.items()), errors
        )


@transaction.atomic
def create_destination(
    trial: Trial, *, actor: Any | None, reason: str = "", correlation_id: str = "", **values: Any
) -> PacsDestination:
    """Add a PACS destination to a trial (audited).

    Raises:
        InvalidInputError: missing connection details for the protocol, or an invalid ``sends``.
        DuplicateError: the trial has a destination of that name.
    """
    unknown = sorted(set(values) - set(DESTINATION_FIELDS))
    if unknown:
        raise InvalidInputError(f"Unknown destination field(s): {', '.join(unknown)}.")
    _check_destination(values)
    return create_row(
        PacsDestination,
        actor=actor,
        reason=reason,
        correlation_id=correlation_id or new_correlation_id(),
        trial=trial,
        **values,
    )


@transaction.atomic
def update_destination(
    destination: PacsDestination,
    *,
    actor: Any | None,
    reason: str = "",
    correlation_id: str = "",
    **changes: Any,
) -> PacsDestination:
    """Change a PACS destination (audited); deliveries already made are kept as they were."""
    merged = {name: getattr(destination, name) for name in DESTINATION_FIELDS} | changes
    _check_destination(merged)
    return update_row(
        destination,
        changes,
        allowed=DESTINATION_FIELDS,
        actor=actor,
        reason=reason,
        correlation_id=correlation_id or new_correlation_id(),
    )


def inbox_path(received: ReceivedStudy) -> Path:
    """Folder of an inbox study's raw instances."""
    return Path(settings.DICOM_INBOX_DIR) / received.inbox_folder


def _locked_inbox_item(received: ReceivedStudy) -> ReceivedStudy:
    locked = ReceivedStudy.objects.select_for_update(of=("self",)).get(pk=received.pk)
    if locked.state != ReceivedStudyState.INBOX:
        raise InvalidStateError(f"Received study {locked.pk} is no longer in the inbox ({locked.state}).")
    return locked


def _pick_series(received: ReceivedStudy, patient: Patient, series_uid: str) -> dict[str, Any]:
    series = received.series
    if series_uid:
        for row in series:
            if row["series_instance_uid"] == series_uid:
                return row
        raise InvalidInputError(
            "This study has no series with that Series Instance UID.",
            {"series_instance_uid": ["Not in this study."]},
        )
    choice = choose_series(
        [_as_received_series(row) for row in series],
        series_rules(patient.trial),
    )
    if choice.selected is None:
        raise InvalidInputError(
            "No series of this study passes the trial's series rules; name the series to store.",
            {"series_instance_uid": ["Required: no series passes the rules."]},
        )
    return next(row for row in series if row["series_instance_uid"] == choice.selected.series_instance_uid)


def _as_received_series(row: dict[str, Any]) -> ReceivedSeries:
    """A series of the stored summary (``ReceivedStudy.series``) as routing reads it."""
    keys = ReceivedSeries.__dataclass_fields__
    return ReceivedSeries(**{k: v for k, v in row.items() if k in keys})


def assign_received_study(
    received: ReceivedStudy,
    *,
    timepoint: Timepoint | None = None,
    patient: Patient | None = None,
    visit_label: str = "",
    scan_date: dt.date | None = None,
    series_uid: str = "",
    remember_patient_id: bool = False,
    actor: Any | None,
    reason: str = "",
    correlation_id: str = "",
) -> ReceivedStudy:
    """Assign an inbox study to a visit (an existing one, or a new one of ``patient``) and store it.

    Args:
        received: A study in the inbox.
        timepoint: The visit it belongs to; or None with ``patient`` and ``visit_label`` (and
            ``scan_date``, default the study date) to create a new (unscheduled) visit.
        series_uid: The series to store (default: the one the trial's rules pick).
        remember_patient_id: Map the sender's Patient ID (its hash) to the patient, so later studies of
            this patient are routed without the inbox.
        actor, reason, correlation_id: For the audit trail.

    Raises:
        InvalidStateError: the study is no longer in the inbox.
        InvalidInputError: no visit given, a series not in the study, or none passing the rules.
    """
    correlation_id = correlation_id or new_correlation_id()
    with transaction.atomic():
        locked = _locked_inbox_item(received)
        if timepoint is None:
            if patient is None or not visit_label:
                raise InvalidInputError("Name a visit, or a patient and the label of a new visit.")
            timepoint = create_timepoint(
                patient,
                visit_label=visit_label,
                scan_date=scan_date or locked.study_date,
                actor=actor,
                reason=reason or f"unscheduled visit confirmed for received study {locked.pk}",
                correlation_id=correlation_id,
            )
        patient = timepoint.patient
        row = _pick_series(locked, patient, series_uid)
    folder = inbox_path(locked)
    if not folder.exists():
        raise InvalidStateError(f"The instances of received study {locked.pk} are no longer on disk.")
    state, why, stored = _store(
        locked, timepoint, folder / row["folder"], actor=actor, reason=reason or "assigned from the inbox"
    )
    with transaction.atomic():
        locked = _locked_inbox_item(locked)
        locked.imaging_series = stored
        locked.state = state or ReceivedStudyState.ASSIGNED
        locked.reason = why
        locked.trial, locked.patient, locked.timepoint = patient.trial, patient, timepoint
        locked.resolved_by = actor if getattr(actor, "is_authenticated", False) else None
        locked.resolved_at = timezone.now()
        locked.decision = {
            **locked.decision,
            "assigned": {"series": row["series_instance_uid"], "reason": reason},
        }
        if state in ("", ReceivedStudyState.DUPLICATE):
            locked.inbox_folder = ""
        _record(locked, action="assign", actor=actor, correlation_id=correlation_id)
        if remember_patient_id and locked.patient_key:
            _map(patient, locked.patient_key, actor=actor, correlation_id=correlation_id)
    if not locked.inbox_folder:
        shutil.rmtree(folder, ignore_errors=True)
    return locked


def discard_received_study(
    received: ReceivedStudy, *, actor: Any | None, reason: str, correlation_id: str = ""
) -> ReceivedStudy:
    """Discard an inbox study: its raw instances are deleted, the row stays (audited).

    Raises:
        InvalidStateError: the study is no longer in the inbox.
        InvalidInputError: no reason given.
    """
    if not reason.strip():
        raise InvalidInputError("Say why the study is discarded.", {"reason": ["This field is required."]})
    with transaction.atomic():
        locked = _locked_inbox_item(received)
        folder = inbox_path(locked)
        locked.state = ReceivedStudyState.DISCARDED
        locked.reason = reason
        locked.inbox_folder = ""
        locked.resolved_by = actor if getattr(actor, "is_authenticated", False) else None
        locked.resolved_at = timezone.now()
        _record(locked, action="discard", actor=actor, correlation_id=correlation_id or new_correlation_id())
    shutil.rmtree(folder, ignore_errors=True)
    return locked


def _map(patient: Patient, key: str, *, actor: Any | None, correlation_id: str) -> SubjectMapping:
    mapping, created = SubjectMapping.objects.get_or_create(
        site=patient.site, patient_id_hmac=key, defaults={"patient": patient}
    )
    if mapping.patient_id != patient.pk:
        raise DuplicateError("This Patient ID is already mapped to another subject of this site.")
    if created:
        # The audit records that a mapping exists, never the Patient ID nor its hash.
        record_audit_event(
            actor=actor,
            action="map_patient_id",
            obj=mapping,
            after={"patient_id": patient.pk, "site_id": patient.site_id},
            correlation_id=correlation_id,
        )
    return mapping


@transaction.atomic
def map_subject(
    patient: Patient, patient_id: str, *, actor: Any | None, correlation_id: str = ""
) -> SubjectMapping:
    """Map a site's Patient ID to a trial subject (only its HMAC is stored).

    Raises:
        InvalidInputError: an empty Patient ID.
        DuplicateError: the Patient ID is mapped to another subject of the patient's site.
    """
    key = patient_key(patient_id)
    if not key:
        raise InvalidInputError("The Patient ID is empty.", {"patient_id": ["This field is required."]})
    return _map(patient, key, actor=actor, correlation_id=correlation_id or new_correlation_id())


@dataclass(frozen=True)
class InstancesResult:
    """What :func:`receive_instances` did with each instance and study.

    Attributes:
        studies: The received studies recorded (one per study among the instances).
        accepted: (SOP Class UID, SOP Instance UID) of the instances spooled and routed.
        failed: (SOP Class UID, SOP Instance UID, failure reason code of PS3.18 / PS3.4 B.2.3) of the
            instances refused: 0xC000 unreadable, 0x0122 SOP class not supported.
    """

    studies: list[ReceivedStudy]
    accepted: list[tuple[str, str]]
    failed: list[tuple[str, str, int]]


def receive_instances(
    instances: Iterable[bytes],
    *,
    channel: str,
    sender_ae_title: str = "",
    sender_host: str = "",
    only_trials: Collection[int] | None = None,
    actor: Any | None = None,
) -> InstancesResult:
    """Receive DICOM instances (Part 10 bytes, e.g. the parts of a STOW-RS request) as complete studies.

    The instances are spooled (as the listener does), grouped by study and series, and each study goes
    through :func:`receive_study`. Instances of another SOP class than MR images are refused.
    """
    from segmentation.spool import Sender

    spool = Spool(Path(settings.DICOM_SPOOL_DIR) / f"{channel}-{uuid.uuid4().hex}")
    sender = Sender(sender_ae_title, sender_host)
    accepted: list[tuple[str, str]] = []
    failed: list[tuple[str, str, int]] = []
    try:
        for data in instances:
            try:
                header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
                sop_class = str(header.get("SOPClassUID", ""))
                sop_uid = str(header.get("SOPInstanceUID", ""))
                study_uid = str(header.get("StudyInstanceUID", ""))
                series_uid = str(header.get("SeriesInstanceUID", ""))
            except Exception:
                failed.append(("", "", 0xC000))
                continue
            if sop_class not in STORAGE_CLASSES:
                failed.append((sop_class, sop_uid, 0x0122))
                continue
            if not (sop_uid and study_uid and series_uid):
                failed.append((sop_class, sop_uid, 0xC000))
                continue
            spool.store(data, study_uid=study_uid, series_uid=series_uid, sop_uid=sop_uid, sender=sender)
            accepted.append((sop_class, sop_uid))
        folders = spool.complete(p.name for p in spool.incoming.iterdir())
        studies = [
            receive_study(
                folder,
                channel=channel,
                sender_ae_title=sender_ae_title,
                sender_host=sender_host,
                only_trials=only_trials,
                actor=actor,
            )
            for folder in folders
        ]
    finally:
        shutil.rmtree(spool.root, ignore_errors=True)
    return InstancesResult(studies, accepted, failed)


def pull_studies(source_url: str, *, headers: dict[str, str] | None = None) -> list[ReceivedStudy]:
    """Pull mode: fetch the new studies of every trial with PACS settings from a DICOMweb source.

    For each trial, QIDO-RS finds the studies whose Clinical Trial Protocol ID is the trial's
    (``TrialPacsSettings.protocol_id``, else its code); those not received before (by Study Instance UID)
    are retrieved by WADO-RS and received like a STOW-RS upload (routed, stored, or put in the inbox). A
    site Patient ID cannot be searched: MetTrack keeps only its hash, so pull finds studies by the trial
    attributes alone.

    Raises:
        SendError: the source could not be queried (nothing received for the trials not reached).
    """
    received: list[ReceivedStudy] = []
    host = urlparse(source_url).netloc[:255]
    for pacs in TrialPacsSettings.objects.select_related("trial").order_by("trial__code"):
        protocol = pacs.protocol_id or pacs.trial.code
        for study_uid in find_studies(source_url, {"ClinicalTrialProtocolID": protocol}, headers=headers):
            if ReceivedStudy.objects.filter(study_instance_uid=study_uid).exists():
                continue
            instances = retrieve_study(source_url, study_uid, headers=headers)
            result = receive_instances(instances, channel=ReceiveChannel.PULL, sender_host=host)
            received.extend(result.studies)
    if received:
        logger.info("pulled %d new study(ies) from the DICOMweb source", len(received))
    return received


__all__ = [
    "create_destination",
    "update_destination",
    "pull_studies",
    "PACS_SETTINGS_FIELDS",
    "set_pacs_settings",
    "InstancesResult",
    "receive_instances",
    "Routing",
    "assign_received_study",
    "discard_received_study",
    "inbox_path",
    "map_subject",
    "patient_key",
    "receive_study",
    "route_patient",
    "route_study",
    "series_rules",
]
