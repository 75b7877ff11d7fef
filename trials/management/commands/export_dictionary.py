"""``manage.py export_dictionary [--check]``: regenerate docs/data-dictionary.md from the export columns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from trials.exports.dictionary import DEFAULT_PATH, write


class Command(BaseCommand):
    requires_system_checks: list[str] = []  # reads definitions only; no URL or model checks needed
    help = "Regenerate docs/data-dictionary.md from trials/exports column definitions (--check: verify only)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--check", action="store_true", help="Fail when the file is out of date.")
        parser.add_argument("--path", type=Path, default=DEFAULT_PATH, help="Output file.")

    def handle(self, *args: Any, check: bool, path: Path, **options: Any) -> None:
        if not write(path, check=check):
            raise CommandError(f"{path} is out of date: run python manage.py export_dictionary")
        self.stdout.write(f"{path} is current." if check else f"Wrote {path}.")
