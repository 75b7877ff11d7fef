"""docs/data-dictionary.md is generated from the export definitions and must be current."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from trials.exports import EXPORTS
from trials.exports.dictionary import DEFAULT_PATH, render


def test_data_dictionary_is_current() -> None:
    assert DEFAULT_PATH.read_text(encoding="utf-8") == render(), (
        "docs/data-dictionary.md is out of date: run python manage.py export_dictionary"
    )


def test_every_exported_column_is_documented_with_type_and_description() -> None:
    text = render()
    for dataset in EXPORTS.values():
        section = text.split(f"## `{dataset.kind}`")[1].split("\n## ")[0]
        for n, column in enumerate(dataset.columns, start=1):
            assert f"| {n} | `{column.name}` |" in section, (dataset.kind, column.name)
            assert column.description and column.type in section
        if dataset.sdtm_domain:
            assert all(c.label and c.core for c in dataset.columns), dataset.kind


def test_command_checks_and_rewrites(tmp_path: Path) -> None:
    stale = tmp_path / "dictionary.md"
    stale.write_text("old", encoding="utf-8")
    with pytest.raises(CommandError, match="out of date"):
        call_command("export_dictionary", "--check", "--path", str(stale))
    call_command("export_dictionary", "--path", str(stale))
    assert stale.read_text(encoding="utf-8") == render()
    call_command("export_dictionary", "--check", "--path", str(stale))
