"""Test builders: small functions that create real rows through ``trials.services`` (so audit events
and constraints behave as in production). Every argument has a sensible default; pass what matters.

    user = make_user("ann")
    trial = make_trial()
    member = make_member(trial, "radiologist")          # a new user with that role
    patient = make_patient(trial)
    baseline = make_timepoint(patient, is_baseline=True)
    lesion = make_lesion(patient)
    make_observation(lesion, baseline, longest_diameter_mm=12.0)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
from typing import Any

from django.contrib.auth import get_user_model

from trials.actions import patients
from trials.actions import trials as trial_actions
from trials.choices import JobKind
from trials.models import (
    Assessment,
    ImagingSeries,
    Lesion,
    LesionObservation,
    ModelVersion,
    Patient,
    ProcessingJob,
    SegmentationRun,
    Site,
    Timepoint,
    Trial,
    TrialMembership,
)
from trials.records import assessments as assessment_records
from trials.records import imaging as imaging_records
from trials.records import jobs as job_records
from trials.records import lesions as lesion_records

DEFAULT_PASSWORD = "test-password-123"
_counter = itertools.count(1)


def _n() -> int:
    return next(_counter)


def make_user(username: str | None = None, *, password: str = DEFAULT_PASSWORD, **fields: Any) -> Any:
    """Create an active user with a usable password."""
    user_model = get_user_model()
    return user_model.objects.create_user(username=username or f"user{_n()}", password=password, **fields)


def make_superuser(username: str | None = None, *, password: str = DEFAULT_PASSWORD) -> Any:
    """Create a superuser."""
    user_model = get_user_model()
    return user_model.objects.create_superuser(
        username=username or f"root{_n()}", password=password, email=""
    )


def make_trial(
    code: str | None = None, *, title: str = "Test trial", is_demo: bool = True, **criteria_settings: Any
) -> Trial:
    """Create a trial (criteria settings default to rano-bm.md section 9).

    A demo trial unless ``is_demo=False``: the pipeline tests run small demo-labelled models, which a demo
    trial runs without approval (README "Model governance"); the governance tests use non-demo trials.
    """
    return trial_actions.create_trial(
        code=code or f"T{_n()}", title=title, is_demo=is_demo, actor=None, **criteria_settings
    )


def make_site(trial: Trial | None = None, *, code: str | None = None, name: str = "Test site") -> Site:
    """Create a site (of a new trial unless given)."""
    return trial_actions.create_site(trial or make_trial(), code=code or f"S{_n()}", name=name, actor=None)


def make_membership(user: Any, trial: Trial, role: str, *, site: Site | None = None) -> TrialMembership:
    """Give ``user`` ``role`` in ``trial``."""
    return trial_actions.add_membership(trial, user=user, role=role, site=site, actor=None)


def make_member(trial: Trial, role: str, username: str | None = None) -> Any:
    """Create a user holding ``role`` in ``trial``."""
    user = make_user(username)
    make_membership(user, trial, role)
    return user


def make_patient(
    trial: Trial | None = None, *, site: Site | None = None, subject_id: str | None = None, **fields: Any
) -> Patient:
    """Create a patient (a site of the trial is created unless given)."""
    if trial is None:
        trial = site.trial if site is not None else make_trial()
    site = site or trial.sites.first() or make_site(trial)
    return patients.create_patient(
        trial, site=site, subject_id=subject_id or f"SUBJ-{_n():04d}", actor=None, **fields
    )


def make_timepoint(
    patient: Patient | None = None,
    *,
    visit_label: str | None = None,
    scan_date: dt.date | None = None,
    is_baseline: bool = False,
    **fields: Any,
) -> Timepoint:
    """Create a visit (default scan date 2024-01-01 plus 60 days per existing visit)."""
    patient = patient or make_patient()
    existing = patient.timepoints.count()
    return patients.create_timepoint(
        patient,
        visit_label=visit_label or ("BASELINE" if is_baseline else f"FU{existing or _n()}"),
        scan_date=scan_date or dt.date(2024, 1, 1) + dt.timedelta(days=60 * existing),
        is_baseline=is_baseline,
        actor=None,
        **fields,
    )


def make_series(
    timepoint: Timepoint | None = None, *, series_instance_uid: str | None = None, **fields: Any
) -> ImagingSeries:
    """Register a series (no file) of a visit."""
    return imaging_records.register_series(
        timepoint or make_timepoint(),
        series_instance_uid=series_instance_uid or f"1.2.826.0.1.3680043.8.498.{_n()}",
        actor=None,
        **fields,
    )


def make_model_version(
    *, name: str = "unetr-test", version: str | None = None, **fields: Any
) -> ModelVersion:
    """Register a model version with a unique (fake) weights checksum."""
    number = _n()
    fields.setdefault("weights_sha256", hashlib.sha256(f"weights-{number}".encode()).hexdigest())
    return imaging_records.register_model_version(
        name=name,
        version=version or f"0.{number}",
        architecture=fields.pop("architecture", "UNETR"),
        actor=None,
        **fields,
    )


def make_run(
    series: ImagingSeries | None = None, model_version: ModelVersion | None = None, **fields: Any
) -> SegmentationRun:
    """Create a segmentation run."""
    return imaging_records.create_segmentation_run(
        series or make_series(), model_version or make_model_version(), actor=None, **fields
    )


def make_lesion(patient: Patient | None = None, **fields: Any) -> Lesion:
    """Create a lesion (next free label)."""
    return lesion_records.create_lesion(patient or make_patient(), actor=None, **fields)


def make_observation(lesion: Lesion, timepoint: Timepoint, **measurements: Any) -> LesionObservation:
    """Record an observation of ``lesion`` at ``timepoint`` (default: present, LD 12 mm)."""
    measurements.setdefault("longest_diameter_mm", 12.0)
    return lesion_records.record_observation(lesion, timepoint, actor=None, **measurements)


def make_assessment(timepoint: Timepoint | None = None, **results: Any) -> Assessment:
    """Create a current draft AI assessment of a visit (default overall response SD)."""
    results.setdefault("overall_response", "SD")
    return assessment_records.create_assessment(timepoint or make_timepoint(), actor=None, **results)


def make_job(obj: Any = None, *, kind: str = JobKind.SEGMENT, **fields: Any) -> ProcessingJob:
    """Create a queued job (nothing is enqueued)."""
    return job_records.create_job(kind, obj=obj, actor=None, **fields)
