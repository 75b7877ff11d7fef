"""SDTM submission files: TU, TR and RS as SAS XPORT v5 read back by pandas' own XPORT reader (not the
ReadStat library that wrote them) and compared cell by cell with the CSV exports; their Define-XML 2.0
checked against the files it describes; every download audited; errors on the export page."""

from __future__ import annotations

import csv
import io
import xml.etree.ElementTree as ET

import pandas as pd
import pytest
from rest_framework.test import APIClient

from trials.exports import ExportFilters, get_dataset, open_export
from trials.exports.columns import DECIMAL, INTEGER
from trials.exports.submission import DEF_NS, ODM_NS, XLINK_NS
from trials.models import AuditEvent

pytestmark = pytest.mark.django_db
NS = {"odm": ODM_NS, "def": DEF_NS}


def api(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def read_xpt(content: bytes) -> pd.DataFrame:
    return pd.read_sas(io.BytesIO(content), format="xport", encoding="utf-8")


@pytest.mark.parametrize("kind", ["tu", "tr", "rs"])
def test_each_xpt_holds_the_csv_exports_rows(world, kind: str) -> None:
    response = api(world.data_manager).get(f"/api/v1/trials/{world.trial.pk}/exports/{kind}.xpt")
    assert response.status_code == 200 and response["Content-Type"] == "application/x-sas-xport"
    assert response["Content-Disposition"] == f'attachment; filename="{kind}.xpt"'
    frame = read_xpt(response.content)
    dataset = get_dataset(kind)
    expected = list(csv.DictReader(io.StringIO("".join(open_export(kind, world.trial, ExportFilters())))))
    assert list(frame.columns) == [c.name for c in dataset.columns]
    assert len(frame) == len(expected) > 0
    for index, row in enumerate(expected):
        for column in dataset.columns:
            got, want = frame.iloc[index][column.name], row[column.name].lstrip("'")
            if column.type in (INTEGER, DECIMAL):
                assert (pd.isna(got) and want == "") or got == pytest.approx(float(want), abs=1e-9), (
                    column.name
                )
            else:
                assert (got or "") == want, (column.name, got, want)
    event = AuditEvent.objects.filter(action="export", object_repr=f"{kind}.xpt").first()
    assert event is not None and event.actor == world.data_manager and event.after["kind"] == kind


def test_filters_apply_to_the_transport_files(world) -> None:
    filtered = read_xpt(
        api(world.admin).get(f"/api/v1/trials/{world.trial.pk}/exports/rs.xpt", {"site": "S01"}).content
    )
    everything = read_xpt(api(world.admin).get(f"/api/v1/trials/{world.trial.pk}/exports/rs.xpt").content)
    assert 0 < len(filtered) < len(everything)
    assert set(filtered["USUBJID"]) < set(everything["USUBJID"])


def test_the_define_xml_describes_the_transport_files(world) -> None:
    client = api(world.data_manager)
    response = client.get(f"/api/v1/trials/{world.trial.pk}/exports/define.xml")
    assert response.status_code == 200 and response["Content-Type"] == "application/xml"
    root = ET.fromstring(response.content)
    assert root.tag == f"{{{ODM_NS}}}ODM" and root.get("ODMVersion") == "1.3.2"
    version = root.find("odm:Study/odm:MetaDataVersion", NS)
    assert version is not None and version.get(f"{{{DEF_NS}}}DefineVersion") == "2.0.0"
    item_defs = {i.get("OID"): i for i in version.findall("odm:ItemDef", NS)}
    code_lists = {c.get("OID") for c in version.findall("odm:CodeList", NS)}
    groups = version.findall("odm:ItemGroupDef", NS)
    assert [g.get("Name") for g in groups] == ["TU", "TR", "RS"]
    for group in groups:
        domain = group.get("Name")
        leaf = group.find("def:leaf", NS)
        assert leaf is not None and leaf.get(f"{{{XLINK_NS}}}href") == f"{domain.lower()}.xpt"
        frame = read_xpt(client.get(f"/api/v1/trials/{world.trial.pk}/exports/{domain.lower()}.xpt").content)
        refs = group.findall("odm:ItemRef", NS)
        names = [item_defs[r.get("ItemOID")].get("Name") for r in refs]
        assert names == list(frame.columns)  # every variable, in file order
        assert [int(r.get("OrderNumber")) for r in refs] == list(range(1, len(refs) + 1))
        for ref in refs:
            item = item_defs[ref.get("ItemOID")]
            assert len(item.get("Name")) <= 8
            code_list = item.find("odm:CodeListRef", NS)
            if code_list is not None:
                assert code_list.get("CodeListOID") in code_lists
                terms = {
                    e.get("CodedValue")
                    for c in version.findall("odm:CodeList", NS)
                    if c.get("OID") == code_list.get("CodeListOID")
                    for e in c.findall("odm:EnumeratedItem", NS)
                }
                used = {v for v in frame[item.get("Name")] if isinstance(v, str) and v}
                assert used <= terms, (item.get("Name"), used - terms)
            if item.get("DataType") == "text":
                longest = max((len(v) for v in frame[item.get("Name")] if isinstance(v, str)), default=0)
                assert longest <= int(item.get("Length")), item.get("Name")
    assert AuditEvent.objects.filter(action="export", object_repr="define.xml").exists()


def test_the_export_page_offers_them_and_shows_their_errors(world) -> None:
    from tests.exports.test_quality import page_client

    client = page_client(world.data_manager)
    html = client.get(f"/trials/{world.trial.pk}/exports/").content.decode()
    for name in ("tu.xpt", "tr.xpt", "rs.xpt"):
        assert f'formaction="/trials/{world.trial.pk}/exports/{name}"' in html
    assert f'formaction="/trials/{world.trial.pk}/exports/define.xml"' in html
    ok = client.get(f"/trials/{world.trial.pk}/exports/tu.xpt", {"site": "S01"})
    assert ok.status_code == 200 and len(read_xpt(ok.content)) > 0
    bad = client.get(f"/trials/{world.trial.pk}/exports/tu.xpt", {"site": "NOPE"})
    assert bad.status_code == 400 and 'id="export-error"' in bad.content.decode()
    assert client.get(f"/trials/{world.trial.pk}/exports/visits.xpt").status_code == 404
    assert client.get(f"/trials/{world.trial.pk}/exports/define.xml").status_code == 200
    assert page_client(world.investigator).get(f"/trials/{world.trial.pk}/exports/tu.xpt").status_code == 403
    assert (
        api(world.investigator).get(f"/api/v1/trials/{world.trial.pk}/exports/define.xml").status_code == 403
    )
