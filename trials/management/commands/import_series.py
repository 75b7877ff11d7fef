"""``manage.py import_series PATIENT VISIT PATH``: the upload of the API, from the command line.

PATH is a zip of one DICOM series, a DICOM folder or a NIfTI file. The series is validated, de-identified
and stored, and its pipeline job queued, exactly as ``POST /api/v1/timepoints/{id}/series/`` does. With a
broker the job goes to the workers (``--wait`` follows it to the end); in embedded mode (no
``CELERY_BROKER_URL``) it runs here, before the command returns.

Exit status: 0 stored (and, when waited for, succeeded); 1 bad input, duplicate or failed job.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from trials.actions.imaging import upload_series
from trials.actions.jobs import dispatch_job
from trials.choices import JobState
from trials.exceptions import ServiceError
from trials.models import Patient, Timepoint


class Command(BaseCommand):
    help = "Import one MR series (DICOM zip or folder, or NIfTI) for a patient's visit and run the pipeline."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("patient", help="subject id of the patient")
        parser.add_argument("visit", help="visit label, e.g. BASELINE or FU1")
        parser.add_argument("path", type=Path, help="zip of one DICOM series, DICOM folder or NIfTI file")
        parser.add_argument("--trial", help="trial code, when the subject id exists in several trials")
        parser.add_argument("--series-uid", help="Series Instance UID to pick when the upload holds several")
        parser.add_argument(
            "--wait", action="store_true", help="with a broker: wait until the job has finished"
        )
        parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait with --wait")

    def handle(self, *args: Any, **options: Any) -> None:
        patients = Patient.objects.filter(subject_id=options["patient"]).select_related("trial")
        if options["trial"]:
            patients = patients.filter(trial__code=options["trial"])
        found = list(patients[:2])
        if not found:
            raise CommandError(f"No patient with subject id {options['patient']!r}.")
        if len(found) > 1:
            raise CommandError(f"Subject id {options['patient']!r} exists in several trials; give --trial.")
        timepoint = Timepoint.objects.filter(patient=found[0], visit_label=options["visit"]).first()
        if timepoint is None:
            raise CommandError(f"{found[0].subject_id} has no visit {options['visit']!r}.")
        try:
            result = upload_series(
                timepoint,
                options["path"],
                series_uid=options["series_uid"],
                enqueue=False,
                actor=None,
                reason="imported with manage.py import_series",
            )
        except ServiceError as exc:
            raise CommandError(exc.message) from exc
        job = result.job
        self.stdout.write(
            f"Stored series {result.series.pk} ({result.series.series_instance_uid}); job {job.pk} queued."
        )
        dispatch_job(job)  # without a broker it runs here, before the command returns
        job.refresh_from_db()
        finished = (JobState.SUCCEEDED, JobState.FAILED)
        if job.state not in finished and options["wait"]:
            deadline = time.monotonic() + options["timeout"]
            while time.monotonic() < deadline and job.state not in finished:
                time.sleep(1.0)
                job.refresh_from_db()
        elif job.state not in finished:
            return
        if job.state == JobState.FAILED:
            raise CommandError(f"Job {job.pk} failed: {job.error}")
        if job.state != JobState.SUCCEEDED:
            raise CommandError(f"Job {job.pk} is still {job.state} ({job.stage}, {job.progress_pct}%).")
        self.stdout.write(self.style.SUCCESS(f"Job {job.pk} succeeded: {job.message}"))
