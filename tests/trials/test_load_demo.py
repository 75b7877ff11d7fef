"""``manage.py load_demo`` creates the demo trial, users per role and visits, and is idempotent."""

from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.auth import authenticate
from django.core.management import call_command

from trials.models import AuditEvent, Patient, Timepoint, Trial, TrialMembership

pytestmark = pytest.mark.django_db


def _run() -> str:
    out = StringIO()
    call_command("load_demo", "--password", "demo-pass-123", stdout=out)
    return out.getvalue()


def test_load_demo_creates_trial_patients_visits_and_role_users() -> None:
    output = _run()
    trial = Trial.objects.get(code="DEMO-BM")
    assert trial.patients.count() == 3
    for patient in Patient.objects.filter(trial=trial):
        visits = patient.timepoints.count()
        assert 3 <= visits <= 4
        assert patient.timepoints.filter(is_baseline=True).count() == 1
    roles = dict(TrialMembership.objects.filter(trial=trial).values_list("user__username", "role"))
    assert roles == {
        "demo-admin": "admin",
        "demo-radiologist": "radiologist",
        "demo-investigator": "investigator",
        "demo-datamanager": "data_manager",
    }
    admin = authenticate(username="demo-admin", password="demo-pass-123")
    assert admin is not None and admin.is_superuser and admin.is_staff
    assert "demo-pass-123" in output and "demo-admin" in output and "/admin/" in output
    assert AuditEvent.objects.filter(trial=trial, object_type="trials.patient", action="create").count() == 3


def test_load_demo_twice_changes_nothing() -> None:
    _run()
    counts = (
        Trial.objects.count(),
        Patient.objects.count(),
        Timepoint.objects.count(),
        AuditEvent.objects.count(),
    )
    output = _run()
    assert (
        Trial.objects.count(),
        Patient.objects.count(),
        Timepoint.objects.count(),
        AuditEvent.objects.count(),
    ) == counts
    assert "0 patients and 0 visits created now" in output
