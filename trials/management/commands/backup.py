"""``manage.py backup DIR``: write a backup folder (database and stored files) under DIR."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from trials.actions.backups import BackupError, create_backup


class Command(BaseCommand):
    help = (
        "Back up the PostgreSQL database (pg_dump) and MEDIA_ROOT into a new folder "
        "DIR/mettrack-backup-<time>/ with a manifest of checksums and row counts."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("directory", type=Path, help="where the backup folder is created")
        parser.add_argument("--reason", default="", help="why (recorded in the audit trail)")

    def handle(self, *args: Any, directory: Path, reason: str, **options: Any) -> None:
        try:
            folder = create_backup(directory, actor=None, reason=reason)
        except BackupError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(str(folder))
