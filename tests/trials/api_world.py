"""A small two-trial world for API tests: trial A (the users' own) and trial B (another trial)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tests.factories import (
    make_assessment,
    make_job,
    make_lesion,
    make_membership,
    make_observation,
    make_patient,
    make_series,
    make_site,
    make_superuser,
    make_timepoint,
    make_trial,
    make_user,
)
from trials.choices import MembershipRole

ROLES = [
    MembershipRole.INVESTIGATOR,
    MembershipRole.RADIOLOGIST,
    MembershipRole.DATA_MANAGER,
    MembershipRole.ADMIN,
]


@dataclass
class TrialWorld:
    """One trial with one of each object."""

    trial: Any
    site: Any
    patient: Any
    baseline: Any
    follow_up: Any
    lesion: Any
    spare_lesion: Any
    observation: Any
    series: Any
    assessment: Any
    job: Any
    membership: Any
    ids: dict[str, int] = field(default_factory=dict)


def build_trial_world(code: str) -> TrialWorld:
    """Create trial ``code`` with a site, a patient, two visits, lesions, an observation, a series, a
    draft assessment, a job and a membership of a spare user."""
    trial = make_trial(code)
    site = make_site(trial, code=f"{code}-S1")
    patient = make_patient(trial, site=site, subject_id=f"{code}-001")
    baseline = make_timepoint(patient, visit_label="BASELINE", is_baseline=True)
    follow_up = make_timepoint(patient, visit_label="FU1")
    lesion = make_lesion(patient)
    spare_lesion = make_lesion(patient)
    observation = make_observation(lesion, baseline, longest_diameter_mm=14.0)
    series = make_series(follow_up)
    assessment = make_assessment(follow_up, overall_response="SD")
    job = make_job(series)
    membership = make_membership(make_user(f"{code.lower()}-spare"), trial, MembershipRole.INVESTIGATOR)
    world = TrialWorld(
        trial,
        site,
        patient,
        baseline,
        follow_up,
        lesion,
        spare_lesion,
        observation,
        series,
        assessment,
        job,
        membership,
    )
    world.ids = {
        "trials": trial.pk,
        "sites": site.pk,
        "memberships": membership.pk,
        "patients": patient.pk,
        "timepoints": follow_up.pk,
        "series": series.pk,
        "lesions": lesion.pk,
        "observations": observation.pk,
        "assessments": assessment.pk,
        "audit-events": trial.audit_events.order_by("id").first().pk,
        "jobs": job.pk,
    }
    return world


@dataclass
class World:
    """Trial A (own), trial B (other) and the principals."""

    own: TrialWorld
    other: TrialWorld
    users: dict[str, Any]
    outsider_target: Any  # a user with no membership, to add as a member


def build_world() -> World:
    """Users: one per role in trial A only, a superuser, an outsider (no membership)."""
    own, other = build_trial_world("A"), build_trial_world("B")
    users: dict[str, Any] = {}
    for role in ROLES:
        users[role] = make_user(f"a-{role}")
        make_membership(users[role], own.trial, role)
    users["superuser"] = make_superuser("root")
    users["outsider"] = make_user("outsider")
    return World(own, other, users, make_user("newcomer"))
