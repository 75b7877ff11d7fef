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

#: Modules a web request imports on first use: uploads (validated, de-identified and stored here), the
#: review actions (region growing, matching), the API and the dashboard. No network code: a web process
#: that hands its jobs to a broker never loads torch or MONAI (about 700 MB a process).
WEB_MODULES = (
    "trials.actions.imaging",
    "trials.actions.review",
    "trials.api.views",
    "trials.views.viewer",
    "rano.match",
)

#: Modules a job imports on first use (the pipeline's stages bring SimpleITK and a network backend; the
#: contour export highdicom and rt-utils). segmentation.inference no longer imports torch and MONAI
#: itself (the backends of the export run without them), but a worker may run any backend (GPU nodes
#: and models without an export run PyTorch), so all are warmed here, once per process, not per job.
#: OpenVINO is not in this list: it is imported through ``import_openvino`` (its telemetry blocked),
#: see :func:`warm_up_process`.
WORKER_MODULES = (
    "trials.pipeline.embedded",
    "segmentation.inference",
    "segmentation.onnx_backend",
    "onnxruntime",
    "torch",
    "monai.networks.nets",
    "monai.inferers",
    "segmentation.contours",
    "highdicom",
    "highdicom.seg",
    "rt_utils",
)

#: What each kind of process warms: "web" (with a broker, the jobs run elsewhere), "worker", or "all"
#: (embedded mode: the web process runs the jobs too).
ROLES: dict[str, tuple[str, ...]] = {
    "web": WEB_MODULES,
    "worker": WORKER_MODULES,
    "all": WEB_MODULES + WORKER_MODULES,
}


def _load_highdicom_tables() -> None:
    # The tables highdicom reads from its package data on first use (each behind an lru_cache); the
    # pinned highdicom (pyproject.toml) has them in _standard_utils, tests/test_warmup.py checks it.
    from highdicom import _standard_utils

    for name in ("get_sop_class_iod_map", "get_iod_module_map", "get_module_attribute_map"):
        getattr(_standard_utils, name)()


def warm_up_process(role: str = "all") -> float:
    """Import what the process of ``role`` (see :data:`ROLES`) uses, load the standard tables a worker
    needs, collect, freeze. Idempotent; returns the seconds it took."""
    started = time.perf_counter()
    for name in ROLES[role]:
        importlib.import_module(name)
    if "segmentation.onnx_backend" in ROLES[role]:
        from segmentation.onnx_backend import import_openvino, runtime_available

        if runtime_available("openvino"):
            import_openvino()  # about 1 s, paid here rather than by the first job
    if "highdicom" in ROLES[role]:
        _load_highdicom_tables()
    gc.collect()
    gc.freeze()
    elapsed = time.perf_counter() - started
    logger.info("%s process warmed up in %.1f s; %d objects frozen", role, elapsed, gc.get_freeze_count())
    return elapsed
