"""``manage.py write_demo_study OUT``: a synthetic MR study on disk, to send to the DICOM listener.

The study is one post-contrast 3D T1 series of a demo patient (default DEMO-001 of ``load_demo``) carrying
the Clinical Trial attributes of the demo trial (Protocol ID DEMO-BM, the Subject ID), dated
``--weeks`` after the patient's last visit: the listener routes it to the patient and, since no visit is
scheduled then, proposes a new unscheduled visit in the PACS inbox. Send it with dcmtk::

    storescu -aet DEMO-MODALITY -aec METTRACK +sd +r 127.0.0.1 11112 var/demo-study
"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from segmentation.synthetic_mr import write_dicom_series
from trials.management.commands.demo_pipeline import render_visits
from trials.management.commands.load_demo import DEMO_TRIAL_CODE
from trials.models import Patient


class Command(BaseCommand):
    help = "Write a synthetic DICOM study of a demo patient (to send to the DICOM listener)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("out", type=Path, help="folder to write (replaced)")
        parser.add_argument("--subject", default="DEMO-001", help="demo subject id (default DEMO-001)")
        parser.add_argument("--weeks", type=int, default=8, help="weeks after the patient's last visit")
        parser.add_argument("--seed", type=int, default=7)

    def handle(self, *args: Any, out: Path, subject: str, weeks: int, seed: int, **options: Any) -> None:
        patient = Patient.objects.filter(trial__code=DEMO_TRIAL_CODE, subject_id=subject).first()
        if patient is None:
            raise CommandError(f"No demo patient {subject!r}: run manage.py load_demo first.")
        last = patient.timepoints.order_by("-scan_date").first()
        study_date = (last.scan_date if last else dt.date.today()) + dt.timedelta(weeks=weeks)
        phantom = render_visits(seed, [[14.0, 9.0]])[0]
        shutil.rmtree(out, ignore_errors=True)
        files = write_dicom_series(
            phantom.image,
            out / "series-1",
            patient_id=f"SITE-{subject}",
            series_description="T1 MPRAGE post-contrast",
            StudyDate=study_date.strftime("%Y%m%d"),
            ClinicalTrialSponsorName="MetTrack demo",
            ClinicalTrialProtocolID=DEMO_TRIAL_CODE,
            ClinicalTrialSubjectID=subject,
        )
        self.stdout.write(f"{len(files)} instances of {subject} dated {study_date} in {out}")
