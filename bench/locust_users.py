"""Locust users of ``bench/bench_load.py`` (run by it in a process of its own: locust patches the standard
library with gevent, which the Django process must not see).

Each simulated user is one data manager of the benchmark trial, already signed in, who in turn opens the patient timeline page, lists the trial's visits through the API and, less often,
downloads the trial's visits export. The bench passes the ids through environment variables.
"""

from __future__ import annotations

import itertools
import os
import threading

from locust import HttpUser, between, task

PATIENT = os.environ["LOAD_PATIENT_ID"]
TRIAL = os.environ["LOAD_TRIAL_ID"]
EXPORT_TRIAL = os.environ["LOAD_EXPORT_TRIAL_ID"]

SESSIONS = os.environ["LOAD_SESSIONS"].split(",")
_numbers = itertools.count()
_lock = threading.Lock()


class DataManager(HttpUser):
    wait_time = between(0.5, 1.5)

    def on_start(self) -> None:
        """Take one of the signed-in sessions the bench prepared (what is measured is the pages, not the
        password hashing of 50 simultaneous sign-ins, which the login form's own figure shows)."""
        with _lock:
            session = SESSIONS[next(_numbers) % len(SESSIONS)]
        self.client.cookies.set("sessionid", session)

    def _get(self, url: str, name: str) -> None:
        """GET that counts anything but a 200 (a redirect to the login page included) as a failure."""
        with self.client.get(url, name=name, allow_redirects=False, catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"{response.status_code}")

    @task(4)
    def timeline(self) -> None:
        self._get(f"/patients/{PATIENT}/", "patient timeline page")

    @task(4)
    def visits_api(self) -> None:
        self._get(f"/api/v1/timepoints/?trial={TRIAL}&page_size=50", "visits list API")

    @task(1)
    def export(self) -> None:
        self._get(f"/api/v1/trials/{EXPORT_TRIAL}/exports/visits.csv", "trial export (visits)")
