"""Operations endpoints in-process: liveness, readiness (each check), metrics and who may read them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from tests.factories import make_job, make_patient, make_trial
from trials.choices import JobKind, JobState

pytestmark = pytest.mark.django_db


def test_liveness_answers_without_checking_dependencies(client: Client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}
    assert "no-cache" in response["Cache-Control"] or "max-age=0" in response["Cache-Control"]


def test_readiness_in_embedded_mode_checks_database_storage_space_and_model(
    client: Client, settings: Any, tmp_path: Path
) -> None:
    settings.CELERY_EMBEDDED = True
    settings.MEDIA_ROOT = tmp_path
    response = client.get("/readyz", HTTP_ACCEPT="application/json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body.values()) == {"OK"}
    assert {"Database", "Storage", "FreeSpace", "ModelWeights"} <= {name.split("(")[0] for name in body}


def test_readiness_fails_with_503_when_the_model_weights_do_not_match(
    client: Client, settings: Any, tmp_path: Path
) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "weights.pt").write_bytes(b"not the weights")
    (model / "config.json").write_text(json.dumps({"weights_sha256": "0" * 64}))
    settings.CELERY_EMBEDDED = True
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.PIPELINE_MODEL_DIR = str(model)
    response = client.get("/readyz")
    assert response.status_code == 503
    assert "do not match the checksum" in response.content.decode()


def test_readiness_fails_when_free_space_is_under_the_minimum(
    client: Client, settings: Any, tmp_path: Path
) -> None:
    settings.CELERY_EMBEDDED = True
    settings.MEDIA_ROOT = tmp_path
    settings.STORAGE_MIN_FREE_BYTES = 1 << 60  # more than any disk
    response = client.get("/readyz", HTTP_ACCEPT="application/json")
    assert response.status_code == 503
    assert any("MiB free" in value for value in response.json().values())


def test_readiness_with_a_broker_needs_a_worker_on_every_queue(
    client: Client, settings: Any, tmp_path: Path
) -> None:
    """A broker without workers for MetTrack's queues: the node is not ready (work would wait forever)."""
    settings.CELERY_EMBEDDED = False
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:6379/13"
    settings.MEDIA_ROOT = tmp_path
    response = client.get("/readyz", HTTP_ACCEPT="application/json")
    assert response.status_code == 503
    body = response.json()
    assert any(name.startswith("Broker") and value == "OK" for name, value in body.items())
    assert any(
        name.startswith("WorkerQueues") and "no worker consumes" in value for name, value in body.items()
    )


def test_metrics_expose_requests_and_jobs_only_to_the_monitoring_system(
    client: Client, settings: Any
) -> None:
    trial = make_trial()
    patient = make_patient(trial)
    make_job(patient, kind=JobKind.PIPELINE)
    client.get("/healthz")
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 403
    response = client.get("/metrics", REMOTE_ADDR="127.0.0.1")
    assert response.status_code == 200
    text = response.content.decode()
    assert f'mettrack_jobs{{kind="{JobKind.PIPELINE}",state="{JobState.QUEUED}"}} 1.0' in text
    assert "mettrack_oldest_queued_job_age_seconds" in text
    assert "django_http_requests_total_by_method_total" in text
    settings.METRICS_TOKEN = "s3cret-token"
    assert (
        client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 403
    )  # a token is set: loopback is not enough
    ok = client.get("/metrics", REMOTE_ADDR="10.1.2.3", HTTP_AUTHORIZATION="Bearer s3cret-token")
    assert ok.status_code == 200
