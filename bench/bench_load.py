"""Load on the deployed web process: gunicorn (docker/gunicorn.conf.py) on PostgreSQL, driven by locust.

    python -m bench load        (make bench BENCH=load; DATABASE_URL selects the PostgreSQL server)

Builds a throw-away database (bench_dashboard's data: a patient with 10 visits x 10 lesions in a trial,
and a second trial of LOAD_EXPORT_PATIENTS patients with three visits each), starts gunicorn with the
compose file's command and its defaults (gthread workers, 2 per core, 4 threads each, persistent
database connections), and runs locust headless: LOAD_USERS data managers (default 50) for LOAD_SECONDS
(default 60), each with a session signed in beforehand, open the patient timeline page, list visits
through the API and download the visits export (bench/locust_users.py). Printed: requests/s, p50/p95/max per request kind, the error rate, the
most database connections open at once (sampled from pg_stat_activity every 0.25 s) against the bound
gunicorn's configuration sets (workers x threads), and the web processes' resident memory.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench import setup_django

ROOT = Path(__file__).resolve().parents[1]
USERS = int(os.environ.get("LOAD_USERS", 50))
SECONDS = int(os.environ.get("LOAD_SECONDS", 60))
EXPORT_PATIENTS = int(os.environ.get("LOAD_EXPORT_PATIENTS", 100))


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _sessions(users: list[Any]) -> list[str]:
    """A signed-in session of each user (a database session row, as the login form makes)."""
    from django.test import Client

    keys = []
    for user in users:
        client = Client()
        client.force_login(user)
        keys.append(client.cookies["sessionid"].value)
    return keys


def _build() -> dict[str, Any]:
    from django.contrib.auth import get_user_model
    from django.contrib.auth.hashers import make_password

    from bench.bench_dashboard import _build as build_dashboard_data
    from trials.models import TrialMembership

    world = build_dashboard_data(EXPORT_PATIENTS)
    password = make_password(os.urandom(16).hex())  # sessions are made directly; nobody signs in
    users = get_user_model().objects.bulk_create(
        get_user_model()(username=f"load{n:03d}", password=password) for n in range(USERS)
    )
    TrialMembership.objects.bulk_create(
        TrialMembership(user=user, trial=trial, role="data_manager")
        for user in users
        for trial in (world["trial"], world["big"])
    )
    world["sessions"] = _sessions(users)
    return world


class ConnectionSampler(threading.Thread):
    """The most connections to one database open at once, read from pg_stat_activity."""

    def __init__(self, dsn: str, database: str) -> None:
        super().__init__(daemon=True)
        self.dsn, self.database = dsn, database
        self.peak = 0
        self.stop = threading.Event()

    def run(self) -> None:
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.stop.is_set():
                (count,) = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                    [self.database],
                ).fetchone()  # type: ignore[misc]
                self.peak = max(self.peak, int(count))
                time.sleep(0.25)


def _memory(master_pid: int) -> list[tuple[float, float, bool]]:
    """Resident and proportional memory (MB; PSS shares the pages the forked workers share with the
    master) of gunicorn's master and workers, and whether torch is loaded in each."""
    pids = [master_pid]
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    sizes = []
    for pid in pids:
        fields = dict(
            line.split(":", 1) for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]
        )
        torch = "libtorch" in Path(f"/proc/{pid}/maps").read_text()
        sizes.append((int(fields["Rss"].split()[0]) / 1024, int(fields["Pss"].split()[0]) / 1024, torch))
    return sizes


def _gunicorn_env(database_url: str, port: int, media: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url,
        DEBUG="0",
        SECRET_KEY=os.environ["SECRET_KEY"],  # the key the sessions were signed with (setup_django's)
        ALLOWED_HOSTS="127.0.0.1",
        SESSION_COOKIE_SECURE="0",  # plain HTTP on the loopback
        CSRF_COOKIE_SECURE="0",
        SECURE_SSL_REDIRECT="0",
        GUNICORN_BIND=f"127.0.0.1:{port}",
        MEDIA_ROOT=media,
        PROMETHEUS_MULTIPROC_DIR=os.path.join(media, "metrics"),
        LOG_LEVEL="WARNING",
        THROTTLE_USER="1000000/hour",  # the benchmark measures serving, not the per-user throttle
    )
    return env


def _wait_listening(port: int, process: subprocess.Popen[bytes], timeout_s: float = 120) -> None:
    import socket

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("gunicorn exited early")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise RuntimeError("gunicorn did not start listening")


def _report(
    stats_csv: Path, peak_connections: int, bound: int, memory: list[tuple[float, float, bool]]
) -> None:
    rows = list(csv.DictReader(stats_csv.open()))
    print(
        f"{'request':32s} {'count':>7s} {'fail':>5s} {'req/s':>7s} {'p50 ms':>7s} {'p95 ms':>7s} {'max ms':>7s}"
    )
    for row in rows:
        print(
            f"{row['Name']:32s} {int(row['Request Count']):7d} {int(row['Failure Count']):5d} "
            f"{float(row['Requests/s']):7.1f} {float(row['50%']):7.0f} {float(row['95%']):7.0f} "
            f"{float(row['Max Response Time']):7.0f}"
        )
    total = next(row for row in rows if row["Name"] == "Aggregated")
    errors = int(total["Failure Count"]) / max(1, int(total["Request Count"]))
    print(f"error rate: {errors:.2%} (target 0)")
    print(f"database connections at most: {peak_connections} (bound: workers x threads = {bound})")
    rows_mb = ", ".join(f"{rss:.0f}/{pss:.0f}" for rss, pss, _ in memory)
    print(
        f"gunicorn memory RSS/PSS MB (master, workers): {rows_mb}; torch loaded: {any(t for *_, t in memory)}"
    )


def _gunicorn_config(env: dict[str, str]) -> dict[str, str]:
    """The settings gunicorn resolves from docker/gunicorn.conf.py and this environment."""
    import re

    printed = subprocess.run(
        [str(Path(sys.executable).with_name("gunicorn")), "--print-config", "-c", "docker/gunicorn.conf.py",
         "config.wsgi"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True, timeout=120,
    ).stdout  # fmt: skip
    return dict(re.findall(r"^(\w+)\s*=\s*(.*)$", printed, re.M))


def _run_locust(host: str, world: dict[str, Any], out: Path) -> None:
    env = dict(os.environ)
    env.update(
        LOAD_PATIENT_ID=str(world["patient"].pk),
        LOAD_TRIAL_ID=str(world["big"].pk),
        LOAD_EXPORT_TRIAL_ID=str(world["big"].pk),
        LOAD_SESSIONS=",".join(world["sessions"]),
    )
    subprocess.run(
        [str(Path(sys.executable).with_name("locust")), "-f", str(ROOT / "bench" / "locust_users.py"),
         "--headless", "--users", str(USERS), "--spawn-rate", "10", "--run-time", f"{SECONDS}s",
         "--host", host, "--csv", str(out), "--only-summary", "--loglevel", "WARNING", "--stop-timeout", "10"],
        env=env, check=False, timeout=SECONDS + 300,
    )  # fmt: skip


def main() -> None:
    """Build the data, start gunicorn, run locust, print the figures."""
    setup_django()
    from django.conf import settings
    from django.db import connection

    db = settings.DATABASES["default"]
    if connection.vendor != "postgresql":
        print("skipped: the load benchmark runs against PostgreSQL (set DATABASE_URL)")
        return
    name = f"test_bench_load_{os.getpid()}"
    db.setdefault("TEST", {})["NAME"] = name
    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    media = tempfile.mkdtemp(prefix="bench-load-")
    host = db["HOST"] or "127.0.0.1"
    auth = f"{db['USER']}:{db['PASSWORD']}@" if db.get("PASSWORD") else f"{db['USER']}@"
    server = f"postgresql://{auth}{host}:{db['PORT'] or 5432}"
    gunicorn = None
    try:
        world = _build()
        connection.close()  # the data is committed; what is counted are the web processes' connections
        port = _free_port()
        env = _gunicorn_env(f"{server.replace('postgresql://', 'postgres://')}/{name}", port, media)
        config = _gunicorn_config(env)
        workers, threads = int(config["workers"]), int(config["threads"])
        print(
            f"{os.cpu_count()} CPU cores; gunicorn {config['worker_class']} {workers} workers x {threads} threads; "
            f"{USERS} users for {SECONDS} s; export trial {EXPORT_PATIENTS} patients x 3 visits"
        )
        with open(os.path.join(media, "gunicorn.log"), "wb") as log:
            gunicorn = subprocess.Popen(
                [str(Path(sys.executable).with_name("gunicorn")), "-c", "docker/gunicorn.conf.py", "config.wsgi"],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
            _wait_listening(port, gunicorn)
            sampler = ConnectionSampler(f"{server}/postgres", name)
            sampler.start()
            _run_locust(f"http://127.0.0.1:{port}", world, Path(media) / "locust")
            sampler.stop.set()
            sampler.join()
            memory = _memory(gunicorn.pid)
        _report(Path(media) / "locust_stats.csv", sampler.peak, workers * threads, memory)
    finally:
        if gunicorn is not None and gunicorn.poll() is None:
            gunicorn.terminate()
            gunicorn.wait(timeout=60)
        connection.creation.destroy_test_db(old_name, verbosity=0)
        shutil.rmtree(media, ignore_errors=True)


if __name__ == "__main__":
    main()
