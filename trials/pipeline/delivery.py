"""Sending a visit's results (SEG, RTSTRUCT, SR of the measurements) to the trial's PACS destinations, with retries.

:func:`queue_deliveries` records one ``PacsDelivery`` per active destination whose trigger matches (the
AI results exist: ``ai_draft``, called by the analysis stage; a radiologist signed: ``signed``, called by
the signature actions) and hands each to the worker after commit (task ``mettrack.pacs.deliver``, queue
``default``); in embedded mode a background thread of this process sends it. The unique constraint
(destination, run) makes a second request for the same results a no-op.

:func:`send_delivery` is one attempt: C-STORE to an AE or STOW-RS to a DICOMweb URL
(``segmentation.scu``). A failure records the attempt and its error and raises :class:`DeliveryError`,
which the task retries with exponential backoff (``PACS_SEND_BACKOFF_S`` doubled up to
``PACS_SEND_BACKOFF_MAX_S``, ``PACS_SEND_MAX_RETRIES`` times); the last failure leaves the delivery
``failed``. Sending never touches the assessment: a destination that is down delays nothing else.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from config.celery import app
from segmentation.errors import ImagingError
from segmentation.scu import SendError, send_cstore, send_stow
from segmentation.sr import LesionMeasurement, VisitResponse, write_measurement_report
from trials.choices import AssessmentStatus, Criteria, DeliveryProtocol, DeliveryState
from trials.models import Assessment, LesionObservation, PacsDelivery, PacsDestination, SegmentationRun
from trials.pipeline import queue as job_queue
from trials.pipeline.contours import lesion_tracking_uid
from trials.storage import media_path, run_file_name, run_file_path, series_source_dir, write_file

logger = logging.getLogger(__name__)

DELIVER_TASK = "mettrack.pacs.deliver"
#: Kinds a destination may get: the run's SEG and RTSTRUCT, and the SR of its measurements (made from the
#: SEG and the visit's observations when first sent, kept beside them).
KINDS = ("seg", "rtstruct", "sr")
SR_FILE = "measurements-sr.dcm"
#: The SR of a visit's assessment ``pk`` in ``status`` (a new one when a reader signs or overrides).
SR_ASSESSMENT_FILE = "measurements-sr-a{pk}-{status}.dcm"


class DeliveryError(Exception):
    """One attempt failed (destination down or refusing): retried with backoff."""


def max_retries() -> int:
    return int(getattr(settings, "PACS_SEND_MAX_RETRIES", 8))


def backoff_s(retry: int) -> float:
    """Seconds before retry number ``retry`` (0 = the first retry)."""
    base = float(getattr(settings, "PACS_SEND_BACKOFF_S", 2.0))
    return min(base * 2.0**retry, float(getattr(settings, "PACS_SEND_BACKOFF_MAX_S", 300.0)))


def queue_deliveries(run: SegmentationRun, *, trigger: str) -> list[PacsDelivery]:
    """Record (once) and dispatch the deliveries of a run's results to destinations with ``trigger``."""
    timepoint = run.series.timepoint
    destinations = PacsDestination.objects.filter(
        trial_id=timepoint.patient.trial_id, trigger=trigger, is_active=True
    )
    created = []
    for destination in destinations:
        # The SR needs the SEG (its segments are what it measures).
        kinds = [
            kind
            for kind in KINDS
            if kind in destination.sends and getattr(run, f"{'seg' if kind == 'sr' else kind}_file")
        ]
        if not kinds:
            continue
        try:
            with transaction.atomic():
                delivery = PacsDelivery.objects.create(
                    destination=destination, segmentation_run=run, timepoint=timepoint, sent_objects=kinds
                )
        except IntegrityError:
            continue  # already sent, or being sent, to this destination
        created.append(delivery)
        transaction.on_commit(functools.partial(dispatch, delivery.pk))
    return created


def dispatch(delivery_id: int) -> None:
    """Hand a delivery to the worker, or to a background thread in embedded mode."""
    if job_queue.embedded_mode():
        threading.Thread(target=_send_with_retries, args=(delivery_id,), daemon=True).start()
        return
    try:
        app.send_task(DELIVER_TASK, kwargs={"delivery_id": delivery_id}, queue=job_queue.DEFAULT_QUEUE)
    except Exception:  # the broker is away: the delivery stays queued, shown as such
        logger.exception("delivery %s could not be handed to the broker", delivery_id)


def _send_with_retries(delivery_id: int) -> None:
    """Embedded mode: the task's retry policy in a thread."""
    try:
        for retry in range(max_retries() + 1):
            try:
                send_delivery(delivery_id, final=retry == max_retries())
                return
            except DeliveryError:
                if retry < max_retries():
                    time.sleep(backoff_s(retry))
    finally:
        connection.close()


def _visit_response(assessment: Assessment | None) -> VisitResponse | None:
    """The visit's RANO-BM overall response and signer as the SR reports them (None before an
    assessment; the response is empty at baseline)."""
    if assessment is None:
        return None
    signed = assessment.status != AssessmentStatus.DRAFT and assessment.signed_by is not None
    signer = ""
    if signed and assessment.signed_by is not None:
        user = assessment.signed_by
        # a DICOM person name: family^given
        signer = f"{user.last_name}^{user.first_name}" if user.last_name else user.get_username()
    return VisitResponse(assessment.overall_response, signed=signed, signer=signer[:64])


def measurement_report_path(run: SegmentationRun, assessment: Assessment | None = None) -> Path:
    """The run's SR (TID 1500) of its lesions' measurements at the visit, written once per assessment.

    Each lesion carries its tracking UID (as in the SEG) and RANO-BM role (``new`` when first seen after
    baseline); ``assessment`` (by default the visit's current RANO-BM one) gives the response, with its
    signer once signed.

    Raises:
        SendError: the run has no SEG, or the report cannot be made.
    """
    timepoint = run.series.timepoint
    if assessment is None:
        assessment = (
            Assessment.objects.filter(timepoint=timepoint, criteria=Criteria.RANO_BM, is_current=True)
            .select_related("signed_by")
            .first()
        )
    file_name = (
        SR_ASSESSMENT_FILE.format(pk=assessment.pk, status=assessment.status)
        if assessment is not None
        else SR_FILE
    )
    name = run_file_name(run, file_name)
    path = media_path(name)
    if path.exists():
        return path
    seg = run_file_path(run, "seg")
    if seg is None:
        raise SendError("the run has no SEG for a measurement report")
    observations = LesionObservation.objects.filter(segmentation_run=run, present=True).select_related(
        "lesion__first_seen_timepoint"
    )
    lesions = []
    for o in observations.order_by("lesion__id"):
        first_seen = o.lesion.first_seen_timepoint
        role = "new" if first_seen is not None and not first_seen.is_baseline else o.lesion.role
        lesions.append(
            LesionMeasurement(
                o.lesion.label, o.longest_diameter_mm, o.perpendicular_diameter_mm, o.volume_mm3,
                tracking_uid=lesion_tracking_uid(o.lesion), role=role,
            )
        )  # fmt: skip
    sources = sorted(series_source_dir(run.series).glob("*.dcm"))
    response = _visit_response(assessment)
    try:
        return write_file(
            name,
            lambda out: write_measurement_report(
                seg, sources, lesions, out, response=response, time_point=timepoint.visit_label
            ),
            lambda out: None,
            needed_bytes=16 * 1024**2,
        )
    except ImagingError as exc:
        raise SendError(exc.user_message) from exc


def _paths(delivery: PacsDelivery) -> list[Path]:
    paths = []
    for kind in delivery.sent_objects:
        if kind == "sr":
            paths.append(measurement_report_path(delivery.segmentation_run))
            continue
        path = run_file_path(delivery.segmentation_run, kind)
        if path is None:
            raise SendError(f"the run's {kind.upper()} file is missing")
        paths.append(path)
    return paths


def send_delivery(delivery_id: int, *, final: bool) -> PacsDelivery:
    """One attempt at a delivery (nothing when already delivered).

    Args:
        final: The last attempt: a failure leaves the delivery ``failed`` instead of ``queued``.

    Raises:
        DeliveryError: the attempt failed (recorded on the delivery).
    """
    with transaction.atomic():
        delivery = (
            PacsDelivery.objects.select_for_update(of=("self",))
            .select_related("destination", "segmentation_run__series")
            .get(pk=delivery_id)
        )
        if delivery.state == DeliveryState.DELIVERED:
            return delivery
        delivery.state = DeliveryState.SENDING
        delivery.attempts += 1
        delivery.save(update_fields=["state", "attempts", "updated_at"])
    destination = delivery.destination
    try:
        paths = _paths(delivery)
        if destination.protocol == DeliveryProtocol.STOW:
            send_stow(paths, url=destination.url)
        else:
            send_cstore(
                paths,
                host=destination.host,
                port=int(destination.port or 104),
                called_ae=destination.ae_title,
                calling_ae=str(getattr(settings, "DICOM_AE_TITLE", "METTRACK")),
            )
    except SendError as exc:
        delivery.state = DeliveryState.FAILED if final else DeliveryState.QUEUED
        delivery.last_error = str(exc)[:2000]
        delivery.save(update_fields=["state", "last_error", "updated_at"])
        logger.warning("delivery %s attempt %s failed: %s", delivery.pk, delivery.attempts, exc)
        raise DeliveryError(str(exc)) from exc
    delivery.state = DeliveryState.DELIVERED
    delivery.delivered_at = timezone.now()
    delivery.save(update_fields=["state", "delivered_at", "updated_at"])
    logger.info("delivery %s delivered after %s attempt(s)", delivery.pk, delivery.attempts)
    return delivery


__all__ = [
    "DELIVER_TASK",
    "DeliveryError",
    "backoff_s",
    "dispatch",
    "max_retries",
    "queue_deliveries",
    "send_delivery",
]
