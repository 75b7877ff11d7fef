"""The deployed topology, as separate processes on this machine started with the commands of
docker/compose.yaml: gunicorn (docker/gunicorn.conf.py) in front of the application, two GPU-queue
workers, one default-queue worker and one beat, on a redis-server and the test PostgreSQL database of
their own.

Three patients' three visits each are uploaded concurrently over HTTP. One GPU worker is killed with
SIGKILL in the middle of a segmentation; its message stays unacknowledged in Redis (a long visibility
timeout, as in production), so what brings the job back is MetTrack's own lease: the job's heartbeat
stops, the lost-job sweep (beat) sends it again, the surviving GPU worker finishes it. Every job ends
succeeded, every series has one segmentation, every visit one current assessment per criteria.

The same cluster then answers as a deployment is checked: static files from WhiteNoise (DEBUG off,
collected), ``/readyz`` with the database, the broker and the worker queues, ``/metrics`` summed over
gunicorn's processes, and a database outage (a TCP proxy the test cuts) is a JSON 503 with Retry-After
rather than an HTML error page, the service answering again once the database is back.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.factories import DEFAULT_PASSWORD, make_member, make_patient, make_timepoint, make_trial
from tests.pipeline.conftest import VISIT_LABELS, SyntheticPatient
from tests.pipeline.test_worker import jobs_done
from tests.processes import (
    ROOT,
    ComposeService,
    Gunicorn,
    Process,
    RedisServer,
    TcpProxy,
    wait_for,
    worker_env,
)
from trials.choices import Criteria, JobState, MembershipRole, RunStatus
from trials.models import Assessment, AuditEvent, ImagingSeries, ProcessingJob, SegmentationRun, Timepoint

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

METRICS_TOKEN = "cluster-test-metrics-token"
PATIENTS = 3


def _series_zips(synthetic: SyntheticPatient, folder: Path) -> list[list[Path]]:
    """Each patient's visits as zipped DICOM series with UIDs of their own (one rendering, written again)."""
    from trials.management.commands.demo_pipeline import write_series_zip

    return [
        [
            write_series_zip(phantom, folder / f"p{n}-{label}.zip", patient_id=f"Doe^{n}")
            for phantom, label in zip(synthetic.phantoms, synthetic.labels, strict=True)
        ]
        for n in range(PATIENTS)
    ]


LARGE_BUNDLES = ("-i", "*.map", "-i", "drf_spectacular_sidecar", "-i", "vendor")


def _collect_static(env: dict[str, str]) -> None:
    """``collectstatic`` as the image runs it, less the large third-party bundles (the viewer, the API
    browsers, source maps): compressing them (gzip and brotli) cost most of the command's 30 CPU seconds,
    and the checks here read the dashboard's own files."""
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v0", *LARGE_BUNDLES],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=180,
    )


def _upload_visits(url: str, token: str, visits: list[Timepoint], zips: list[Path], out: list[Any]) -> None:
    """One site's uploads of one patient, in visit order, over HTTP."""
    with requests.Session() as session:
        session.headers["Authorization"] = f"Token {token}"
        for visit, path in zip(visits, zips, strict=True):
            with path.open("rb") as fh:
                response = session.post(
                    f"{url}/api/v1/timepoints/{visit.pk}/series/", files={"file": fh}, timeout=120
                )
            out.append(response)


def _gpu_worker_running(workers: list[ComposeService]) -> tuple[ComposeService, ProcessingJob] | None:
    """A GPU worker in the middle of a segmentation, and its job (its log names the job's dispatch)."""
    for job in ProcessingJob.objects.filter(
        state=JobState.RUNNING, stage="segmentation", progress_pct__gte=10
    ):
        for worker in workers:
            if f"[{job.celery_task_id}] received" in worker.log():
                return worker, job
    return None


@pytest.mark.timeout(600)
def test_a_cluster_survives_a_killed_gpu_worker_and_a_database_outage(
    synthetic_patient: SyntheticPatient,
    slow_tiny_model_dir: Path,
    media_root: Path,
    tmp_path: Path,
    settings: Any,
) -> None:
    from django.db import connection

    redis = RedisServer()
    redis.start()
    db_proxy = TcpProxy(int(connection.settings_dict["PORT"] or 5432))
    db_proxy.start()
    broker_url = f"redis://127.0.0.1:{redis.port}/0"
    settings.CELERY_BROKER_URL = broker_url  # this process reads the queues through broker_has_message
    env = worker_env(
        broker_url,
        media_root,
        slow_tiny_model_dir,
        CELERY_GPU_QUEUE="gpu",
        CELERY_DEFAULT_QUEUE="default",
        CELERY_VISIBILITY_TIMEOUT_S="3600",  # production-like: Redis alone would wait an hour
        PIPELINE_HEARTBEAT_S="2",
        PIPELINE_LEASE_S="15",
        PIPELINE_SWEEP_INTERVAL_S="3",
        PIPELINE_ENQUEUE_GRACE_S="2",
        PIPELINE_REQUEUE_AFTER_S="10",
        ALLOWED_HOSTS="127.0.0.1",
        STATIC_ROOT=str(tmp_path / "static"),
        LOG_FORMAT="json",
    )
    db = connection.settings_dict
    web_env = {
        **env,
        # The web processes reach PostgreSQL through the proxy the test cuts.
        "DATABASE_URL": f"postgres://{db['USER']}@127.0.0.1:{db_proxy.port}/{db['NAME']}",
        "METRICS_TOKEN": METRICS_TOKEN,
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
        "GUNICORN_WORKERS": "2",
        "GUNICORN_THREADS": "4",
    }
    _collect_static(env)

    trial = make_trial()
    manager = make_member(trial, MembershipRole.DATA_MANAGER)
    patients = []
    for n in range(PATIENTS):
        patient = make_patient(trial, subject_id=f"SUBJ-{n + 1:03d}")
        for index, (label, date) in enumerate(zip(VISIT_LABELS, synthetic_patient.dates, strict=True)):
            make_timepoint(patient, visit_label=label, scan_date=date, is_baseline=index == 0)
        patients.append(patient)
    zips = _series_zips(synthetic_patient, tmp_path / "uploads")

    processes: list[Process] = []
    try:
        web = Gunicorn(web_env, tmp_path / "gunicorn.log")
        tag = f"{os.getpid()}-{tmp_path.name}"
        gpu = [
            ComposeService("worker-gpu", env, tmp_path / f"gpu-{n}.log", n=f"gpu{n}-{tag}@%h") for n in (1, 2)
        ]
        default = ComposeService("worker-default", env, tmp_path / "default.log", n=f"default-{tag}@%h")
        beat = ComposeService("beat", env, tmp_path / "beat.log", s=str(tmp_path / "beat-schedule"))
        processes += [web, *gpu, default, beat]
        web.wait_ready()
        for worker in (*gpu, default):
            worker.wait_ready()
        beat.wait_ready()

        response = requests.post(
            f"{web.url}/api/v1/auth/token/",
            data={"username": manager.username, "password": DEFAULT_PASSWORD},
            timeout=30,
        )
        assert response.status_code == 200, (response.status_code, response.text[:500], web.log()[-3000:])
        token = response.json()["token"]
        responses: list[Any] = []
        threads = [
            threading.Thread(
                target=_upload_visits,
                args=(web.url, token, list(patient.timepoints.order_by("scan_date")), zips[n], responses),
            )
            for n, patient in enumerate(patients)
        ]
        for thread in threads:
            thread.start()

        found: list[tuple[ComposeService, ProcessingJob]] = []

        def a_gpu_worker_segments() -> bool:
            hit = _gpu_worker_running(gpu)
            if hit:
                found.append(hit)
            return hit is not None

        wait_for(
            a_gpu_worker_segments, 180, "a GPU worker to be in the middle of a segmentation", poll_s=0.05
        )
        victim, killed_job = found[0]
        victim.kill()
        for thread in threads:
            thread.join(timeout=300)
        assert [r.status_code for r in responses] == [202] * (PATIENTS * len(VISIT_LABELS)), [
            r.text[:300] for r in responses if r.status_code != 202
        ]
        job_ids = [r.json()["job"]["id"] for r in responses]
        wait_for(lambda: jobs_done(job_ids), 400, "every job to finish", poll_s=0.5)

        _check_every_job_ran_once(trial, job_ids, killed_job, "\n".join(p.log()[-2000:] for p in processes))
        _check_serving(web, token)
        _check_database_outage(web, token, db_proxy)
    finally:
        for process in reversed(processes):
            process.stop()
        db_proxy.cut()
        redis.stop()


def _check_every_job_ran_once(trial: Any, job_ids: list[int], killed_job: ProcessingJob, logs: str) -> None:
    """Every job succeeded; only the killed one ran twice; one segmentation per series, one current
    assessment per visit and criteria."""
    jobs = list(ProcessingJob.objects.filter(pk__in=job_ids))
    for job in jobs:
        assert job.state == JobState.SUCCEEDED, (job.pk, job.error, logs)
    killed_job.refresh_from_db()
    assert killed_job.attempts == 2  # sent again once, by the lease, not by Redis
    assert AuditEvent.objects.filter(
        object_id=str(killed_job.pk), reason__contains="stopped answering"
    ).exists()
    again = {
        j.pk: list(
            AuditEvent.objects.filter(object_id=str(j.pk)).values_list("created_at", "action", "reason")
        )
        for j in jobs
        if j.pk != killed_job.pk and j.attempts != 1
    }
    assert not again, "\n".join(
        f"{k}: {e[1]} {e[2]!r} {e[0]:%H:%M:%S.%f}" for k, v in again.items() for e in v
    )
    assert ImagingSeries.objects.filter(timepoint__patient__trial=trial).count() == len(job_ids)
    for series in ImagingSeries.objects.filter(timepoint__patient__trial=trial):
        runs = SegmentationRun.objects.filter(series=series)
        assert [run.status for run in runs] == [RunStatus.SUCCEEDED]
    for tp in Timepoint.objects.filter(patient__trial=trial):
        for criteria in (Criteria.RANO_BM, Criteria.VOLUMETRIC):
            assert Assessment.objects.filter(timepoint=tp, criteria=criteria, is_current=True).count() == 1


def _check_serving(web: Gunicorn, token: str) -> None:
    """Static files, readiness and metrics of the running cluster."""
    css = requests.get(
        f"{web.url}/static/dashboard/dashboard.css", headers={"Accept-Encoding": "gzip"}, timeout=30
    )
    assert css.status_code == 200 and "text/css" in css.headers["Content-Type"]
    assert css.headers.get("Content-Encoding") == "gzip"  # compressed when collected
    assert "max-age" in css.headers.get("Cache-Control", "")

    ready = requests.get(f"{web.url}/readyz", headers={"Accept": "application/json"}, timeout=60)
    assert ready.status_code == 200, ready.text
    checks = ready.json()
    assert set(checks.values()) == {"OK"}
    names = {name.split("(")[0] for name in checks}
    assert {"Database", "Storage", "FreeSpace", "ModelWeights", "Broker", "WorkerQueues"} <= names, checks

    assert requests.get(f"{web.url}/metrics", timeout=30).status_code == 403  # a token is set: it is needed
    metrics = requests.get(
        f"{web.url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=30
    )
    assert metrics.status_code == 200
    succeeded = re.search(r'^mettrack_jobs\{[^}]*state="succeeded"[^}]*\} (\S+)$', metrics.text, re.M)
    assert succeeded and float(succeeded.group(1)) >= PATIENTS * len(VISIT_LABELS), metrics.text[:2000]
    assert "django_http_requests_total_by_method_total" in metrics.text


def _check_database_outage(web: Gunicorn, token: str, db_proxy: TcpProxy) -> None:
    """The database going away is a JSON 503 with Retry-After; the service comes back with it."""
    api = {"Authorization": f"Token {token}", "Accept": "application/json"}
    assert requests.get(f"{web.url}/api/v1/trials/", headers=api, timeout=30).status_code == 200
    db_proxy.cut()
    down = requests.get(f"{web.url}/api/v1/trials/", headers=api, timeout=60)
    assert down.status_code == 503, down.text[:500]
    assert down.headers["Content-Type"].startswith("application/json")
    assert int(down.headers["Retry-After"]) > 0
    assert "Traceback" not in down.text and "psycopg" not in down.text
    assert requests.get(f"{web.url}/healthz", timeout=30).status_code == 200  # alive: do not restart it
    assert requests.get(f"{web.url}/readyz", timeout=60).status_code == 503  # not ready: no traffic
    db_proxy.start()

    def answers_again() -> bool:
        return requests.get(f"{web.url}/api/v1/trials/", headers=api, timeout=30).status_code == 200

    wait_for(answers_again, 60, "the API to answer once the database is back", poll_s=1)
