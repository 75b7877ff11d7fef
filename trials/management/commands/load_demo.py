"""``manage.py load_demo``: the demo trial DEMO-BM with one site, three patients, their visits and one
user per role. Idempotent: a second run finds everything in place and only resets the demo passwords.
"""

from __future__ import annotations

import datetime as dt
import os
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from trials.actions import accounts, patients
from trials.actions import trials as trial_actions
from trials.actions.pacs import set_pacs_settings
from trials.audit import new_correlation_id
from trials.choices import ClinicalStatus, CorticosteroidStatus, MembershipRole
from trials.models import Patient, Site, Timepoint, Trial, TrialMembership, TrialPacsSettings

DEMO_TRIAL_CODE = "DEMO-BM"
DEMO_SITE_CODE = "DEMO-01"
DEFAULT_PASSWORD = "mettrack-demo"

#: username -> (trial role, is superuser)
DEMO_USERS: dict[str, tuple[str, bool]] = {
    "demo-admin": (MembershipRole.ADMIN, True),
    "demo-radiologist": (MembershipRole.RADIOLOGIST, False),
    "demo-investigator": (MembershipRole.INVESTIGATOR, False),
    "demo-datamanager": (MembershipRole.DATA_MANAGER, False),
}

# (subject id, treatment start, [(visit label, weeks after baseline, steroids, clinical status)])
DEMO_PATIENTS: list[tuple[str, dt.date, list[tuple[str, int, str, str]]]] = [
    (
        "DEMO-001",
        dt.date(2025, 1, 13),
        [
            ("BASELINE", 0, CorticosteroidStatus.NONE, ClinicalStatus.STABLE),
            ("FU1", 8, CorticosteroidStatus.NONE, ClinicalStatus.STABLE),
            ("FU2", 16, CorticosteroidStatus.NONE, ClinicalStatus.IMPROVED),
            ("FU3", 24, CorticosteroidStatus.NONE, ClinicalStatus.STABLE),
        ],
    ),
    (
        "DEMO-002",
        dt.date(2025, 2, 3),
        [
            ("BASELINE", 0, CorticosteroidStatus.STABLE, ClinicalStatus.STABLE),
            ("FU1", 8, CorticosteroidStatus.DECREASED, ClinicalStatus.STABLE),
            ("FU2", 16, CorticosteroidStatus.INCREASED, ClinicalStatus.WORSE),
        ],
    ),
    (
        "DEMO-003",
        dt.date(2025, 3, 10),
        [
            ("BASELINE", 0, CorticosteroidStatus.NONE, ClinicalStatus.STABLE),
            ("FU1", 6, CorticosteroidStatus.NONE, ClinicalStatus.STABLE),
            ("FU2", 12, CorticosteroidStatus.NONE, ClinicalStatus.STABLE),
            ("FU3", 20, CorticosteroidStatus.NONE, ClinicalStatus.STABLE),
        ],
    ),
]


class Command(BaseCommand):
    help = "Create (or complete) the demo trial DEMO-BM, its patients and visits, and one user per role."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--password",
            default=os.environ.get("DEMO_PASSWORD", DEFAULT_PASSWORD),
            help="Password of every demo user (default: $DEMO_PASSWORD or %(default)s).",
        )
        parser.add_argument("--host", default="http://127.0.0.1:8000", help="Base URL printed in the hints.")
        parser.add_argument(
            "--allow-demo-users-without-debug",
            action="store_true",
            help="Create the demo users (a superuser among them, with a password printed here) even with "
            "DEBUG off. Never on a server real users reach.",
        )

    def handle(
        self,
        *args: Any,
        password: str,
        host: str,
        allow_demo_users_without_debug: bool = False,
        **options: Any,
    ) -> None:
        if not settings.DEBUG and not allow_demo_users_without_debug:
            # With DEBUG off this may be a real deployment: a superuser with a published password is a
            # back door. make demo runs with DEBUG=1.
            raise CommandError(
                "load_demo creates a superuser with a known password; with DEBUG off it refuses. Use DEBUG=1 "
                "(as make demo does), or --allow-demo-users-without-debug on a machine no one else reaches."
            )
        correlation_id = new_correlation_id()
        audit: dict[str, Any] = {
            "actor": None,
            "reason": "demo data (manage.py load_demo)",
            "correlation_id": correlation_id,
        }
        with transaction.atomic():
            trial = Trial.objects.filter(code=DEMO_TRIAL_CODE).first() or trial_actions.create_trial(
                code=DEMO_TRIAL_CODE,
                title="Demo: longitudinal RANO-BM response in brain metastases",
                description="Synthetic demo trial. Not for clinical use.",
                is_demo=True,
                **audit,
            )
            site = Site.objects.filter(trial=trial, code=DEMO_SITE_CODE).first() or trial_actions.create_site(
                trial, code=DEMO_SITE_CODE, name="Demo University Hospital", **audit
            )
            if not TrialPacsSettings.objects.filter(trial=trial).exists():
                # The demo's synthetic series have 2 mm slices; the PACS viewer link points at a local
                # Orthanc's viewer when one runs beside the demo.
                set_pacs_settings(
                    trial,
                    protocol_id=DEMO_TRIAL_CODE,
                    series_rules={"max_slice_thickness_mm": 2.0},
                    viewer_url_template="http://127.0.0.1:8042/app/explorer.html#study?uuid={study_instance_uid}",
                    **audit,
                )
            created_patients = created_visits = 0
            for subject_id, start, visits in DEMO_PATIENTS:
                patient = Patient.objects.filter(trial=trial, subject_id=subject_id).first()
                if patient is None:
                    patient = patients.create_patient(
                        trial,
                        site=site,
                        subject_id=subject_id,
                        enrolment_date=start - dt.timedelta(days=14),
                        treatment_start_date=start,
                        **audit,
                    )
                    created_patients += 1
                baseline_date = start - dt.timedelta(days=7)
                for label, weeks, steroids, clinical in visits:
                    if Timepoint.objects.filter(patient=patient, visit_label=label).exists():
                        continue
                    patients.create_timepoint(
                        patient,
                        visit_label=label,
                        scan_date=baseline_date + dt.timedelta(weeks=weeks),
                        is_baseline=(weeks == 0),
                        corticosteroid_status=steroids,
                        clinical_status=clinical,
                        **audit,
                    )
                    created_visits += 1
            tokens = {}
            for username, (role, is_superuser) in DEMO_USERS.items():
                user = self._ensure_user(username, password, is_superuser)
                if not TrialMembership.objects.filter(trial=trial, user=user, role=role).exists():
                    trial_actions.add_membership(trial, user=user, role=role, site=site, **audit)
                # A fresh token each run (the password was just set again, so the old ones are dead).
                accounts.revoke_all_tokens(
                    user, actor=None, reason="demo tokens renewed (manage.py load_demo)"
                )
                tokens[username] = accounts.issue_token(user, reason="demo token (manage.py load_demo)").key

        self.stdout.write(
            self.style.SUCCESS(
                f"Demo trial {trial.code}: {trial.patients.count()} patients, "
                f"{Timepoint.objects.filter(patient__trial=trial).count()} visits "
                f"({created_patients} patients and {created_visits} visits created now)."
            )
        )
        self.stdout.write("Log in (all demo users share one password):")
        self.stdout.write(f"  password: {password}")
        for username, (role, is_superuser) in DEMO_USERS.items():
            extra = ", superuser" if is_superuser else ""
            self.stdout.write(f"  {username:<18} role {role}{extra}")
        self.stdout.write(
            f"  web:   {host}/accounts/login/   admin: {host}/admin/   API docs: {host}/api/docs/"
        )
        self.stdout.write(
            f"  API:   curl -H 'Authorization: Token {tokens['demo-investigator']}' {host}/api/v1/patients/"
        )

    def _ensure_user(self, username: str, password: str, is_superuser: bool) -> Any:
        """Create the demo user, or reset its password so the printed one always works."""
        user_model = get_user_model()
        user, _ = user_model.objects.get_or_create(username=username)
        user.is_active = True
        user.is_staff = is_superuser
        user.is_superuser = is_superuser
        user.set_password(password)
        user.save()
        return user
