"""Dashboard page render times (issue 7 targets: under 300 ms).

    python -m bench dashboard        (DATABASE_URL selects the database; PostgreSQL in CI)

Builds a throw-away test database, then times, through Django's test client (full middleware, session,
template rendering and plotly figure serialisation; no network):
    * the patient timeline of one patient with 10 visits x 10 lesions (observations and both criteria's
      assessments at every visit);
    * the trial home and the trial plots (waterfall, spider, swimmer) of a trial with 500 patients,
      each with a baseline and two follow-up visits.
Rows are inserted with ``bulk_create`` (the pages only read; audit events are not what is measured).
The viewer is timed on a 256 x 256 x 160 volume with one lesion: a slice PNG and its overlay.
Each page is requested once to warm caches, then timed over several runs; the median is reported.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import statistics
import tempfile
import time
from typing import Any

from bench import setup_django

TARGET_MS = 300.0
RUNS = 7


def _time_get(client: Any, url: str, runs: int = RUNS) -> tuple[float, int]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    response = client.get(url)
    assert response.status_code == 200, (url, response.status_code)
    times = []
    queries = 0
    for _ in range(runs):
        with CaptureQueriesContext(connection) as ctx:
            started = time.perf_counter()
            response = client.get(url)
            times.append((time.perf_counter() - started) * 1000)
        queries = len(ctx.captured_queries)
        assert response.status_code == 200
    return statistics.median(times), queries


def _build(trial_patients: int) -> dict[str, Any]:
    from django.contrib.auth import get_user_model

    from trials.models import (
        Assessment,
        Lesion,
        LesionObservation,
        Patient,
        Site,
        Timepoint,
        Trial,
        TrialMembership,
    )

    user = get_user_model().objects.create_user("bench", password="bench-password-123")
    trial = Trial.objects.create(code="BENCH", title="Benchmark trial")
    site = Site.objects.create(trial=trial, code="S1", name="Site 1")
    TrialMembership.objects.create(user=user, trial=trial, role="radiologist")
    start = dt.date(2024, 1, 1)

    # One patient, 10 visits x 10 lesions.
    patient = Patient.objects.create(trial=trial, site=site, subject_id="P-TIMELINE")
    visits = Timepoint.objects.bulk_create(
        Timepoint(
            patient=patient,
            visit_label="BASELINE" if n == 0 else f"FU{n}",
            scan_date=start + dt.timedelta(days=56 * n),
            is_baseline=n == 0,
        )
        for n in range(10)
    )
    lesions = Lesion.objects.bulk_create(
        Lesion(
            patient=patient,
            label=f"L{n + 1}",
            role="target" if n < 5 else "non_target",
            first_seen_timepoint=visits[0],
        )
        for n in range(10)
    )
    LesionObservation.objects.bulk_create(
        LesionObservation(
            lesion=lesion,
            timepoint=visit,
            longest_diameter_mm=20.0 - v + i,
            perpendicular_diameter_mm=10.0,
            volume_mm3=1000.0 - 30 * v,
            measurable=True,
        )
        for v, visit in enumerate(visits)
        for i, lesion in enumerate(lesions)
    )
    Assessment.objects.bulk_create(
        Assessment(
            timepoint=visit,
            criteria=criteria,
            sum_ld_mm=100.0 - 3 * v,
            baseline_sum_ld_mm=100.0,
            sum_volume_mm3=5000.0 - 100 * v,
            pct_change_from_baseline=-3.0 * v,
            overall_response="" if v == 0 else ("PR" if v > 9 else "SD"),
            best_overall_response="" if v == 0 else "SD",
        )
        for v, visit in enumerate(visits)
        for criteria in ("rano_bm", "volumetric")
    )

    # A trial of 500 patients with a baseline and two follow-ups each.
    big = Trial.objects.create(code="BENCH-500", title="500 patients")
    big_site = Site.objects.create(trial=big, code="S1", name="Site 1")
    TrialMembership.objects.create(user=user, trial=big, role="investigator")
    patients = Patient.objects.bulk_create(
        Patient(trial=big, site=big_site, subject_id=f"P-{n:04d}") for n in range(trial_patients)
    )
    tps = Timepoint.objects.bulk_create(
        Timepoint(
            patient=p,
            visit_label=label,
            scan_date=start + dt.timedelta(days=days),
            is_baseline=label == "BASELINE",
        )
        for p in patients
        for label, days in (("BASELINE", 0), ("FU1", 56), ("FU2", 112))
    )
    responses = ["CR", "PR", "SD", "PD"]
    Assessment.objects.bulk_create(
        Assessment(
            timepoint=tp,
            criteria="rano_bm",
            sum_ld_mm=50.0,
            pct_change_from_baseline=None if tp.is_baseline else -40.0 + (i % 7) * 10,
            overall_response="" if tp.is_baseline else responses[i % 4],
            best_overall_response="" if tp.is_baseline else responses[i % 4],
        )
        for i, tp in enumerate(tps)
    )
    return {
        "user": user,
        "patient": patient,
        "trial": trial,
        "big": big,
        "visits": visits,
        "lesions": lesions,
    }


def _imaged_series(visit: Any, lesion: Any, media_root: str) -> Any:
    """A 256 x 256 x 160 volume at 1 mm with a 15 mm-radius lesion and its label mask, for the viewer."""
    import numpy as np
    import SimpleITK as sitk

    from trials.models import ImagingSeries, LesionObservation, ModelVersion, SegmentationRun

    shape = (160, 256, 256)
    rng = np.random.default_rng(0)
    volume = (100 + rng.normal(0, 5, shape)).astype(np.float32)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    sphere = (x - 128) ** 2 + (y - 100) ** 2 + (z - 80) ** 2 <= 15**2
    volume[sphere] = 300
    os.makedirs(os.path.join(media_root, "bench"), exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(volume), os.path.join(media_root, "bench/volume.nii"))
    sitk.WriteImage(
        sitk.GetImageFromArray(sphere.astype(np.uint16)), os.path.join(media_root, "bench/labels.nii.gz")
    )
    series = ImagingSeries.objects.create(
        timepoint=visit, series_instance_uid="1.2.3.4.5.6.7.8.9", volume_file="bench/volume.nii"
    )
    model = ModelVersion.objects.create(
        name="bench", version="1", architecture="UNETR", weights_sha256="0" * 64
    )
    run = SegmentationRun.objects.create(
        series=series, model_version=model, model_weights_sha256="0" * 64, mask_file="bench/labels.nii.gz"
    )
    LesionObservation.objects.filter(lesion=lesion, timepoint=visit).update(
        segmentation_run=run,
        component_label=1,
        caliper_points_mm=[[113.0, 100.0, 80.0], [143.0, 100.0, 80.0]],
    )
    return series


def main() -> None:
    """Build the data, time the pages, print medians and ratios to the 300 ms target."""
    setup_django()
    from django.conf import settings
    from django.db import connection
    from django.test import Client

    db = settings.DATABASES["default"]
    db.setdefault("TEST", {})["NAME"] = f"test_bench_dashboard_{os.getpid()}"
    # No setup_test_environment(): its instrumented template rendering would inflate the timings.
    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    media = tempfile.mkdtemp(prefix="bench-dashboard-")
    try:
        started = time.perf_counter()
        world = _build(500)
        print(f"database: {connection.vendor}; data built in {time.perf_counter() - started:.1f} s")
        client = Client()
        client.force_login(world["user"])
        from django.test import override_settings

        series = _imaged_series(world["visits"][-1], world["lesions"][0], media)
        pages = [
            ("patient timeline, 10 visits x 10 lesions", f"/patients/{world['patient'].pk}/"),
            ("trial home, 500 patients", f"/trials/{world['big'].pk}/"),
            ("trial plots, 500 patients", f"/trials/{world['big'].pk}/plots/"),
            ("viewer: the series as NIfTI (Niivue)", f"/series/{series.pk}/volume.nii"),
            ("viewer: its lesion label map as NIfTI", f"/series/{series.pk}/lesions.nii.gz"),
            ("viewer: its calipers as NIfTI", f"/series/{series.pk}/calipers.nii.gz"),
            ("visit page with viewer (10 lesions)", f"/visits/{world['visits'][-1].pk}/"),
        ]
        print(f"{'page':44s} {'median ms':>10s} {'queries':>8s} {'target ratio':>13s}")
        with override_settings(MEDIA_ROOT=media):
            for name, url in pages:
                median_ms, queries = _time_get(client, url)
                print(f"{name:44s} {median_ms:10.1f} {queries:8d} {median_ms / TARGET_MS:12.2f}x")
        print(
            "(the viewer rows are after the first request, which reads the NIfTI into the per-process cache)"
        )
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)
        shutil.rmtree(media, ignore_errors=True)


if __name__ == "__main__":
    main()
