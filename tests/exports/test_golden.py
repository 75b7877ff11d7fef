"""Golden-file tests: the synthetic trial of tests/exports/world.py exported cell by cell."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import pandas as pd
import pytest

from trials.exports import EXPORT_KINDS, ExportFilters, get_dataset, open_export

from tests.exports.world import build_world

GOLDEN = Path(__file__).parent / "golden"
#: Set to 1 to rewrite the golden files from the current exports (then review the diff by hand).
UPDATE = os.environ.get("METTRACK_UPDATE_GOLDEN") == "1"


def export_text(kind: str, trial, filters: ExportFilters | None = None) -> str:
    return "".join(open_export(kind, trial, filters))


@pytest.fixture
def world(db):
    return build_world()


@pytest.mark.parametrize("kind", EXPORT_KINDS)
def test_export_equals_golden_file_cell_by_cell(world, kind: str) -> None:
    text = export_text(kind, world.trial)
    path = GOLDEN / f"{kind}.csv"
    if UPDATE:
        path.write_text(text, encoding="utf-8", newline="")
    expected = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))
    actual = list(csv.reader(io.StringIO(text)))
    assert actual[0] == expected[0], "header differs"
    assert len(actual) == len(expected), f"{kind}: {len(actual) - 1} rows, expected {len(expected) - 1}"
    for line, (got, want) in enumerate(zip(actual, expected, strict=True), start=1):
        for name, g, w in zip(expected[0], got, want, strict=True):
            assert g == w, f"{kind}.csv line {line} column {name}: {g!r} != {w!r}"


@pytest.mark.parametrize("kind", EXPORT_KINDS)
def test_export_parses_back_with_pandas(world, kind: str) -> None:
    frame = pd.read_csv(io.StringIO(export_text(kind, world.trial)), dtype=str, keep_default_na=False)
    assert list(frame.columns) == get_dataset(kind).header
