"""``manage.py load_demo`` creates the demo trial, users per role and visits, and is idempotent."""

from __future__ import annotations

from io import StringIO
from typing import Any

import pytest
from django.contrib.auth import authenticate, get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from rest_framework.test import APIClient

from trials.models import AuditEvent, Patient, Timepoint, Trial, TrialMembership

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def debug_on(settings: Any) -> None:
    settings.DEBUG = True  # as make demo runs it


def _run() -> str:
    out = StringIO()
    call_command("load_demo", "--password", "demo-pass-123", stdout=out)
    return out.getvalue()


def test_load_demo_refuses_with_debug_off_unless_asked_explicitly(settings: Any) -> None:
    # Fails on the code before issue 19: a superuser with a printed password was created on any server.
    settings.DEBUG = False
    with pytest.raises(CommandError, match="DEBUG off"):
        call_command("load_demo", "--password", "demo-pass-123", stdout=StringIO())
    assert not get_user_model().objects.filter(username="demo-admin").exists()
    call_command(
        "load_demo", "--password", "demo-pass-123", "--allow-demo-users-without-debug", stdout=StringIO()
    )
    assert get_user_model().objects.filter(username="demo-admin", is_superuser=True).exists()


def test_the_printed_demo_token_works() -> None:
    output = _run()
    token = output.split("Authorization: Token ")[1].split("'")[0]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    assert client.get("/api/v1/patients/").status_code == 200


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
        AuditEvent.objects.exclude(object_type="auth.user").count(),  # each run issues new tokens
    )
    output = _run()
    assert (
        Trial.objects.count(),
        Patient.objects.count(),
        Timepoint.objects.count(),
        AuditEvent.objects.exclude(object_type="auth.user").count(),  # each run issues new tokens
    ) == counts
    assert "0 patients and 0 visits created now" in output
