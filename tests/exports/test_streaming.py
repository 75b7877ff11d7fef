"""Exports run a constant number of queries and stream in chunks, whatever the trial's size."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from bench.bench_exports import build_bulk_trial
from trials.exports import EXPORT_KINDS, ExportFilters, open_export
from trials.exports.writer import ROWS_PER_CHUNK

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def trials(django_db_setup: None, django_db_blocker: Any) -> Iterator[dict[str, Any]]:
    """A 2-patient and a 9-patient bulk trial, built once for the module and rolled back after it."""
    with django_db_blocker.unblock(), transaction.atomic():
        yield {"small": build_bulk_trial("QC-S", 2), "large": build_bulk_trial("QC-L", 9)}
        transaction.set_rollback(True)


def consume(kind: str, trial, filters: ExportFilters | None = None) -> tuple[int, list[str]]:
    with CaptureQueriesContext(connection) as queries:
        chunks = list(open_export(kind, trial, filters))
    return len(queries), chunks


@pytest.mark.parametrize("kind", EXPORT_KINDS)
def test_query_count_does_not_grow_with_the_trial(trials: dict[str, Any], kind: str) -> None:
    small, large = trials["small"], trials["large"]
    small_queries, small_chunks = consume(kind, small)
    large_queries, large_chunks = consume(kind, large)
    assert small_queries == large_queries <= 3
    small_rows = sum(1 for _ in csv.reader(io.StringIO("".join(small_chunks))))
    large_rows = sum(1 for _ in csv.reader(io.StringIO("".join(large_chunks))))
    assert large_rows > small_rows  # the larger trial really exported more
    # Filters add conditions, not queries (a site filter adds one: its codes are checked against the
    # trial's sites before the stream starts).
    filtered_queries, _ = consume(kind, large, ExportFilters(site_codes=("S01",), only_confirmed=True))
    assert filtered_queries == large_queries + 1
    unfiltered_site_queries, _ = consume(kind, large, ExportFilters(only_confirmed=True))
    assert unfiltered_site_queries == large_queries


def test_large_exports_are_yielded_in_chunks(trials: dict[str, Any]) -> None:
    _, chunks = consume("lesions", trials["large"])  # 9 x (8 x 5 + 6) = 414 lesion rows
    assert len(chunks) == 1 + math.ceil(9 * 46 / ROWS_PER_CHUNK)  # header, then blocks of rows
    assert chunks[1].count("\r\n") == ROWS_PER_CHUNK
    assert sum(c.count("\r\n") for c in chunks) == 1 + 9 * (8 * 5 + 6)
