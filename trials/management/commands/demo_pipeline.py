"""``manage.py demo_pipeline``: synthetic DICOM series for the demo patients' visits, through the whole pipeline.

For every visit of the demo trial (``manage.py load_demo``) that has no series yet, a post-gadolinium T1
phantom is rendered (:mod:`segmentation.phantoms`: the MNI152 brain with metastases whose diameters follow
a per-patient course: response, progression, stable disease), written as a DICOM series, zipped, and sent
through the same upload service as the API (:func:`trials.pipeline.ingest_upload`). Each job then runs
in-process (segmentation with the configured model, lesion matching, RANO-BM assessment), so no broker is
needed. Idempotent: visits that already have a series are skipped.

The helpers :func:`render_visits` and :func:`write_series_zip` are also used by the pipeline's tests and
benchmark.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import zipfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings
from django.contrib.contenttypes.models import ContentType
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from segmentation.phantoms import (
    GEOMETRIES,
    AcquisitionGeometry,
    Phantom,
    random_pose,
    render_phantom,
    sample_lesion_specs,
)
from segmentation.synthetic_mr import write_dicom_series
from trials.actions import governance
from trials.actions.imaging import upload_series
from trials.actions.jobs import retry_job, run_job
from trials.actions.models import register_pipeline_model
from trials.choices import Criteria, JobKind, JobState, SeriesSource
from trials.models import Assessment, ImagingSeries, ModelVersion, Patient, ProcessingJob, Trial

#: A 2 mm axial grid that holds the whole head: fast enough for the demo on a laptop CPU.
DEMO_GEOMETRY: AcquisitionGeometry = GEOMETRIES["axial_2mm"]

#: Lesion diameters (mm) per visit for each demo course; one row per visit, one column per lesion.
#: 0 = absent. Rows beyond a patient's visit count are ignored; missing rows repeat the last one.
COURSES: dict[str, list[list[float]]] = {
    # Partial response, confirmed at the next visit, then one lesion grows back: progression.
    "response_then_progression": [[22.0, 16.0, 0.0], [13.0, 9.0, 0.0], [11.0, 8.0, 0.0], [19.0, 8.0, 0.0]],
    # Stable disease, then a new lesion appears.
    "stable_then_new_lesion": [[18.0, 14.0, 0.0], [17.0, 14.0, 0.0], [18.0, 13.0, 9.0]],
    # Complete disappearance of both lesions, held at the next visits.
    "complete_response": [[15.0, 12.0, 0.0], [8.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
}
DEMO_COURSES: dict[str, str] = {
    "DEMO-001": "response_then_progression",
    "DEMO-002": "stable_then_new_lesion",
    "DEMO-003": "complete_response",
}


def render_visits(
    seed: int,
    diameters_mm: Sequence[Sequence[float]],
    *,
    geometry: AcquisitionGeometry = DEMO_GEOMETRY,
    max_rotation_deg: float = 2.0,
    max_shift_mm: float = 2.0,
    skull: bool = True,
) -> list[Phantom]:
    """Render one synthetic patient's visits with lesions of the given diameters.

    Args:
        seed: Seed of the lesion placement, shapes, noise and head poses.
        diameters_mm: One row per visit, one nominal diameter (mm) per lesion; 0 = absent at that visit.
            Lesions keep their place and shape across visits (lesion id = column + 1).
        geometry: Acquisition grid.
        max_rotation_deg: Head repositioning between visits (rotation, degrees).
        max_shift_mm: Head repositioning between visits (shift, mm).
        skull: Render skull and scalp.

    Returns:
        One phantom per visit (image, ground-truth mask and instance labels on the acquisition grid).
    """
    rows = [list(map(float, row)) for row in diameters_mm]
    if not rows or any(len(row) != len(rows[0]) for row in rows):
        raise ValueError("diameters_mm needs one row per visit, all with the same number of lesions")
    rng = np.random.default_rng(seed)
    sizes = [max(row[i] for row in rows) for i in range(len(rows[0]))]
    specs = sample_lesion_specs(rng, len(sizes), (10.0, 20.0))
    # Solid lesions, so the ground-truth mask is the whole lesion (no necrotic core to argue about).
    specs = [replace(spec, kind="solid", diameter_mm=size) for spec, size in zip(specs, sizes, strict=True)]
    visits = []
    for row in rows:
        visit_specs = [replace(spec, diameter_mm=d) for spec, d in zip(specs, row, strict=True)]
        visits.append(
            render_phantom(
                visit_specs,
                seed=int(rng.integers(2**31 - 1)),
                geometry=geometry,
                pose=random_pose(rng, max_rotation_deg, max_shift_mm),
                skull=skull,
            )
        )
    return visits


def write_series_zip(
    phantom: Phantom, zip_path: Path, *, patient_id: str, description: str = "T1 post-contrast"
) -> Path:
    """Write a phantom's image as a DICOM MR series and zip it (what a site uploads)."""
    with tempfile.TemporaryDirectory(prefix="mettrack-demo-series-") as tmp:
        files = write_dicom_series(
            phantom.image, Path(tmp), patient_id=patient_id, series_description=description
        )
        zip_path.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for path in files:
                archive.write(path, arcname=path.name)
    return zip_path


class Command(BaseCommand):
    help = "Render synthetic DICOM series for the demo patients' visits and run the whole pipeline on them."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--trial", default="DEMO-BM", help="trial code (default DEMO-BM, from load_demo)")
        parser.add_argument("--seed", type=int, default=2026, help="seed of the synthetic patients")
        parser.add_argument(
            "--require-model", action="store_true", help="fail (exit 1) when the model cannot be loaded"
        )

    def handle(self, *args: Any, trial: str, seed: int, **options: Any) -> None:
        # Jobs run here, in this process, before the command returns (no broker, no background thread).
        settings.PIPELINE_EMBEDDED_SYNC = True
        if not Trial.objects.filter(code=trial).exists():
            if trial != "DEMO-BM":
                raise CommandError(f"No trial {trial!r}.")
            call_command("load_demo", stdout=self.stdout)
        try:
            version = register_pipeline_model()
        except Exception as exc:  # ModelError, or a missing directory
            message = (
                f"The segmentation model cannot be loaded ({exc}). Train or export the demo model first "
                "(scripts/train-demo-model.sh) or set PIPELINE_MODEL_DIR."
            )
            if options["require_model"]:
                raise CommandError(message) from exc
            # The dashboard is still worth starting: say why there are no AI results, and go on.
            self.stderr.write(self.style.WARNING(f"{message} No series were processed."))
            return
        self._attach_demo_report(version)
        work = Path(tempfile.mkdtemp(prefix="mettrack-demo-"))
        try:
            patients = Patient.objects.filter(trial__code=trial).order_by("subject_id")
            for index, patient in enumerate(patients):
                self._patient(patient, seed + index, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _attach_demo_report(self, version: ModelVersion) -> None:
        """The committed validation report of the demo model (docs/validation-demo/, README "Validating
        a model") attached to its version, so the demo trial shows a validated model with its report.
        Only when the report is of these very weights and configuration."""
        folder = Path(settings.BASE_DIR) / "docs" / "validation-demo"
        if version.validation_report or not (folder / "report.json").is_file():
            return
        report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
        model = report.get("model", {})
        if (model.get("weights_sha256"), model.get("config_sha256")) != (
            version.weights_sha256,
            version.config_sha256,
        ):
            self.stderr.write(self.style.WARNING("docs/validation-demo is of another model: not attached."))
            return
        governance.attach_validation_report(
            version,
            report_html=(folder / "report.html").read_bytes(),
            summary={"aggregate": report.get("aggregate", {}), "data": report.get("data", {})},
            actor=None,
        )
        self.stdout.write(f"{version}: validation report of docs/validation-demo attached (validated).")

    def _patient(self, patient: Patient, seed: int, work: Path) -> None:
        timepoints = list(patient.timepoints.order_by("scan_date"))
        for job in ProcessingJob.objects.filter(
            kind=JobKind.PIPELINE,
            state=JobState.FAILED,
            content_type=ContentType.objects.get_for_model(ImagingSeries),
            object_id__in=ImagingSeries.objects.filter(timepoint__patient=patient).values("pk"),
        ):
            # An earlier run failed (e.g. no model yet): run it again on the stored series.
            retry_job(job, actor=None, reason="demo_pipeline run again")
            job.refresh_from_db()
            self.stdout.write(
                f"  job {job.pk} run again: {job.state}" + (f" ({job.error})" if job.error else "")
            )
        todo = [tp for tp in timepoints if not ImagingSeries.objects.filter(timepoint=tp).exists()]
        if not todo:
            self.stdout.write(f"{patient.subject_id}: every visit already has a series")
            return
        course = COURSES[DEMO_COURSES.get(patient.subject_id, "response_then_progression")]
        rows = [course[min(i, len(course) - 1)] for i in range(len(timepoints))]
        started = time.perf_counter()
        phantoms = render_visits(seed, rows)
        self.stdout.write(
            f"{patient.subject_id}: rendered {len(phantoms)} visits in {time.perf_counter() - started:.1f} s"
        )
        for timepoint, phantom in zip(timepoints, phantoms, strict=True):
            if timepoint not in todo:
                continue
            zip_path = write_series_zip(
                phantom,
                work / f"{patient.subject_id}_{timepoint.visit_label}.zip",
                patient_id=patient.subject_id,
            )
            started = time.perf_counter()
            upload = upload_series(
                timepoint, zip_path, source=SeriesSource.SYNTHETIC, enqueue=False, actor=None,
                reason="synthetic demo series",
            )  # fmt: skip
            run_job(upload.job)
            upload.job.refresh_from_db()
            current = Assessment.objects.filter(
                timepoint=timepoint, criteria=Criteria.RANO_BM, is_current=True
            ).first()
            response = (current.overall_response or "baseline") if current else "-"
            self.stdout.write(
                f"  {timepoint.visit_label:<9} job {upload.job.pk} {upload.job.state:<9} "
                f"{time.perf_counter() - started:6.1f} s  response {response}"
                + (f"  ({upload.job.error})" if upload.job.error else "")
            )
