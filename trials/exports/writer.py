"""Streaming CSV writer: rows are formatted and handed out in small text chunks, never held all at once."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator, Mapping
from typing import IO, Any

from trials.exports.columns import Dataset

#: Rows per yielded text chunk: large enough to keep per-chunk overhead low, small enough to stream.
ROWS_PER_CHUNK = 200


class _Line:
    """File-like object whose ``write`` returns the text instead of storing it (csv.writer target)."""

    def write(self, text: str) -> str:
        return text


def iter_csv(dataset: Dataset, rows: Iterable[Mapping[str, Any]]) -> Iterator[str]:
    """Yield the CSV text of ``dataset``: the header, then the rows, in chunks of ``ROWS_PER_CHUNK``.

    RFC 4180 CSV (comma, double-quote quoting, CRLF line ends), UTF-8 text without a byte-order mark.
    """
    writer = csv.writer(_Line())
    yield writer.writerow(dataset.header)
    chunk: list[str] = []
    for row in rows:
        chunk.append(writer.writerow(dataset.format_row(row)))
        if len(chunk) >= ROWS_PER_CHUNK:
            yield "".join(chunk)
            chunk = []
    if chunk:
        yield "".join(chunk)


def write_csv(dataset: Dataset, rows: Iterable[Mapping[str, Any]], file: IO[str]) -> None:
    """Write the CSV of ``dataset`` to an open text file (opened with ``newline=""``)."""
    for text in iter_csv(dataset, rows):
        file.write(text)
