"""Pipeline throughput: a 5-visit synthetic patient from upload to final assessment, with the demo model.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/mettrack python -m bench pipeline

Each visit is a real zipped DICOM series (2 mm phantom, 120 x 120 x 90) uploaded through the service the
API uses, then segmented with the configured model (``PIPELINE_MODEL_DIR``, default the demo model),
matched and assessed, in-process (embedded mode: the stages the Celery tasks call, without a broker).
Printed per visit and per stage. The segmentation itself is what a reader of the series must do anyway,
as ``bm-segment`` does: read and validate the upload and decode its pixels (``read``), then the stages
of ``segment_image``. The service overhead is what the service adds around it: queueing (the broker
publish, measured separately when Redis answers), storage (the de-identified copy, the worker's NIfTI
volume, re-reading it in the worker, the mask files) and the database (series, job, run, progress,
lesions, observations, assessments). Target: overhead under 10 % of the segmentation. The ratio with the
upload's reading counted as overhead too is printed beside it.

Django runs with DEBUG off, as deployed (unless the environment sets DEBUG). Runs in a throw-away test
database (``test_bench_pipeline_<pid>``) and a temporary MEDIA_ROOT.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import setup_django

N_VISITS = 5
SEED = 4242
TARGET_OVERHEAD = 0.10
#: Lesion diameters (mm) per visit: response, then progression with a new lesion.
COURSE_MM = [
    [22.0, 16.0, 12.0, 0.0],
    [15.0, 11.0, 8.0, 0.0],
    [12.0, 9.0, 7.0, 0.0],
    [13.0, 9.0, 7.0, 8.0],
    [19.0, 10.0, 8.0, 11.0],
]


def _broker_publish_ms(samples: int = 20) -> float | None:
    """Median time to publish the two messages of one pipeline job to Redis: its dispatch (segmentation)
    and the hand-over to the analysis (a private queue, purged afterwards)."""
    url = os.environ.get("CELERY_BROKER_URL", "")
    if not url.startswith("redis://"):
        return None
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5):
            pass
    except OSError:
        return None
    from kombu import Connection

    from config.celery import app
    from trials.pipeline.queue import ANALYSE_TASK, SEGMENT_TASK

    queue = f"bench-pipeline-{os.getpid()}"
    times = []
    with app.connection_for_write() as conn:
        for i in range(samples):
            context = {"job_id": -i, "correlation_id": "bench", "dispatch_id": f"bench-{i}"}
            dispatch = app.signature(SEGMENT_TASK, kwargs=context, immutable=True).set(queue=queue)
            hand_over = app.signature(ANALYSE_TASK, args=(-i,), kwargs=context).set(queue=queue)
            started = time.perf_counter()
            dispatch.apply_async(connection=conn)
            hand_over.apply_async(connection=conn)
            times.append(time.perf_counter() - started)
    with Connection(url) as conn:
        conn.default_channel.queue_purge(queue)
        conn.default_channel.queue_delete(queue)
    return statistics.median(times) * 1000


def _ensure_model(work: Path) -> None:
    """Use the demo model, or (before it is exported) the demo architecture with untrained weights."""
    from django.conf import settings

    from segmentation.model import build_network, save_model_dir
    from segmentation.modeldir import DEMO_MODEL_DIR
    from segmentation.train import demo_config

    if not getattr(settings, "PIPELINE_MODEL_DIR", "") and not (DEMO_MODEL_DIR / "config.json").exists():
        # No trained demo weights yet: the demo architecture with untrained weights costs the same time.
        config = demo_config()
        settings.PIPELINE_MODEL_DIR = str(save_model_dir(build_network(config), config, work / "demo-arch"))
        print("demo model not exported yet: timing the demo architecture with untrained weights")


def _run_visits(
    visits: list[Any], zips: list[Path]
) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """Upload, segment and analyse each visit in turn, printing a row each; the summed seconds."""
    from trials.actions import imaging
    from trials.choices import Criteria
    from trials.models import Assessment, SegmentationRun
    from trials.pipeline import analysis
    from trials.pipeline import segmentation as segmentation_stage

    header = (
        f"{'visit':9} {'upload':>7} {'(read)':>7} {'segment':>8} {'network':>8} {'seg svc':>8} "
        f"{'analysis':>9} {'total':>7}  response"
    )
    print(header)
    totals = dict.fromkeys(("upload", "read", "seg_work", "seg_service", "analysis", "total"), 0.0)
    upload_parts: dict[str, float] = {}
    analysis_parts: dict[str, float] = {}
    for visit, path in zip(visits, zips, strict=True):
        t0 = time.perf_counter()
        upload = imaging.upload_series(visit, path, enqueue=False, actor=None)
        t1 = time.perf_counter()
        run_id = segmentation_stage.run_segmentation_stage(upload.job.pk)
        assert run_id is not None  # a new job is never finished before its stages run
        t2 = time.perf_counter()
        result = analysis.run_analysis_stage(upload.job.pk, run_id) or {}
        t3 = time.perf_counter()
        run = SegmentationRun.objects.get(pk=run_id)
        # The segmentation's own work: every stage segment_image timed (preprocess, network, postprocess).
        work_s = sum(v for k, v in run.timings_s.items() if not k.endswith("_s"))
        network_s = run.timings_s.get("network", 0.0)
        for key, value in upload.timings_s.items():
            upload_parts[key] = upload_parts.get(key, 0.0) + value
        for key, value in result.get("timings_s", {}).items():
            analysis_parts[key] = analysis_parts.get(key, 0.0) + value
        row = Assessment.objects.get(timepoint=visit, criteria=Criteria.RANO_BM, is_current=True)
        totals["upload"] += t1 - t0
        totals["read"] += upload.timings_s["read"]
        totals["seg_work"] += work_s
        totals["seg_service"] += (t2 - t1) - work_s
        totals["analysis"] += t3 - t2
        totals["total"] += t3 - t0
        print(
            f"{visit.visit_label:9} {t1 - t0:7.2f} {upload.timings_s['read']:7.2f} {t2 - t1:8.2f} "
            f"{network_s:8.2f} {(t2 - t1) - work_s:8.2f} {t3 - t2:9.2f} {t3 - t0:7.2f}  "
            f"{row.overall_response or 'baseline'} ({len(result.get('lesions', {}))} lesions)"
        )
    return totals, upload_parts, analysis_parts


def _report(
    totals: dict[str, float], upload_parts: dict[str, float], analysis_parts: dict[str, float]
) -> None:
    """Print the totals and the service overhead as a share of the segmentation."""
    publish_ms = _broker_publish_ms()
    queue_s = (publish_ms or 0.0) / 1000 * N_VISITS
    # Clinical work and output, not overhead: measurement, registration, matching, and writing the
    # lesions as DICOM SEG + RTSTRUCT (part of the end-to-end definition).
    compute = sum(
        analysis_parts.get(k, 0.0) for k in ("measure_s", "register_s", "match_s", "dicom_export_s")
    )
    # Database writes of the analysis: lesions and observations (store_s), assessments and roles (rest).
    analysis_db = totals["analysis"] - compute
    storage = totals["upload"] - totals["read"]  # de-identified copy, NIfTI volume, series/job rows
    overhead = storage + totals["seg_service"] + queue_s + analysis_db
    seg = totals["read"] + totals["seg_work"]
    print(
        f"total {totals['total']:.1f} s for {N_VISITS} visits ({totals['total'] / N_VISITS:.1f} s per visit): "
        f"upload {totals['upload']:.2f} s ({', '.join(f'{k} {v:.2f}' for k, v in upload_parts.items())}), "
        f"segmentation work {totals['seg_work']:.1f} s, "
        f"segmentation bookkeeping {totals['seg_service']:.2f} s, analysis {totals['analysis']:.1f} s "
        f"({', '.join(f'{k} {v:.2f}' for k, v in analysis_parts.items())}, "
        f"assessment {analysis_db - analysis_parts.get('store_s', 0.0):.2f})"
    )
    print(
        "broker publish per job: "
        + (f"{publish_ms:.1f} ms (Redis)" if publish_ms is not None else "not measured (no Redis broker)")
    )
    print(
        f"segmentation itself (reading the upload {totals['read']:.2f} s + segment_image {totals['seg_work']:.2f} s): "
        f"{seg:.2f} s"
    )
    ratio = overhead / seg
    print(
        f"service overhead (storage {storage:.2f} s, job/run bookkeeping and worker file I/O "
        f"{totals['seg_service']:.2f} s, broker {queue_s:.3f} s, database writes of the analysis "
        f"{analysis_db:.2f} s) {overhead:.2f} s = {ratio:.1%} of the segmentation; "
        f"target < {TARGET_OVERHEAD:.0%}: {'ok' if ratio < TARGET_OVERHEAD else 'MISSED'}"
    )
    print(
        f"with the upload's reading counted as overhead too: "
        f"{(overhead + totals['read']) / totals['seg_work']:.1%} of segment_image"
    )
    print(
        f"measurement, registration, matching, DICOM SEG/RTSTRUCT export (clinical work, not overhead): "
        f"{compute:.1f} s = {compute / seg:.1%}"
    )


def main() -> None:
    """Upload, segment, match and assess five visits; print per-stage seconds and the overhead ratio."""
    setup_django()
    from django.conf import settings
    from django.db import connection

    from config.warmup import warm_up_process
    from tests.factories import make_patient, make_timepoint, make_trial
    from trials.management.commands.demo_pipeline import render_visits, write_series_zip
    from trials.pipeline import registry

    # As the web process (config.wsgi) and each worker (worker_init) do at start.
    print(f"process warm-up (as web and worker processes start): {warm_up_process():.1f} s")
    db = settings.DATABASES["default"]
    db.setdefault("TEST", {})["NAME"] = f"test_bench_pipeline_{os.getpid()}"
    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    work = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    settings.MEDIA_ROOT = work / "media"
    try:
        _ensure_model(work)
        model, version = registry.load_pipeline_model()
        print(
            f"model: {version} ({model.n_parameters / 1e6:.1f} M parameters), database: {connection.vendor}, "
            f"DEBUG {'on' if settings.DEBUG else 'off'}"
        )
        started = time.perf_counter()
        phantoms = render_visits(SEED, COURSE_MM[:N_VISITS])
        zips = [write_series_zip(p, work / f"v{i}.zip", patient_id="BENCH") for i, p in enumerate(phantoms)]
        print(
            f"rendered {len(zips)} visits ({phantoms[0].image.GetSize()}) in {time.perf_counter() - started:.1f} s"
        )
        trial = make_trial("BENCH-PIPE")
        patient = make_patient(trial, subject_id="BENCH-001")
        visits = [
            make_timepoint(patient, visit_label="BASELINE" if i == 0 else f"FU{i}",
                           scan_date=dt.date(2025, 1, 6) + dt.timedelta(weeks=8 * i), is_baseline=i == 0)
            for i in range(N_VISITS)
        ]  # fmt: skip
        _report(*_run_visits(visits, zips))
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
