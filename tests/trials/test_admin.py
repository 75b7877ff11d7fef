"""Admin: saves go through services (audited); the audit trail cannot be added, changed or deleted."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from tests.factories import make_superuser, make_trial
from trials.models import AuditEvent, Patient

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client() -> Client:
    client = Client()
    client.force_login(make_superuser("boss"))
    return client


def test_adding_a_patient_in_the_admin_is_audited(admin_client: Client, trial: Any) -> None:
    site = trial.sites.get()
    response = admin_client.post(
        "/admin/trials/patient/add/",
        {
            "trial": trial.pk,
            "site": site.pk,
            "subject_id": "ADM-1",
            "enrolment_date": "",
            "treatment_start_date": "",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    patient = Patient.objects.get(subject_id="ADM-1")
    event = AuditEvent.objects.get(object_type="trials.patient", object_id=str(patient.pk))
    assert (event.actor_name, event.action, event.reason) == ("boss", "create", "added in the admin")


def test_changing_a_trial_setting_in_the_admin_is_audited(admin_client: Client) -> None:
    trial = make_trial("ADM")
    data = {name: getattr(trial, name) for name in trial.CRITERIA_SETTING_FIELDS}
    data.update({"title": trial.title, "description": "", "max_targets": 3})
    data["immunotherapy"] = ""  # unchecked checkbox
    # a change without a reason is refused on the form, nothing saved
    refused = admin_client.post(f"/admin/trials/trial/{trial.pk}/change/", data)
    assert refused.status_code == 200 and "a change needs a reason" in refused.content.decode()
    trial.refresh_from_db()
    assert trial.max_targets == 5
    response = admin_client.post(
        f"/admin/trials/trial/{trial.pk}/change/", {**data, "reason": "protocol amendment 3"}
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    trial.refresh_from_db()
    assert trial.max_targets == 3
    event = AuditEvent.objects.filter(
        object_type="trials.trial", object_id=str(trial.pk), action="update"
    ).get()
    assert event.before == {"max_targets": 5} and event.after == {"max_targets": 3}
    assert event.reason == "protocol amendment 3"


def test_audit_trail_is_read_only_in_the_admin(admin_client: Client) -> None:
    make_trial("RO")
    event = AuditEvent.objects.first()
    assert admin_client.get("/admin/trials/auditevent/").status_code == 200
    assert admin_client.get("/admin/trials/auditevent/add/").status_code == 403
    assert admin_client.get(f"/admin/trials/auditevent/{event.pk}/delete/").status_code == 403
    response = admin_client.post(f"/admin/trials/auditevent/{event.pk}/change/", {"reason": "tampered"})
    assert response.status_code == 403
    event.refresh_from_db()
    assert event.reason == ""
