"""GET /api/v1/trials/{id}/exports/{kind}.csv: roles, membership, streaming, filters and the audit event."""

from __future__ import annotations

import csv
import io

import pytest
from django.http import StreamingHttpResponse
from rest_framework.test import APIClient

from trials.exports import EXPORT_KINDS, open_export
from trials.models import AuditEvent

pytestmark = pytest.mark.django_db


def url(trial_id: int, kind: str) -> str:
    return f"/api/v1/trials/{trial_id}/exports/{kind}.csv"


def client_for(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def body(response) -> str:
    return b"".join(response.streaming_content).decode("utf-8")


@pytest.mark.parametrize("kind", EXPORT_KINDS)
def test_data_manager_streams_each_export_and_leaves_an_audit_event(world, kind: str) -> None:
    before = AuditEvent.objects.filter(action="export").count()
    response = client_for(world.data_manager).get(url(world.trial.pk, kind), HTTP_X_REQUEST_ID="req-export-1")
    assert response.status_code == 200
    assert isinstance(response, StreamingHttpResponse)
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith('attachment; filename="GOLD-BM_')
    assert body(response) == "".join(open_export(kind, world.trial))
    events = AuditEvent.objects.filter(action="export")
    assert events.count() == before + 1
    event = events.first()
    assert (event.actor, event.actor_name, event.trial) == (world.data_manager, "dm1", world.trial)
    assert event.after["kind"] == kind
    assert event.correlation_id == "req-export-1"
    assert event.created_at is not None


def test_trial_admin_may_export_with_filters_recorded(world) -> None:
    response = client_for(world.admin).get(
        url(world.trial.pk, "visits"), {"site": "S01", "date_from": "2024-03-01", "only_confirmed": "true"}
    )
    assert response.status_code == 200
    rows = list(csv.DictReader(io.StringIO(body(response))))
    assert [(r["subject_id"], r["visit_label"]) for r in rows] == [("001", "FU1"), ("001", "FU2")]
    event = AuditEvent.objects.filter(action="export", actor=world.admin).first()
    assert event.after["filters"] == {
        "site": ["S01"],
        "date_from": "2024-03-01",
        "date_to": None,
        "only_confirmed": True,
    }
    assert (
        event.object_repr == "GOLD-BM_visits_site-S01_from-2024-03-01_signed.csv"
    )  # named after its filters
    assert response["Content-Disposition"] == f'attachment; filename="{event.object_repr}"'


@pytest.mark.parametrize("role_user", ["reader", "investigator"])
def test_other_roles_get_403_and_no_audit_event(world, role_user: str) -> None:
    before = AuditEvent.objects.filter(action="export").count()
    response = client_for(getattr(world, role_user)).get(url(world.trial.pk, "visits"))
    assert response.status_code == 403
    assert "data managers and trial admins" in response.json()["detail"]
    assert AuditEvent.objects.filter(action="export").count() == before


def test_non_member_gets_404(world) -> None:
    from tests.factories import make_member, make_trial

    outsider = make_member(make_trial("OTHER"), "data_manager")
    response = client_for(outsider).get(url(world.trial.pk, "visits"))
    assert response.status_code == 404
    assert client_for(outsider).get(url(999_999, "visits")).status_code == 404


def test_anonymous_is_refused(world) -> None:
    assert APIClient().get(url(world.trial.pk, "visits")).status_code in (401, 403)


def test_superuser_may_export(world) -> None:
    from tests.factories import make_superuser

    assert client_for(make_superuser()).get(url(world.trial.pk, "tu")).status_code == 200


def test_unknown_kind_is_404_and_bad_filter_is_400(world) -> None:
    client = client_for(world.data_manager)
    response = client.get(url(world.trial.pk, "dm"))
    assert response.status_code == 404
    assert "choose one of visits" in response.json()["detail"]
    response = client.get(url(world.trial.pk, "visits"), {"date_from": "01/02/2024"})
    assert response.status_code == 400
    assert "date_from must be a date" in response.json()["detail"]


@pytest.mark.parametrize("kind", EXPORT_KINDS)
def test_unknown_site_is_400_naming_it_and_the_trials_sites(world, kind: str) -> None:
    before = AuditEvent.objects.filter(action="export").count()
    response = client_for(world.data_manager).get(url(world.trial.pk, kind), {"site": "NOPE"})
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert "unknown site nope" in detail.lower()
    assert "S01, S02" in detail
    assert AuditEvent.objects.filter(action="export").count() == before  # nothing was exported


def test_known_and_unknown_sites_together_are_400_naming_only_the_unknown(world) -> None:
    response = client_for(world.data_manager).get(url(world.trial.pk, "visits"), {"site": "S01,NOPE,X9"})
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert "NOPE, X9" in detail and "S01, S02" in detail
