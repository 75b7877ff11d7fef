"""Process warm-up (config.warmup): what a fresh web or worker process holds after it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import gc, json, sys, time
import django
django.setup()
from config.warmup import warm_up_process
seconds = warm_up_process()
from highdicom import _standard_utils as standard
tables = [getattr(standard, name).cache_info().currsize for name in (
    "get_sop_class_iod_map", "get_iod_module_map", "get_module_attribute_map")]
frozen = gc.get_freeze_count()
modules = set(sys.modules)
import segmentation.contours, trials.pipeline.embedded, trials.actions.review, highdicom.seg  # already there: nothing new is imported
from segmentation.onnx_backend import import_openvino
import_openvino()
started = time.perf_counter()
gc.collect()
collect_s = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "tables": tables, "frozen": frozen, "tracked": len(gc.get_objects()),
                  "new_modules": sorted(set(sys.modules) - modules), "collect_s": collect_s,
                  "openvino": "openvino" in modules, "telemetry": sys.modules.get("openvino_telemetry", 0)}))
"""


def _last_line_of(code: str, **environ: str) -> str:
    """Run ``code`` in a fresh Python process (as a web or worker process starts); its last output line."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", "DEBUG": "1", **environ}
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1]


def test_warm_up_loads_what_jobs_use_and_freezes_it() -> None:
    result = json.loads(_last_line_of(PROBE))
    assert result["tables"] == [1, 1, 1]  # highdicom's standard tables are loaded
    assert result["new_modules"] == []
    # OpenVINO is warmed too, through the import that blocks its telemetry (None: unimportable).
    assert result["openvino"] and result["telemetry"] is None
    # Everything alive after start-up is frozen; the collector then tracks only what came after.
    assert result["frozen"] > 100_000
    assert result["tracked"] < result["frozen"] / 10


WSGI_PROBE = """
import gc, json, sys, config.wsgi
print(json.dumps({"frozen": gc.get_freeze_count(), "torch": "torch" in sys.modules, "monai": "monai" in sys.modules}))
"""


def test_wsgi_application_with_a_broker_warms_up_without_the_network_code() -> None:
    """A web process hands its jobs to the workers: it never loads torch or MONAI (about 700 MB each)."""
    result = json.loads(_last_line_of(WSGI_PROBE, CELERY_BROKER_URL="redis://127.0.0.1:6379/15"))
    assert result["frozen"] > 100_000
    assert not result["torch"] and not result["monai"]


def test_wsgi_application_in_embedded_mode_warms_up_what_jobs_use_too() -> None:
    result = json.loads(_last_line_of(WSGI_PROBE, CELERY_BROKER_URL=""))
    assert result["frozen"] > 100_000 and result["torch"] and result["monai"]
