"""AuditEvent is append-only: refused by the model, the queryset and the database trigger (raw SQL)."""

from __future__ import annotations

import pytest
from django.db import DatabaseError, connection, transaction

from tests.factories import make_trial
from trials.models import AuditEvent, AuditImmutableError

pytestmark = pytest.mark.django_db


@pytest.fixture
def event() -> AuditEvent:
    make_trial("AUD")
    return AuditEvent.objects.get(object_type="trials.trial", action="create")


def test_new_events_can_be_written(event: AuditEvent) -> None:
    assert event.actor_name == "system"
    assert event.after["code"] == "AUD"


def test_model_save_of_existing_event_is_refused(event: AuditEvent) -> None:
    event.reason = "tampered"
    with pytest.raises(AuditImmutableError):
        event.save()
    assert AuditEvent.objects.get(pk=event.pk).reason == ""


def test_model_delete_is_refused(event: AuditEvent) -> None:
    with pytest.raises(AuditImmutableError):
        event.delete()
    assert AuditEvent.objects.filter(pk=event.pk).exists()


def test_queryset_update_and_delete_are_refused(event: AuditEvent) -> None:
    with pytest.raises(AuditImmutableError):
        AuditEvent.objects.filter(pk=event.pk).update(reason="tampered")
    with pytest.raises(AuditImmutableError):
        AuditEvent.objects.filter(pk=event.pk).delete()
    with pytest.raises(AuditImmutableError):
        AuditEvent.objects.bulk_update([event], ["reason"])
    assert AuditEvent.objects.get(pk=event.pk).reason == ""


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE trials_auditevent SET reason = 'tampered' WHERE id = %s",
        "DELETE FROM trials_auditevent WHERE id = %s",
    ],
)
def test_raw_sql_update_and_delete_are_refused_by_the_database(event: AuditEvent, sql: str) -> None:
    with (
        pytest.raises(DatabaseError, match="append-only"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(sql, [event.pk])
    event.refresh_from_db()
    assert event.reason == ""


def test_trigger_exists_for_this_database_vendor() -> None:
    # Guards against the vendor-conditional migration silently doing nothing on the database in use.
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT tgname FROM pg_trigger WHERE tgrelid = 'trials_auditevent'::regclass AND NOT tgisinternal"
            )
        else:
            cursor.execute(
                "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'trials_auditevent'"
            )
        names = {row[0] for row in cursor.fetchall()}
    assert names and all(name.startswith("trials_auditevent") for name in names)
