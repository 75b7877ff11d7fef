"""A DICOM listener: C-STORE SCP (MR and enhanced MR images) with C-ECHO, writing to a spool.

:class:`DicomListener` runs a pynetdicom application entity that accepts associations only from the
allowed callers (calling AE title, optionally at a host; others are rejected at association with
"calling AE title not recognised"), writes every received instance durably to a :class:`Spool` before
acknowledging it, and hands each complete study to a callback in one routing thread:

* a study is complete when the association that sent it is released, or when no instance of it
  arrived for ``quiet_period_s`` (an aborted association, a listener restart);
* the callback gets the study's folder (``<series>/<instances>``) and its :class:`Sender`; it owns the
  folder from then on (routes it, stores it, deletes it). A callback that raises leaves the folder in
  ``failed/`` for an operator.

Logs name studies by their spool key (a digest of the Study Instance UID) and count instances: no patient
information is logged.
"""

from __future__ import annotations

import io
import logging
import shutil
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import EnhancedMRImageStorage, LegacyConvertedEnhancedMRImageStorage, MRImageStorage
from pynetdicom import AE, evt
from pynetdicom.transport import ThreadedAssociationServer

from segmentation.spool import Sender, Spool, read_sender, uid_key

logger = logging.getLogger(__name__)

#: Storage SOP classes accepted (PS3.4 B.5): MR, Enhanced MR, Legacy Converted Enhanced MR.
#: Verification SOP Class (C-ECHO, PS3.4 A.4).
VERIFICATION = "1.2.840.10008.1.1"

STORAGE_CLASSES = (MRImageStorage, EnhancedMRImageStorage, LegacyConvertedEnhancedMRImageStorage)

#: Transfer syntaxes accepted, in the order of preference (pynetdicom accepts, for each proposed context,
#: the first of these the sender proposes): lossless compressed as sent (no conversion by the sender),
#: then uncompressed, then lossy compressed last (a sender offering its lossy data uncompressed too keeps
#: it as acquired). Compressed pixels are decoded on ingest as uploads are (GDCM, pylibjpeg).
TRANSFER_SYNTAXES = (
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1 (Process 14, selection value 1)
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless (Process 14)
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired, still sent by old modalities)
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
)

#: C-STORE response statuses (PS3.4 B.2.3).
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000


@dataclass(frozen=True)
class Caller:
    """An allowed calling application entity: its AE title, and the host it must call from (any if empty)."""

    ae_title: str
    host: str = ""

    def allows(self, ae_title: str, host: str) -> bool:
        return ae_title.strip() == self.ae_title and (not self.host or host == self.host)


def parse_callers(values: Iterable[str]) -> tuple[Caller, ...]:
    """Callers from ``AE`` or ``AE@host`` strings (the ``DICOM_ALLOWED_CALLERS`` setting).

    Raises:
        ValueError: an empty AE title, or one longer than 16 characters (PS3.5 AE VR).
    """
    callers = []
    for value in values:
        ae_title, _, host = value.strip().partition("@")
        ae_title = ae_title.strip()
        if not ae_title or len(ae_title) > 16:
            raise ValueError(f"Invalid calling AE title in {value!r} (1 to 16 characters).")
        callers.append(Caller(ae_title, host.strip()))
    return tuple(callers)


@dataclass(frozen=True)
class ListenerConfig:
    """Settings of the listener.

    Attributes:
        ae_title: This node's AE title (the called AE title modalities use).
        port: TCP port; 0 lets the system choose (read it back from :attr:`DicomListener.port`).
        host: Address to bind.
        allowed_callers: Who may associate; empty refuses everyone.
        spool_dir: The spool directory.
        quiet_period_s: Seconds without an instance after which a study counts as complete.
        poll_s: How often the routing thread looks for quiet studies.
    """

    ae_title: str
    port: int
    spool_dir: Path
    allowed_callers: tuple[Caller, ...] = ()
    host: str = "0.0.0.0"
    quiet_period_s: float = 30.0
    poll_s: float = 0.5

    def __post_init__(self) -> None:
        if not self.ae_title or len(self.ae_title) > 16:
            raise ValueError("The listener's AE title must have 1 to 16 characters.")
        if self.quiet_period_s < 0 or self.poll_s <= 0:
            raise ValueError("quiet_period_s must be >= 0 and poll_s > 0.")


StudyHandler = Callable[[Path, Sender], None]


@dataclass
class _Associations:
    """Studies received per open association (completed when it is released)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    studies: dict[int, set[str]] = field(default_factory=dict)

    def add(self, assoc: Any, study: str) -> None:
        with self.lock:
            self.studies.setdefault(id(assoc), set()).add(study)

    def pop(self, assoc: Any) -> set[str]:
        with self.lock:
            return self.studies.pop(id(assoc), set())


class DicomListener:
    """The C-STORE/C-ECHO SCP and its routing thread (see the module docstring)."""

    def __init__(self, config: ListenerConfig, on_study: StudyHandler) -> None:
        self.config = config
        self.on_study = on_study
        self.spool = Spool(config.spool_dir)
        self.failed_dir = Path(config.spool_dir) / "failed"
        self.failed_dir.mkdir(parents=True, exist_ok=True)
        self._associations = _Associations()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._server: ThreadedAssociationServer | None = None
        self._router: threading.Thread | None = None
        self.ae = AE(ae_title=config.ae_title)
        self.ae.maximum_associations = 16
        self.ae.network_timeout = 60
        self.ae.add_supported_context(VERIFICATION)
        for sop_class in STORAGE_CLASSES:
            self.ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))

    @property
    def port(self) -> int:
        """The bound port (after :meth:`start`)."""
        if self._server is None:
            return self.config.port
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Recover the spool, start the server and the routing thread; return at once."""
        self.spool.recover()
        handlers: list[Any] = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_C_ECHO, lambda event: SUCCESS),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_RELEASED, self._on_released),
        ]
        self._server = self.ae.start_server(
            (self.config.host, self.config.port), block=False, evt_handlers=handlers
        )
        self._router = threading.Thread(target=self._route_loop, name="dicom-router", daemon=True)
        self._router.start()
        logger.info(
            "DICOM listener %s on port %s (%d allowed caller(s), quiet period %.0f s)",
            self.config.ae_title,
            self.port,
            len(self.config.allowed_callers),
            self.config.quiet_period_s,
        )

    def stop(self) -> None:
        """Stop accepting, let the routing thread finish the study it routes."""
        self._stop.set()
        self._wake.set()
        if self._server is not None:
            self._server.shutdown()
        if self._router is not None:
            self._router.join(timeout=600)

    def wait(self) -> None:
        """Block until :meth:`stop` (e.g. from a signal handler)."""
        self._stop.wait()

    def serve_forever(self) -> None:
        """:meth:`start`, then block until :meth:`stop`."""
        self.start()
        self.wait()

    # --- association and DIMSE handlers (pynetdicom threads) ------------------------------------

    def _on_requested(self, event: Any) -> None:
        """Reject an association from a caller that is not allowed (calling AE title not recognised)."""
        assoc = event.assoc
        calling = str(assoc.requestor.primitive.calling_ae_title).strip()
        host = str(assoc.requestor.address)
        if any(caller.allows(calling, host) for caller in self.config.allowed_callers):
            return
        logger.warning("DICOM association from %s at %s rejected: caller not allowed", calling, host)
        assoc.acse.send_reject(0x01, 0x01, 0x03)
        assoc.kill()

    def _on_store(self, event: Any) -> int:
        try:
            data = event.encoded_dataset(include_meta=True)
            header = pydicom.dcmread(
                io.BytesIO(data),
                stop_before_pixels=True,
                specific_tags=["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"],
            )
            study_uid = str(header.get("StudyInstanceUID", "") or "")
            series_uid = str(header.get("SeriesInstanceUID", "") or "")
            sop_uid = str(header.get("SOPInstanceUID", "") or event.request.AffectedSOPInstanceUID)
            if not study_uid or not series_uid:
                return CANNOT_UNDERSTAND
        except Exception:
            logger.exception("DICOM instance could not be decoded")
            return CANNOT_UNDERSTAND
        sender = Sender(str(event.assoc.requestor.ae_title).strip(), str(event.assoc.requestor.address))
        try:
            self.spool.store(data, study_uid=study_uid, series_uid=series_uid, sop_uid=sop_uid, sender=sender)
        except OSError:
            logger.exception("DICOM instance could not be written to the spool")
            return OUT_OF_RESOURCES
        self._associations.add(event.assoc, uid_key(study_uid))
        return SUCCESS

    def _on_released(self, event: Any) -> None:
        studies = self._associations.pop(event.assoc)
        if studies:
            self.spool.complete(studies)
            self._wake.set()

    # --- routing thread -------------------------------------------------------------------------

    def _route_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.config.poll_s)
            self._wake.clear()
            try:
                self.route_pending()
            except Exception:  # the loop must survive anything: the next poll tries again
                logger.exception("DICOM routing loop error")

    def route_pending(self) -> int:
        """Complete quiet studies and hand every ready study to the callback; return how many."""
        quiet = self.spool.quiet_studies(self.config.quiet_period_s)
        if quiet:
            self.spool.complete(quiet)
        count = 0
        for folder in self.spool.ready():
            if self._stop.is_set():
                break
            sender = read_sender(folder)
            instances = sum(1 for _ in folder.rglob("*.dcm"))
            logger.info(
                "DICOM study %s complete: %d instance(s) from %s", folder.name, instances, sender.ae_title
            )
            try:
                self.on_study(folder, sender)
            except Exception:
                logger.exception("DICOM study %s could not be routed; kept in failed/", folder.name)
                if folder.exists():
                    shutil.move(str(folder), self.failed_dir / folder.name)
            count += 1
        return count


__all__ = [
    "STORAGE_CLASSES",
    "TRANSFER_SYNTAXES",
    "Caller",
    "DicomListener",
    "ListenerConfig",
    "StudyHandler",
    "parse_callers",
]
