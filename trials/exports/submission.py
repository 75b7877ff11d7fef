"""SDTM datasets for a submission: SAS transport (XPORT version 5, ``.xpt``) and their Define-XML 2.0.

The FDA's study data standards take SDTM datasets as SAS XPORT v5 files described by a Define-XML. The
XPT files are written by ReadStat (``pyreadstat``, a maintained library; the format's IBM floating point
and 80-byte records are not worth writing by hand) from the same rows as the CSV exports; character
values are the raw values (no spreadsheet-formula quoting: a SAS dataset is not opened by a
spreadsheet), numbers are SAS numerics. Version 5 limits hold for SDTM: names of at most 8 characters,
labels of at most 40, character values of at most 200 bytes (longer ones are refused, not cut).

The Define-XML (CDISC Define-XML 2.0, on ODM 1.3.2) lists each dataset (ItemGroupDef, with its file as
``def:leaf``), each variable (ItemDef: name, type, length, label) in file order (ItemRef: order, mandatory
for SDTM "Req"), and the controlled terms of the variables that have them (CodeList).
"""

from __future__ import annotations

import datetime as dt
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from trials.exports.columns import DATE, DATETIME, DECIMAL, FLAG, INTEGER, REQ, Column, Dataset
from trials.exports.filters import ExportError, ExportFilters
from trials.exports.sdtm import RS, TR, TU
from trials.models import Trial

#: The SDTM datasets written as XPT, in Define-XML order.
SUBMISSION_DATASETS: dict[str, Dataset] = {d.kind: d for d in (TU, TR, RS)}
#: SAS XPORT version 5 limits.
XPT_NAME_MAX, XPT_LABEL_MAX, XPT_TEXT_MAX = 8, 40, 200

ODM_NS = "http://www.cdisc.org/ns/odm/v1.3"
DEF_NS = "http://www.cdisc.org/ns/def/v2.0"
XLINK_NS = "http://www.w3.org/1999/xlink"
#: SDTMIG class of each domain (Define-XML def:Class).
DOMAIN_CLASS = {"TU": "FINDINGS", "TR": "FINDINGS", "RS": "FINDINGS"}
DOMAIN_STRUCTURE = {
    "TU": "One record per identified tumor per subject per assessor",
    "TR": "One record per tumor measurement/assessment per visit per subject per assessor",
    "RS": "One record per response assessment per visit per subject per assessor",
}


class SubmissionError(ExportError):
    """A value does not fit SAS XPORT version 5 (HTTP 400)."""


def xpt_filename(dataset: Dataset) -> str:
    """Submission file names are the domain in lower case (``tu.xpt``), as the FDA expects."""
    return f"{dataset.sdtm_domain.lower()}.xpt"


def _xpt_value(column: Column, value: Any) -> Any:
    if column.type in (INTEGER, DECIMAL):
        return None if value is None or value == "" else float(value)
    if value is None or value == "":
        return ""
    if column.type == FLAG:
        return "Y" if value else "N"
    if column.type == DATE and isinstance(value, dt.date):
        return value.isoformat()
    if column.type == DATETIME and isinstance(value, dt.datetime):
        return column.format(value)
    return str(value)


def write_xpt(dataset: Dataset, rows: Iterable[Mapping[str, Any]], path: Path) -> int:
    """Write ``rows`` of an SDTM dataset to ``path`` as SAS XPORT v5; returns the number of records.

    Raises:
        SubmissionError: a name, label or value beyond the version 5 limits.
    """
    import pandas as pd
    import pyreadstat

    for column in dataset.columns:
        if len(column.name) > XPT_NAME_MAX or len(column.label or column.name) > XPT_LABEL_MAX:
            raise SubmissionError(f"{dataset.sdtm_domain}.{column.name}: name or label too long for XPT v5.")
    records = [[_xpt_value(c, row.get(c.name)) for c in dataset.columns] for row in rows]
    for record in records:
        for column, value in zip(dataset.columns, record, strict=True):
            if isinstance(value, str) and len(value.encode("utf-8")) > XPT_TEXT_MAX:
                raise SubmissionError(
                    f"{dataset.sdtm_domain}.{column.name}: a value of {len(value)} characters is longer than "
                    f"XPT v5 allows ({XPT_TEXT_MAX})."
                )
    frame = pd.DataFrame.from_records(records, columns=[c.name for c in dataset.columns])
    for column in dataset.columns:
        if column.type in (INTEGER, DECIMAL):
            frame[column.name] = frame[column.name].astype("float64")
        else:
            frame[column.name] = frame[column.name].astype("object")
    pyreadstat.write_xport(
        frame,
        str(path),
        file_label=dataset.title[:XPT_LABEL_MAX],
        column_labels=[c.label or c.name for c in dataset.columns],
        table_name=dataset.sdtm_domain,
        file_format_version=5,
    )
    return len(records)


def xpt_bytes(kind: str, trial: Trial, filters: ExportFilters) -> bytes:
    """One SDTM dataset of ``trial`` as XPT v5 bytes (the rows of the CSV export of ``kind``).

    Raises:
        UnknownExportKindError, InvalidExportFilterError: as the CSV export.
        SubmissionError: a value beyond the XPT v5 limits.
    """
    from trials.exports import UnknownExportKindError

    dataset = SUBMISSION_DATASETS.get(kind)
    if dataset is None:
        raise UnknownExportKindError(
            f"{kind!r} has no SAS transport file; choose one of {', '.join(SUBMISSION_DATASETS)}."
        )
    filters.check_sites(trial)
    with tempfile.TemporaryDirectory(prefix="mettrack-xpt-") as folder:
        path = Path(folder) / xpt_filename(dataset)
        write_xpt(dataset, dataset.rows(trial, filters), path)
        return path.read_bytes()


# ------------------------------------------------------------------------------------------ Define-XML

_DATA_TYPES = {INTEGER: "integer", DECIMAL: "float", DATE: "date", DATETIME: "datetime"}


def _q(ns: str, tag: str) -> str:
    return f"{{{ns}}}{tag}"


def _description(parent: ET.Element, text: str) -> None:
    description = ET.SubElement(parent, _q(ODM_NS, "Description"))
    translated = ET.SubElement(description, _q(ODM_NS, "TranslatedText"))
    translated.set("{http://www.w3.org/XML/1998/namespace}lang", "en")
    translated.text = text


def define_xml(trial: Trial, *, now: dt.datetime | None = None) -> bytes:
    """Define-XML 2.0 of the trial's SDTM datasets (TU, TR, RS), UTF-8 with its XML declaration."""
    ET.register_namespace("", ODM_NS)
    ET.register_namespace("def", DEF_NS)
    ET.register_namespace("xlink", XLINK_NS)
    now = now or dt.datetime.now(dt.UTC)
    odm = ET.Element(
        _q(ODM_NS, "ODM"),
        {
            "FileType": "Snapshot",
            "FileOID": f"MetTrack.{trial.code}.define",
            "CreationDateTime": now.strftime("%Y-%m-%dT%H:%M:%S"),
            "ODMVersion": "1.3.2",
            "Originator": "MetTrack",
            "SourceSystem": "MetTrack",
        },
    )
    study = ET.SubElement(odm, _q(ODM_NS, "Study"), {"OID": f"ST.{trial.code}"})
    global_vars = ET.SubElement(study, _q(ODM_NS, "GlobalVariables"))
    for tag, text in (
        ("StudyName", trial.code),
        ("StudyDescription", trial.title),
        ("ProtocolName", trial.code),
    ):
        ET.SubElement(global_vars, _q(ODM_NS, tag)).text = text
    mdv = ET.SubElement(
        study,
        _q(ODM_NS, "MetaDataVersion"),
        {
            "OID": "MDV.MetTrack.SDTMIG.3.3",
            "Name": f"{trial.code} SDTM",
            _q(DEF_NS, "DefineVersion"): "2.0.0",
            _q(DEF_NS, "StandardName"): "SDTM-IG",
            _q(DEF_NS, "StandardVersion"): "3.3",
        },
    )
    item_defs: list[ET.Element] = []
    code_lists: list[ET.Element] = []
    for dataset in SUBMISSION_DATASETS.values():
        domain = dataset.sdtm_domain
        group = ET.SubElement(
            mdv,
            _q(ODM_NS, "ItemGroupDef"),
            {
                "OID": f"IG.{domain}",
                "Name": domain,
                "Domain": domain,
                "Repeating": "Yes",
                "IsReferenceData": "No",
                "SASDatasetName": domain,
                "Purpose": "Tabulation",
                _q(DEF_NS, "Structure"): DOMAIN_STRUCTURE[domain],
                _q(DEF_NS, "Class"): DOMAIN_CLASS[domain],
                _q(DEF_NS, "ArchiveLocationID"): f"LF.{domain}",
            },
        )
        _description(group, dataset.title)
        for order, column in enumerate(dataset.columns, start=1):
            oid = f"IT.{domain}.{column.name}"
            ET.SubElement(
                group,
                _q(ODM_NS, "ItemRef"),
                {
                    "ItemOID": oid,
                    "OrderNumber": str(order),
                    "Mandatory": "Yes" if column.core == REQ else "No",
                },
            )
            item = ET.Element(
                _q(ODM_NS, "ItemDef"),
                {
                    "OID": oid,
                    "Name": column.name,
                    "SASFieldName": column.name,
                    "DataType": _DATA_TYPES.get(column.type, "text"),
                },
            )
            if item.get("DataType") == "text":
                item.set("Length", str(XPT_TEXT_MAX if not column.allowed else max(map(len, column.allowed))))
            _description(item, column.label or column.description)
            if column.allowed:
                ET.SubElement(item, _q(ODM_NS, "CodeListRef"), {"CodeListOID": f"CL.{domain}.{column.name}"})
                code_list = ET.Element(
                    _q(ODM_NS, "CodeList"),
                    {
                        "OID": f"CL.{domain}.{column.name}",
                        "Name": f"{domain} {column.name}",
                        "DataType": "text",
                    },
                )
                for term in column.allowed:
                    ET.SubElement(code_list, _q(ODM_NS, "EnumeratedItem"), {"CodedValue": term})
                code_lists.append(code_list)
            item_defs.append(item)
        leaf = ET.SubElement(
            group, _q(DEF_NS, "leaf"), {"ID": f"LF.{domain}", _q(XLINK_NS, "href"): xpt_filename(dataset)}
        )
        ET.SubElement(leaf, _q(DEF_NS, "title")).text = xpt_filename(dataset)
    mdv.extend(item_defs)
    mdv.extend(code_lists)
    ET.indent(odm)
    return ET.tostring(odm, encoding="UTF-8", xml_declaration=True)


__all__ = [
    "SUBMISSION_DATASETS",
    "SubmissionError",
    "define_xml",
    "write_xpt",
    "xpt_bytes",
    "xpt_filename",
]
