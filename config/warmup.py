"""Process warm-up of the web and worker processes, run once at start (``config.wsgi``, ``config.celery``).

A web or worker process of MetTrack holds about 650,000 long-lived Python objects once torch, MONAI,
SimpleITK, pydicom and highdicom are imported and highdicom's DICOM standard tables are loaded (which
highdicom otherwise does during the first contour export). Python's garbage collector scans every one
of them at each full collection, about 0.2-0.3 s each time, and storing an upload or exporting contours
allocates enough objects (pydicom elements, JSON tables) to trigger several per job.

:func:`warm_up_process` imports what a request or a job uses, loads those tables, collects once, and
then moves every object alive at that point into the collector's permanent generation (``gc.freeze``,
Python's documented tool for this, also what pre-fork servers use to keep pages shared): they are
never scanned again, and a full collection then scans only what requests and jobs allocate since.
Nothing is loaded that touches a GPU or the database (a Celery pool forks after ``worker_init``).
"""

from __future__ import annotations

import gc
import importlib
import logging
import time

logger = logging.getLogger(__name__)

#: Modules a request or a job imports on first use (the pipeline's stages bring torch, MONAI, SimpleITK).
WARM_MODULES = (
    "trials.actions.imaging",
    "trials.actions.review",
    "trials.pipeline.embedded",
    "segmentation.inference",
    "segmentation.contours",
    "rano.match",
    "highdicom",
    "highdicom.seg",
    "rt_utils",
)


def _load_highdicom_tables() -> None:
    # The tables highdicom reads from its package data on first use (each behind an lru_cache); the
    # pinned highdicom (pyproject.toml) has them in _standard_utils, tests/test_warmup.py checks it.
    from highdicom import _standard_utils

    for name in ("get_sop_class_iod_map", "get_iod_module_map", "get_module_attribute_map"):
        getattr(_standard_utils, name)()


def warm_up_process() -> float:
    """Import, load the standard tables, collect, freeze. Idempotent; returns the seconds it took."""
    started = time.perf_counter()
    for name in WARM_MODULES:
        importlib.import_module(name)
    _load_highdicom_tables()
    gc.collect()
    gc.freeze()
    elapsed = time.perf_counter() - started
    logger.info("process warmed up in %.1f s; %d objects frozen", elapsed, gc.get_freeze_count())
    return elapsed
