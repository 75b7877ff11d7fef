"""The permission matrix: every endpoint x every operation x every principal x own/other trial.

Expected outcomes come from the role table of the issue (investigator reads; radiologist edits lesions
and confirms/overrides assessments; data manager manages patients and visits; trial admin manages
memberships, sites and the trial), written out here independently of ``trials.permissions``:

* anonymous: 401 everywhere;
* another trial's object (detail URL): 404; a create naming another trial's parent: 400;
* own trial: reads 200; writes succeed for the roles listed in ``ALLOWED`` and the superuser, 403 else;
* read-only endpoints answer 405 to writes.

Each attempt runs in a savepoint that is rolled back, so every principal sees the same world.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from django.db import transaction
from rest_framework.test import APIClient

from tests.factories import DEFAULT_PASSWORD
from tests.trials.api_world import ROLES, TrialWorld, World, build_world

pytestmark = pytest.mark.django_db

INV, RAD, DM, ADM = ("investigator", "radiologist", "data_manager", "admin")
PRINCIPALS = ["anonymous", *ROLES, "superuser", "outsider"]


@dataclass(frozen=True)
class Op:
    """One API operation on one endpoint."""

    endpoint: str
    kind: str  # list | retrieve | create | update | delete | action:<name>
    allowed: frozenset[str]  # roles (in the object's trial) allowed to write; reads: everyone
    success: int = 200
    payload: Callable[[TrialWorld, World], dict[str, Any]] | None = None
    read_only_endpoint: bool = False
    global_op: bool = False  # not tied to a trial (creating a trial)

    def __str__(self) -> str:
        return f"{self.kind} {self.endpoint}"


def _r(*roles: str) -> frozenset[str]:
    return frozenset(roles)


OPS: list[Op] = []
for endpoint, read_only in [
    ("trials", False),
    ("sites", False),
    ("memberships", False),
    ("patients", False),
    ("timepoints", False),
    ("series", True),
    ("lesions", False),
    ("observations", False),
    ("assessments", True),
    ("audit-events", True),
    ("jobs", True),
]:
    OPS.append(Op(endpoint, "list", _r()))
    OPS.append(Op(endpoint, "retrieve", _r()))
    if read_only:
        OPS.append(Op(endpoint, "update", _r(), payload=lambda t, w: {"notes": "x"}, read_only_endpoint=True))

OPS += [
    Op("trials", "create", _r(), 201, lambda t, w: {"code": "NEW", "title": "New trial"}, global_op=True),
    Op("trials", "update", _r(ADM), 200, lambda t, w: {"title": "Renamed", "max_targets": 3}),
    Op("sites", "create", _r(ADM), 201, lambda t, w: {"trial": t.trial.pk, "code": "S9", "name": "Nine"}),
    Op("sites", "update", _r(ADM), 200, lambda t, w: {"name": "Renamed site"}),
    Op(
        "memberships",
        "create",
        _r(ADM),
        201,
        lambda t, w: {"trial": t.trial.pk, "user": w.outsider_target.pk, "role": "investigator"},
    ),
    Op("memberships", "update", _r(ADM), 200, lambda t, w: {"role": "radiologist"}),
    Op("memberships", "delete", _r(ADM), 204),
    Op(
        "patients",
        "create",
        _r(DM),
        201,
        lambda t, w: {"trial": t.trial.pk, "site": t.site.pk, "subject_id": "NEW-1"},
    ),
    Op("patients", "update", _r(DM), 200, lambda t, w: {"enrolment_date": "2025-01-02"}),
    Op(
        "timepoints",
        "create",
        _r(DM),
        201,
        lambda t, w: {"patient": t.patient.pk, "visit_label": "FU9", "scan_date": "2025-06-01"},
    ),
    Op("timepoints", "update", _r(DM), 200, lambda t, w: {"clinical_status": "worse"}),
    Op("lesions", "create", _r(RAD), 201, lambda t, w: {"patient": t.patient.pk, "is_dural": True}),
    Op("lesions", "update", _r(RAD), 200, lambda t, w: {"role": "target", "reason": "largest"}),
    Op(
        "observations",
        "create",
        _r(RAD),
        201,
        lambda t, w: {
            "lesion": t.spare_lesion.pk,
            "timepoint": t.follow_up.pk,
            "source": "manual",
            "longest_diameter_mm": 7.5,
            "caliper_points_mm": [[1, 2, 3], [8.5, 2, 3]],
        },
    ),
    Op("observations", "update", _r(RAD), 200, lambda t, w: {"longest_diameter_mm": 15.0}),
    Op(
        "assessments",
        "action:confirm",
        _r(RAD),
        200,
        lambda t, w: {"reason": "agree", "password": DEFAULT_PASSWORD},
    ),
    Op(
        "assessments",
        "action:override",
        _r(RAD),
        201,
        lambda t, w: {"overall_response": "PD", "reason": "new lesion", "password": DEFAULT_PASSWORD},
    ),
]


def _expected(op: Op, principal: str, side: str) -> int:
    if principal == "anonymous":
        return 401
    if op.read_only_endpoint:
        return 405
    if op.kind in ("list", "retrieve"):
        if (
            op.kind == "retrieve"
            and principal != "superuser"
            and (side == "other" or principal == "outsider")
        ):
            return 404
        return 200
    if op.global_op:
        return op.success if principal == "superuser" else 403
    member = principal == "superuser" or (side == "own" and principal in ROLES)
    if not member:
        return 400 if op.kind == "create" else 404
    return op.success if principal == "superuser" or principal in op.allowed else 403


def _request(client: APIClient, op: Op, tw: TrialWorld, world: World) -> tuple[int, Any]:
    base = f"/api/v1/{op.endpoint}/"
    detail = f"{base}{tw.ids[op.endpoint]}/"
    payload = op.payload(tw, world) if op.payload else None
    if op.kind == "list":
        response = client.get(base, {"page_size": 500})
    elif op.kind == "retrieve":
        response = client.get(detail)
    elif op.kind == "create":
        response = client.post(base, payload, format="json")
    elif op.kind == "update":
        response = client.patch(detail, {"reason": "test change", **payload}, format="json")
    elif op.kind == "delete":
        response = client.delete(f"{detail}?reason=left+the+study+team")
    else:
        response = client.post(f"{detail}{op.kind.split(':', 1)[1]}/", payload, format="json")
    return response.status_code, response


@pytest.fixture(scope="module")
def world(django_db_setup: None, django_db_blocker: Any) -> Any:
    """Build the world once for the module, inside a transaction rolled back at the end.

    Every test's own changes are rolled back by its ``db`` savepoint and every attempt by its own.
    """
    with django_db_blocker.unblock():
        outer = transaction.atomic()
        outer.__enter__()
        try:
            yield build_world()
        finally:
            transaction.set_rollback(True)
            outer.__exit__(None, None, None)


@pytest.mark.parametrize("op", OPS, ids=str)
def test_permission_matrix(world: World, op: Op) -> None:
    mismatches: list[str] = []
    for principal in PRINCIPALS:
        for side, tw in (("own", world.own), ("other", world.other)):
            client = APIClient()
            if principal != "anonymous":
                client.force_authenticate(world.users[principal])
            expected = _expected(op, principal, side)
            with transaction.atomic():
                status, response = _request(client, op, tw, world)
                if status != expected:
                    body = getattr(response, "data", None)
                    mismatches.append(
                        f"{principal:>13} {side:>5}: got {status}, expected {expected} ({body})"
                    )
                elif op.kind == "list" and status == 200:
                    returned = {row["id"] for row in response.data["results"]}
                    sees_own = tw.ids[op.endpoint] in returned
                    may_see = principal == "superuser" or (side == "own" and principal in ROLES)
                    if sees_own != may_see:
                        mismatches.append(
                            f"{principal:>13} {side:>5}: list visibility {sees_own}, expected {may_see}"
                        )
                transaction.set_rollback(True)
    assert not mismatches, f"{op}:\n" + "\n".join(mismatches)
