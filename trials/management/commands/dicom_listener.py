"""``manage.py dicom_listener``: the DICOM node of MetTrack (C-STORE SCP with C-ECHO).

Modalities and PACS send MR series to ``DICOM_AE_TITLE`` on ``DICOM_PORT``; only the callers of
``DICOM_ALLOWED_CALLERS`` are accepted. Instances are spooled under ``DICOM_SPOOL_DIR`` before they are
acknowledged; each complete study (association released, or ``DICOM_QUIET_PERIOD_S`` without a new
instance) is routed and stored by ``trials.actions.pacs.receive_study``: the same validation,
de-identification and pipeline as an upload, or the inbox. Runs without Celery (in embedded mode the
pipeline job runs in this process); stop it with SIGTERM or Ctrl-C. A restart re-reads the spool.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import close_old_connections

from segmentation.listener import DicomListener, ListenerConfig, parse_callers
from segmentation.spool import Sender
from trials.actions.pacs import receive_study
from trials.choices import ReceiveChannel


def route_study(folder: Path, sender: Sender) -> None:
    """The listener's callback: one complete study through the receive action."""
    close_old_connections()
    try:
        receive_study(
            folder, channel=ReceiveChannel.CSTORE, sender_ae_title=sender.ae_title, sender_host=sender.host
        )
    finally:
        close_old_connections()


class Command(BaseCommand):
    help = "Run the DICOM listener (C-STORE and C-ECHO SCP) that receives studies from modalities and PACS."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--port", type=int, default=None, help="TCP port (default DICOM_PORT)")
        parser.add_argument("--ae-title", default=None, help="AE title (default DICOM_AE_TITLE)")
        parser.add_argument("--bind", default=None, help="address to bind (default DICOM_BIND)")
        parser.add_argument(
            "--allow",
            action="append",
            default=None,
            help="allowed caller AE or AE@host (repeatable; default DICOM_ALLOWED_CALLERS)",
        )
        parser.add_argument("--quiet-period", type=float, default=None, help="seconds (DICOM_QUIET_PERIOD_S)")

    def handle(self, *args: Any, **options: Any) -> None:
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
        try:
            config = ListenerConfig(
                ae_title=options["ae_title"] or settings.DICOM_AE_TITLE,
                port=settings.DICOM_PORT if options["port"] is None else options["port"],
                host=options["bind"] or settings.DICOM_BIND,
                spool_dir=Path(settings.DICOM_SPOOL_DIR),
                allowed_callers=parse_callers(options["allow"] or settings.DICOM_ALLOWED_CALLERS),
                quiet_period_s=(
                    settings.DICOM_QUIET_PERIOD_S
                    if options["quiet_period"] is None
                    else options["quiet_period"]
                ),
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        if not config.allowed_callers:
            self.stderr.write("No allowed callers (DICOM_ALLOWED_CALLERS): every association is refused.")
        listener = DicomListener(config, route_study)

        def stop(signum: int, frame: Any) -> None:
            listener.stop()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        listener.start()
        self.stdout.write(f"DICOM listener {config.ae_title} listening on port {listener.port}", ending="\n")
        self.stdout.flush()
        listener.wait()
