"""A tamper-evident audit trail (issue 19): the hash chain, its verification, and a runtime database role
that cannot bypass the append-only trigger.

On the code before issue 19 the application connected as the table owner, so TRUNCATE, ALTER TABLE ...
DISABLE TRIGGER and ``session_replication_role = replica`` went through, and an edited, deleted or
reordered row left no trace: each test here failed (no chain, no verify_audit_chain, no grant_app_role).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, connections, transaction
from django.db.utils import DatabaseError

from tests.factories import make_patient, make_trial
from trials.audit import event_hash, record_audit_event, verify_chain
from trials.models import AuditChainHead, AuditEvent

pytestmark = pytest.mark.django_db


def _chain(n: int = 5) -> list[AuditEvent]:
    trial = make_trial("CHAIN")
    for i in range(n):
        make_patient(trial, subject_id=f"C-{i}")
    return list(AuditEvent.objects.order_by("seq"))


@contextmanager
def trigger_lifted() -> Iterator[Any]:
    """What an attacker with the owner's rights would do: lift the append-only trigger, then tamper."""
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute("ALTER TABLE trials_auditevent DISABLE TRIGGER trials_auditevent_append_only")
        yield cursor
        cursor.execute("ALTER TABLE trials_auditevent ENABLE TRIGGER trials_auditevent_append_only")


def test_every_event_links_to_the_one_before() -> None:
    events = _chain()
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    for before, event in zip(events, events[1:], strict=False):
        assert event.prev_hash == before.hash and event.hash == event_hash(event)
    assert verify_chain().ok
    head = AuditChainHead.objects.get()
    assert (head.last_seq, head.last_hash) == (events[-1].seq, events[-1].hash)
    assert "Audit chain intact" in _verify_output()


def _verify_output() -> str:
    from io import StringIO

    out = StringIO()
    call_command("verify_audit_chain", stdout=out)
    return out.getvalue()


@pytest.mark.parametrize(
    ("tamper", "problem"),
    [
        ("UPDATE trials_auditevent SET reason = 'nothing happened' WHERE seq = 3", "content does not match"),
        ("UPDATE trials_auditevent SET after = '{}'::jsonb WHERE seq = 3", "content does not match"),
        ("DELETE FROM trials_auditevent WHERE seq = 3", "missing or added"),
        (
            # Swap two rows' places (their seq) and fix the seqs: the links no longer meet.
            "UPDATE trials_auditevent SET seq = 1000000 WHERE seq = 3; "
            "UPDATE trials_auditevent SET seq = 3 WHERE seq = 4; "
            "UPDATE trials_auditevent SET seq = 4 WHERE seq = 1000000",
            "prev_hash",
        ),
    ],
    ids=["edited-reason", "edited-after", "deleted", "reordered"],
)
def test_an_edited_deleted_or_reordered_row_is_found(tamper: str, problem: str) -> None:
    _chain()
    with trigger_lifted() as cursor:
        cursor.execute(tamper)
    report = verify_chain()
    assert not report.ok and report.broken_at == 3 and problem in report.problem
    with pytest.raises(CommandError, match="broken at event #3"):
        call_command("verify_audit_chain")


def test_a_cut_off_tail_is_found() -> None:
    events = _chain()
    with trigger_lifted() as cursor:
        cursor.execute("DELETE FROM trials_auditevent WHERE seq = %s", [events[-1].seq])
    report = verify_chain()
    assert not report.ok and "were removed" in report.problem


@pytest.mark.django_db(transaction=True)
def test_concurrent_appends_keep_one_chain() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("needs concurrent transactions (PostgreSQL)")
    trial = make_trial("RACE")
    started = threading.Barrier(4)

    def writer(n: int) -> None:
        try:
            started.wait(timeout=30)
            for i in range(10):
                with transaction.atomic():
                    record_audit_event(actor=None, action="probe", obj=trial, reason=f"writer {n} event {i}")
        finally:
            connections.close_all()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert AuditEvent.objects.filter(action="probe").count() == 40
    assert verify_chain().ok


# --------------------------------------------------------------------------- the runtime database role


@pytest.fixture
def app_role() -> Iterator[str]:
    """A plain role granted by grant_app_role, acting in this test's transaction (rolled back after)."""
    if connection.vendor != "postgresql":
        pytest.skip("database roles are PostgreSQL's")
    role = f"mettrack_test_app_{os.getpid()}"
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE ROLE {role} NOLOGIN")
    call_command("grant_app_role", role)
    with connection.cursor() as cursor:
        cursor.execute(f"SET ROLE {role}")
    yield role
    with connection.cursor() as cursor:
        cursor.execute("RESET ROLE")


@pytest.mark.parametrize(
    "statement",
    [
        "TRUNCATE trials_auditevent",
        "ALTER TABLE trials_auditevent DISABLE TRIGGER trials_auditevent_append_only",
        "ALTER TABLE trials_auditevent DISABLE TRIGGER ALL",
        "SET session_replication_role = replica",
        "DROP TRIGGER trials_auditevent_append_only ON trials_auditevent",
        "UPDATE trials_auditevent SET reason = 'x'",
        "DELETE FROM trials_auditevent",
    ],
    ids=[
        "truncate",
        "disable-trigger",
        "disable-all-triggers",
        "replica-mode",
        "drop-trigger",
        "update",
        "delete",
    ],
)
def test_the_app_role_cannot_bypass_the_append_only_trail(app_role: str, statement: str) -> None:
    trial = make_trial("ROLE")  # the app role writes clinical rows and appends audit events as usual
    assert AuditEvent.objects.filter(trial=trial).exists()
    with (
        pytest.raises(DatabaseError, match="permission denied|must be owner|append-only"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(statement)
    assert verify_chain().ok


def test_grant_app_role_refuses_an_owner_or_superuser() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("database roles are PostgreSQL's")
    with pytest.raises(CommandError, match="superuser"):
        call_command("grant_app_role", "postgres")
    with pytest.raises(CommandError, match="No role"):
        call_command("grant_app_role", "no_such_role_here")
