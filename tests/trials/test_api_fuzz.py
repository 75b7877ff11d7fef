"""The API fuzzed against its own OpenAPI schema with schemathesis (bounded examples, no deadlines).

Every operation of ``/api/schema/`` is called with generated valid and invalid input as a superuser (the
role matrix is tests/trials/test_api_permissions.py), in the world of tests/trials/api_world.py. Checks:
no 5xx, responses valid against the schema, the documented content type. The number of examples per
operation is ``SCHEMATHESIS_MAX_EXAMPLES`` (default 8): the suite runs on a loaded 2-core machine, so no
deadline and no timing-based health check.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from rest_framework.test import APIClient
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from config.wsgi import application
from tests.factories import DEFAULT_PASSWORD
from tests.trials.api_world import build_world

MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "8"))
#: Schemathesis phases: the schema's examples and random fuzzing by default (about 25 s here). The
#: "coverage" phase adds boundary values of every parameter (about 95 s on this 2-core machine; run it with
#: SCHEMATHESIS_PHASES=examples,coverage,fuzzing). The boundary probes it would find are pinned one by one
#: in test_api_probes.py.
PHASES = os.environ.get("SCHEMATHESIS_PHASES", "examples,fuzzing").split(",")

# Operations left out, and why: the upload needs a real series file (tests/pipeline/test_upload_api.py
# sends good and bad ones); the exports stream CSV and are probed in tests/exports; rotating or revoking
# would end the token this test runs with (tests/trials/test_security_auth.py covers them); STOW-RS takes
# multipart/related DICOM instances, which schemathesis cannot generate (tests/pacs/test_dicomweb.py sends
# real ones with dicomweb-client, and refused ones).
EXCLUDED_PATHS = [
    "/dicomweb/studies",
    "/api/v1/timepoints/{id}/series/",
    "/api/v1/trials/{id}/exports/{kind}.csv",
    "/api/v1/auth/token/rotate/",
    "/api/v1/auth/token/revoke/",
    "/api/v1/auth/token/revoke-all/",
]


@contextlib.contextmanager
def connection_kept_open() -> Iterator[None]:
    """Keep the test's database connection open across WSGI requests, as Django's test client does
    (the handler closes connections when a request finishes)."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


@pytest.fixture
def api_schema(db: None) -> Iterator[Any]:
    """The schema as served, bound to the WSGI application, with a world to find objects in."""
    world = build_world()
    root = world.users["superuser"]
    client = APIClient()
    token = client.post(
        "/api/v1/auth/token/", {"username": root.username, "password": DEFAULT_PASSWORD}, format="json"
    ).json()["token"]
    headers = {"Authorization": f"Token {token}"}
    with connection_kept_open():
        loaded = schemathesis.openapi.from_wsgi("/api/schema/?format=json", application, headers=headers)
        loaded.config.update(headers=headers)
        loaded.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
        loaded.config.phases.update(phases=PHASES)
        yield loaded


# The exclusions go on the lazy schema: the pytest plugin takes its operations from it.
schema = schemathesis.pytest.from_fixture("api_schema").exclude(path=EXCLUDED_PATHS)


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_api_conforms_to_its_schema_and_never_fails(case: Any) -> None:
    case.call_and_validate(checks=[not_a_server_error, response_schema_conformance, content_type_conformance])
