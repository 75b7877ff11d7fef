"""PACS destinations and settings: created through actions (admin included), audited, validated; the
signature of a visit queues the deliveries of destinations that wait for it."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from tests.factories import make_superuser
from trials.actions.pacs import create_destination, set_pacs_settings
from trials.choices import DeliveryTrigger
from trials.exceptions import InvalidInputError
from trials.models import AuditEvent, PacsDestination, TrialPacsSettings

pytestmark = pytest.mark.django_db


def test_destination_added_in_the_admin_is_audited(trial: Any) -> None:
    client = Client()
    client.force_login(make_superuser("boss"))
    response = client.post(
        "/admin/trials/pacsdestination/add/",
        {
            "trial": trial.pk,
            "name": "Planning",
            "protocol": "cstore",
            "ae_title": "TPS",
            "host": "10.0.0.5",
            "port": "104",
            "url": "",
            "sends": '["rtstruct"]',
            "trigger": "signed",
            "is_active": "on",
        },
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    destination = PacsDestination.objects.get(name="Planning")
    assert (destination.trigger, destination.sends) == (DeliveryTrigger.SIGNED, ["rtstruct"])
    event = AuditEvent.objects.get(object_type="trials.pacsdestination", object_id=str(destination.pk))
    assert (event.actor_name, event.action) == ("boss", "create")
    assert client.get("/admin/trials/receivedstudy/").status_code == 200
    assert client.get("/admin/trials/pacsdelivery/").status_code == 200


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"protocol": "cstore", "ae_title": "PACS", "host": "pacs", "sends": ["seg"]}, "port"),
        ({"protocol": "stow", "url": "pacs/dicom-web", "sends": ["seg"]}, "url"),
        ({"protocol": "stow", "url": "http://pacs/dicom-web", "sends": ["pdf"]}, "sends"),
    ],
)
def test_destination_needs_the_details_of_its_protocol(trial: Any, values: dict, field: str) -> None:
    with pytest.raises(InvalidInputError) as refused:
        create_destination(trial, name="X", actor=None, **values)
    assert field in refused.value.field_errors


def test_series_rules_are_checked_when_set(trial: Any) -> None:
    with pytest.raises(InvalidInputError, match="Unknown series rule"):
        set_pacs_settings(trial, series_rules={"slice_mm": 1}, actor=None)
    settings = set_pacs_settings(trial, visit_window_days=21, actor=None)
    assert TrialPacsSettings.objects.get(trial=trial).visit_window_days == 21 == settings.visit_window_days


def test_data_managers_map_a_site_patient_id_stored_as_a_hash_only(trial: Any, api_client: Any) -> None:
    from tests.factories import make_member, make_patient
    from trials.actions.pacs import patient_key
    from trials.models import SubjectMapping

    patient = make_patient(trial, subject_id="SUBJ-9")
    url = f"/api/v1/patients/{patient.pk}/subject-mapping/"
    api_client.force_authenticate(make_member(trial, "investigator"))
    assert api_client.post(url, {"patient_id": "MRN-77"}, format="json").status_code == 403
    api_client.force_authenticate(make_member(trial, "data_manager"))
    answer = api_client.post(url, {"patient_id": "MRN-77"}, format="json")
    assert answer.status_code == 201 and "MRN-77" not in answer.content.decode()
    mapping = SubjectMapping.objects.get(patient=patient)
    assert mapping.patient_id_hmac == patient_key("MRN-77") != "MRN-77"
    event = AuditEvent.objects.get(action="map_patient_id")
    assert "MRN-77" not in repr((event.before, event.after, event.reason, event.object_repr))
    assert mapping.patient_id_hmac not in repr((event.before, event.after, event.object_repr))
    assert api_client.post(url, {"patient_id": "MRN-77"}, format="json").status_code == 201  # idempotent
    other = make_patient(trial, subject_id="SUBJ-10", site=patient.site)
    clash = api_client.post(
        f"/api/v1/patients/{other.pk}/subject-mapping/", {"patient_id": "MRN-77"}, format="json"
    )
    assert clash.status_code == 409
