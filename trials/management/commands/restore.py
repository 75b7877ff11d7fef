"""``manage.py restore FOLDER [--replace]``: restore a backup folder written by ``manage.py backup``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from trials.actions.backups import BackupError, restore_backup
from trials.exceptions import InvalidStateError


class Command(BaseCommand):
    help = (
        "Restore the database and MEDIA_ROOT from a backup folder (checksums checked first; the restored "
        "row counts and files are compared with its manifest). Run migrate afterwards."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("folder", type=Path, help="a mettrack-backup-<time> folder")
        parser.add_argument(
            "--replace",
            action="store_true",
            help="overwrite a database and media folder that already hold data",
        )
        parser.add_argument("--reason", default="", help="why (recorded in the audit trail)")

    def handle(self, *args: Any, folder: Path, replace: bool, reason: str, **options: Any) -> None:
        try:
            manifest = restore_backup(folder, replace=replace, reason=reason)
        except (BackupError, InvalidStateError) as exc:
            raise CommandError(str(exc)) from None
        rows = ", ".join(f"{label.split('.')[1]} {n}" for label, n in manifest.counts.items())
        self.stdout.write(
            f"Restored the backup of {manifest.created_at}: {rows}; {manifest.media_files} files."
        )
