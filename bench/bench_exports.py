"""Export speed: a trial of 1,000 patients x 8 visits x 6 lesions, every export kind streamed to /dev/null.

Targets (issue 8): under 10 s per file, constant memory (the export streams: tracemalloc peak does not
grow with the trial: 1,000 patients peak within 1.25x of 500 patients) and a constant number of SQL queries
(the same for both trials). Both trials span several cursor chunks (``trials.exports.queries.CHUNK_SIZE``
rows); the peak is about two chunks of rows, held while one chunk replaces the previous one.

Needs a database: ``DATABASE_URL=postgres://... python -m bench exports``. The trial is written with
``bulk_create`` into a throw-away test database (created and destroyed here), so the benchmark never touches
real data.
"""

from __future__ import annotations

import datetime as dt
import time
import tracemalloc
from typing import Any

from bench import setup_django

PATIENTS = 1000
VISITS = 8
LESIONS = 6
SMALL_PATIENTS = 500
TARGET_S = 10.0


def build_bulk_trial(code: str, patients: int, visits: int = VISITS, lesions: int = LESIONS) -> Any:
    """Create a trial with ``patients`` x ``visits`` visits x ``lesions`` lesions using bulk inserts.

    Lesions L1-L3 are targets, L4 and L5 non-targets (L5 absent from FU3 on), L6 (when ``lesions`` >= 6) a
    new lesion first seen at the third visit. Every visit has a series, a successful segmentation run, an
    AI RANO-BM assessment (every third one signed by a reader) and a volumetric assessment.

    Returns:
        The Trial.
    """
    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from trials.actions import trials as trial_actions
    from trials.models import (
        Assessment,
        ImagingSeries,
        Lesion,
        LesionObservation,
        ModelVersion,
        Patient,
        SegmentationRun,
        Timepoint,
    )

    trial = trial_actions.create_trial(code=code, title=f"Bulk {code}", actor=None)
    site = trial_actions.create_site(trial, code="S01", name="Bulk site", actor=None)
    reader, _ = get_user_model().objects.get_or_create(username=f"reader-{code}")
    model, _ = ModelVersion.objects.get_or_create(
        weights_sha256=f"{code:0<64}"[:64],
        defaults={"name": "unetr-bench", "version": code, "architecture": "UNETR"},
    )
    start = dt.date(2024, 1, 1)
    pts = Patient.objects.bulk_create(
        [
            Patient(
                trial=trial,
                site=site,
                subject_id=f"{i:05d}",
                enrolment_date=start,
                treatment_start_date=start + dt.timedelta(days=2),
            )
            for i in range(patients)
        ],
        batch_size=2000,
    )
    tps = Timepoint.objects.bulk_create(
        [
            Timepoint(
                patient=p,
                visit_label="BASELINE" if v == 0 else f"FU{v}",
                scan_date=start + dt.timedelta(days=56 * v),
                is_baseline=v == 0,
            )
            for p in pts
            for v in range(visits)
        ],
        batch_size=2000,
    )
    series = ImagingSeries.objects.bulk_create(
        [ImagingSeries(timepoint=tp, series_instance_uid=f"2.25.{code}.{tp.pk}") for tp in tps],
        batch_size=2000,
    )
    runs = SegmentationRun.objects.bulk_create(
        [
            SegmentationRun(
                series=s,
                model_version=model,
                model_weights_sha256=model.weights_sha256,
                status="succeeded",
                finished_at=timezone.now(),
            )
            for s in series
        ],
        batch_size=2000,
    )
    run_of = {s.timepoint_id: r for s, r in zip(series, runs, strict=True)}
    tps_of: dict[int, list[Any]] = {}
    for tp in tps:
        tps_of.setdefault(tp.patient_id, []).append(tp)
    les = Lesion.objects.bulk_create(
        [
            Lesion(
                patient=p,
                label=f"L{n}",
                role="target" if n <= 3 else "non_target",
                first_seen_timepoint=tps_of[p.pk][2 if n == 6 else 0],
            )
            for p in pts
            for n in range(1, lesions + 1)
        ],
        batch_size=2000,
    )
    observations = []
    for lesion in les:
        n = int(lesion.label[1:])
        for v, tp in enumerate(tps_of[lesion.patient_id]):
            if n == 6 and v < 2:
                continue
            present = not (n == 5 and v >= 3)
            ld = max(0.0, 20.0 - n - 0.8 * v) if present else None
            observations.append(
                LesionObservation(
                    lesion=lesion,
                    timepoint=tp,
                    segmentation_run=run_of[tp.pk],
                    present=present,
                    longest_diameter_mm=ld,
                    perpendicular_diameter_mm=ld and ld * 0.7,
                    volume_mm3=ld and ld**3 * 0.5,
                    slice_count=4,
                    measurable=bool(ld and ld >= 10),
                )
            )
    LesionObservation.objects.bulk_create(observations, batch_size=5000)
    assessments = []
    for i, tp in enumerate(tps):
        v = int(tp.visit_label[2:]) if tp.visit_label != "BASELINE" else 0
        sld = sum(max(0.0, 20.0 - n - 0.8 * v) for n in (1, 2, 3))
        signed = i % 3 == 0
        common = {"timepoint": tp, "engine_version": "bench", "settings": trial.criteria_settings()}
        assessments.append(
            Assessment(
                criteria="rano_bm",
                source="ai",
                sum_ld_mm=sld,
                baseline_sum_ld_mm=54.0,
                nadir_sum_ld_mm=54.0,
                pct_change_from_baseline=(sld - 54.0) / 54.0 * 100,
                overall_response="" if v == 0 else ("PR" if sld <= 37.8 else "SD"),
                target_response="" if v == 0 else "SD",
                non_target_response="NON-CR/NON-PD",
                new_lesion_status="equivocal" if v == 2 else "none",
                best_overall_response="SD",
                status="confirmed" if signed else "draft",
                signed_by=reader if signed else None,
                signed_at=timezone.now() if signed else None,
                **common,
            )
        )
        assessments.append(
            Assessment(
                criteria="volumetric", source="ai", sum_volume_mm3=sld**3, overall_response="SD", **common
            )
        )
    Assessment.objects.bulk_create(assessments, batch_size=5000)
    return trial


def _run(kind: str, trial: Any, *, measure_memory: bool) -> tuple[float, int, int, int]:
    """Stream one export; return (seconds, bytes, queries, tracemalloc peak bytes)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from trials.exports import open_export

    size = 0
    if measure_memory:
        tracemalloc.start()
    started = time.perf_counter()
    with CaptureQueriesContext(connection) as queries:
        for chunk in open_export(kind, trial):
            size += len(chunk)
    elapsed = time.perf_counter() - started
    peak = 0
    if measure_memory:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return elapsed, size, len(queries), peak


def main() -> None:
    """Build the trials in a throw-away test database and print the figures per export kind."""
    setup_django()
    from django.db import connection
    from django.test.utils import setup_test_environment

    from trials.exports import EXPORT_KINDS

    setup_test_environment()
    old_name = connection.settings_dict["NAME"]
    connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        started = time.perf_counter()
        big = build_bulk_trial("BENCH-L", PATIENTS)
        small = build_bulk_trial("BENCH-S", SMALL_PATIENTS)
        print(
            f"built {PATIENTS} + {SMALL_PATIENTS} patients x {VISITS} visits x {LESIONS} lesions "
            f"in {time.perf_counter() - started:.1f} s ({connection.vendor})"
        )
        print(
            f"{'kind':9} {'time s':>7} {'MB':>6} {'queries':>8} {'q small':>8} {'peak MB':>8} "
            f"{'peak small':>10} {'peak ratio':>10}  verdict"
        )
        for kind in EXPORT_KINDS:
            seconds, size, queries, _ = _run(kind, big, measure_memory=False)
            _, _, queries_small, _ = _run(kind, small, measure_memory=False)
            _, _, _, peak = _run(kind, big, measure_memory=True)
            _, _, _, peak_small = _run(kind, small, measure_memory=True)
            ok = seconds < TARGET_S and queries == queries_small and peak < 1.25 * peak_small
            print(
                f"{kind:9} {seconds:7.2f} {size / 1e6:6.1f} {queries:8d} {queries_small:8d} "
                f"{peak / 1e6:8.2f} {peak_small / 1e6:10.2f} {peak / max(peak_small, 1):10.2f}  "
                f"{'ok' if ok else 'MISSED'}"
            )
        print(
            f"target: < {TARGET_S:.0f} s per file; queries equal for {PATIENTS} and {SMALL_PATIENTS} patients; "
            "peak memory for 2x the patients under 1.25x the smaller trial's peak"
        )
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)


if __name__ == "__main__":
    main()
