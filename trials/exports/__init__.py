"""Data-manager exports of a trial: eCRF CSVs, CDISC SDTM TU/TR/RS, per-patient BOR and progression.

Public API::

    from trials.exports import EXPORT_KINDS, ExportFilters, get_dataset, open_export

    filters = ExportFilters(site_codes=("S01",), only_confirmed=True)
    for text in open_export("visits", trial, filters):    # streamed CSV text chunks
        ...

Every file is a :class:`~trials.exports.columns.Dataset` (ordered columns + row generator); the data
dictionary ``docs/data-dictionary.md`` is generated from the same objects (``python -m
trials.exports.dictionary``). Export kinds: ``visits``, ``lesions``, ``tu``, ``tr``, ``rs``, ``patients``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from trials.exports.columns import Column, Dataset, ExportDefinitionError, RowShapeError
from trials.exports.common import MAX_TARGET_COLUMNS
from trials.exports.ecrf import LESIONS, VISITS
from trials.exports.filters import (
    ExportError,
    ExportFilters,
    InvalidExportFilterError,
    UnknownExportKindError,
)
from trials.exports.patients import PATIENTS
from trials.exports.sdtm import RS, TR, TU
from trials.exports.writer import iter_csv, write_csv
from trials.models import Trial

__all__ = [
    "EXPORTS",
    "EXPORT_KINDS",
    "Column",
    "Dataset",
    "ExportDefinitionError",
    "ExportError",
    "ExportFilters",
    "InvalidExportFilterError",
    "RowShapeError",
    "TooManyTargetsError",
    "UnknownExportKindError",
    "export_filename",
    "get_dataset",
    "iter_csv",
    "open_export",
    "write_csv",
]

#: Every export, by kind, in the order the data dictionary lists them.
EXPORTS: dict[str, Dataset] = {d.kind: d for d in (VISITS, LESIONS, TU, TR, RS, PATIENTS)}
EXPORT_KINDS: tuple[str, ...] = tuple(EXPORTS)


class TooManyTargetsError(ExportError):
    """The trial allows more targets than the visit CSV has target columns (HTTP 400)."""


def get_dataset(kind: str) -> Dataset:
    """The dataset of an export kind.

    Raises:
        UnknownExportKindError: ``kind`` is not one of ``EXPORT_KINDS``.
    """
    try:
        return EXPORTS[kind]
    except KeyError:
        raise UnknownExportKindError(
            f"Unknown export {kind!r}; choose one of {', '.join(EXPORT_KINDS)}."
        ) from None


def open_export(kind: str, trial: Trial, filters: ExportFilters | None = None) -> Iterator[str]:
    """Check the request now, then return the lazily streamed CSV text of one export.

    Raises:
        UnknownExportKindError: unknown ``kind``.
        InvalidExportFilterError: a site code the trial does not have.
        TooManyTargetsError: ``visits`` of a trial whose ``max_targets`` exceeds the target columns.
    """
    dataset = get_dataset(kind)
    filters = filters or ExportFilters()
    filters.check_sites(trial)
    if kind == VISITS.kind and trial.max_targets > MAX_TARGET_COLUMNS:
        raise TooManyTargetsError(
            f"Trial {trial.code} allows {trial.max_targets} targets but the visits CSV has "
            f"{MAX_TARGET_COLUMNS} target columns; use the lesions export."
        )
    return iter_csv(dataset, dataset.rows(trial, filters))


def export_filename(trial: Trial, kind: str, filters: ExportFilters | None = None) -> str:
    """Download file name: ``<trial code>_<kind><filters>.csv`` (SDTM kinds upper-case, e.g.
    ``DEMO-BM_TU.csv``; a filtered file is named after its filters, e.g.
    ``DEMO-BM_visits_site-S01_signed.csv``: see :meth:`ExportFilters.name_suffix`).

    The name goes into a ``Content-Disposition`` header: anything but letters, digits and ``. _ -`` in
    the code (a trial stored before codes were validated) becomes ``_``, so a quote or a line break can
    never end the header or add another.
    """
    dataset = get_dataset(kind)
    code = re.sub(r"[^A-Za-z0-9._-]", "_", trial.code) or "trial"
    suffix = filters.name_suffix() if filters is not None else ""
    return f"{code}_{dataset.sdtm_domain or kind}{suffix}.csv"
