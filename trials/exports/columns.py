"""Column and dataset definitions: the one source of truth for every export file and the data dictionary.

A :class:`Column` says what one CSV column holds (type, unit, allowed values, meaning, SDTM core) and how
its Python value is written as text. A :class:`Dataset` is an ordered tuple of columns plus the row
generator that fills them. The CSV writer and ``docs/data-dictionary.md`` both read these objects, so the
documented columns and the exported ones cannot drift apart (a test checks the dictionary is current).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trials.exports.filters import ExportFilters
    from trials.models import Trial

#: Column value types (the "Type" column of the data dictionary).
TEXT = "text"
INTEGER = "integer"
DECIMAL = "decimal"
DATE = "date"
DATETIME = "datetime"
FLAG = "flag"

_TYPES = frozenset({TEXT, INTEGER, DECIMAL, DATE, DATETIME, FLAG})

#: SDTM core designations (SDTMIG 3.3 section 4.1.5): required, expected, permissible.
REQ = "Req"
EXP = "Exp"
PERM = "Perm"


class ExportDefinitionError(ValueError):
    """A column definition is inconsistent (a programming error caught at import time)."""


class RowShapeError(KeyError):
    """A row generator produced a row whose keys differ from its dataset's columns."""


@dataclass(frozen=True)
class Column:
    """One CSV column.

    Attributes:
        name: CSV header (SDTM variable name for SDTM datasets).
        type: one of ``text``, ``integer``, ``decimal``, ``date``, ``datetime``, ``flag``.
        description: what the column holds, for the data dictionary.
        unit: unit of the value (``mm``, ``mm3``, ``%``, ``days``) or empty.
        allowed: allowed values (controlled terms) or empty when free.
        decimals: digits after the decimal point for ``decimal`` columns.
        label: SDTM variable label (SDTM datasets only).
        core: SDTM core designation ``Req`` / ``Exp`` / ``Perm`` (SDTM datasets only).
    """

    name: str
    type: str
    description: str
    unit: str = ""
    allowed: tuple[str, ...] = ()
    decimals: int = 1
    label: str = ""
    core: str = ""

    def __post_init__(self) -> None:
        if self.type not in _TYPES:
            raise ExportDefinitionError(f"Column {self.name}: unknown type {self.type!r}.")
        if self.core and self.core not in (REQ, EXP, PERM):
            raise ExportDefinitionError(f"Column {self.name}: unknown SDTM core {self.core!r}.")

    def format(self, value: Any) -> str:
        """Write one value as CSV text.

        ``None`` and ``""`` become an empty cell; flags ``Y``/``N``; dates ISO 8601 (``YYYY-MM-DD``);
        datetimes ISO 8601 in UTC to the second (``YYYY-MM-DDTHH:MM:SSZ``); decimals rounded to
        ``decimals`` digits (a fixed count, so files compare cell by cell).
        """
        return self.formatter()(value)

    def formatter(self) -> Callable[[Any], str]:
        """The formatting function of this column's type (chosen once: it runs for every exported cell)."""
        if self.type == FLAG:
            return _format_flag
        if self.type == DECIMAL:
            spec = f".{self.decimals}f"
            return lambda value: "" if value is None or value == "" else format(float(value), spec)
        if self.type == INTEGER:
            return lambda value: "" if value is None or value == "" else str(int(value))
        if self.type == DATETIME:
            return _format_datetime
        if self.type == DATE:
            return _format_date
        return _format_text


#: First characters that make a spreadsheet read a cell as a formula (OWASP "CSV Injection"): ``=``,
#: ``+``, ``-``, ``@``, tab and carriage return.
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?[0-9]+(?:\.[0-9]+)?")


def neutralise_formula(text: str) -> str:
    """Prefix a text cell that a spreadsheet would evaluate with ``'`` (OWASP's CSV-injection defence).

    A cell starting with ``= + - @``, tab or CR is written as ``'`` + the text, so Excel, LibreOffice and
    Google Sheets show it as text instead of running it (``=HYPERLINK(...)``, ``@SUM(...)``, DDE). A plain
    signed number (``-12.5``) cannot carry a formula and is left as it is.
    """
    if text.startswith(FORMULA_TRIGGERS) and not _PLAIN_NUMBER.fullmatch(text):
        return "'" + text
    return text


def _format_text(value: Any) -> str:
    return "" if value is None else neutralise_formula(str(value))


def _format_flag(value: Any) -> str:
    if value is None or value == "":
        return ""
    return "Y" if value else "N"


def _format_date(value: Any) -> str:
    if value is None or value == "":
        return ""
    return value.isoformat() if isinstance(value, dt.date) else str(value)


def _format_datetime(value: Any) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return value.strftime("%Y-%m-%dT%H:%M:%SZ")
    return str(value)


RowGenerator = Callable[["Trial", "ExportFilters"], Iterator[Mapping[str, Any]]]


@dataclass(frozen=True)
class Dataset:
    """One export file: ordered columns and the generator of its rows.

    Attributes:
        kind: URL name of the export (``visits``, ``lesions``, ``tu``, ``tr``, ``rs``, ``patients``).
        title: heading in the data dictionary.
        description: one row means..., for the data dictionary.
        columns: the columns, in file order.
        rows: ``rows(trial, filters)`` yields one mapping per row, keyed by column name.
        sdtm_domain: the SDTM domain code for SDTM-shaped datasets, else empty.
    """

    kind: str
    title: str
    description: str
    columns: tuple[Column, ...]
    rows: RowGenerator = field(compare=False)
    sdtm_domain: str = ""

    def __post_init__(self) -> None:
        names = [c.name for c in self.columns]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ExportDefinitionError(f"Dataset {self.kind}: duplicate columns {', '.join(duplicates)}.")

    @cached_property
    def _formatters(self) -> tuple[tuple[str, Callable[[Any], str]], ...]:
        # Bound methods looked up once: format_row runs for every exported row.
        return tuple((c.name, c.formatter()) for c in self.columns)

    @property
    def header(self) -> list[str]:
        """Column names in file order."""
        return [c.name for c in self.columns]

    def format_row(self, row: Mapping[str, Any]) -> list[str]:
        """Format one row in column order.

        Raises:
            RowShapeError: the row lacks a column or has one the dataset does not define.
        """
        if len(row) != len(self.columns):
            extra = sorted(set(row) - set(self.header))
            missing = sorted(set(self.header) - set(row))
            raise RowShapeError(f"{self.kind} row: missing {missing}, unexpected {extra}.")
        try:
            return [fmt(row[name]) for name, fmt in self._formatters]
        except KeyError as exc:
            raise RowShapeError(f"{self.kind} row lacks column {exc.args[0]!r}.") from None
