"""A duplicate inserted concurrently (after the service's pre-check) still ends as DuplicateError.

Needs real concurrent transactions, so it runs on PostgreSQL only (SQLite serialises writers).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from django.db import connection, connections, transaction

from tests.factories import make_site, make_trial
from trials.actions import patients
from trials.exceptions import DuplicateError
from trials.models import Patient


@contextmanager
def _uncommitted_patient(trial, site, subject_id: str) -> Iterator[None]:
    """Another transaction inserts a patient and holds it uncommitted until 0.5 s into the block."""
    inserted = threading.Event()
    release = threading.Event()

    def first_writer() -> None:
        try:
            with transaction.atomic():
                patients.create_patient(trial, site=site, subject_id=subject_id, actor=None)
                inserted.set()
                release.wait(timeout=30)  # hold the uncommitted row while the block's writer checks
        finally:
            connections.close_all()

    thread = threading.Thread(target=first_writer)
    thread.start()
    assert inserted.wait(timeout=30)
    # The pre-check cannot see the uncommitted row; the INSERT then waits on the unique index.
    timer = threading.Timer(0.5, release.set)
    timer.start()
    try:
        yield
    finally:
        thread.join(timeout=30)
        timer.cancel()


@pytest.mark.django_db(transaction=True)
def test_concurrent_duplicate_subject_id_becomes_duplicate_error() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("needs concurrent transactions (PostgreSQL)")
    trial = make_trial()
    site = make_site(trial)
    with (
        _uncommitted_patient(trial, site, "RACE-1"),
        pytest.raises(DuplicateError, match="A patient with this subject id already exists in this trial."),
    ):
        patients.create_patient(trial, site=site, subject_id="RACE-1", actor=None)
    assert Patient.objects.filter(subject_id="RACE-1").count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_concurrent_duplicate_inside_a_callers_transaction_leaves_that_transaction_usable() -> None:
    """The service's own atomic block (a savepoint when nested) is what the DuplicateError rolls back."""
    if connection.vendor != "postgresql":
        pytest.skip("needs concurrent transactions (PostgreSQL)")
    trial = make_trial()
    site = make_site(trial)
    with _uncommitted_patient(trial, site, "RACE-1"), transaction.atomic():
        with pytest.raises(DuplicateError):
            patients.create_patient(trial, site=site, subject_id="RACE-1", actor=None)
        # the caller goes on in the same transaction
        patients.create_patient(trial, site=site, subject_id="RACE-2", actor=None)
    assert set(Patient.objects.values_list("subject_id", flat=True)) == {"RACE-1", "RACE-2"}
