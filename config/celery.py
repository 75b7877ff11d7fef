"""The Celery application of MetTrack (configuration; the tasks are in ``worker/tasks.py``).

The pipeline sends tasks to it by name (``trials.pipeline.queue``), so nothing in ``trials`` imports the
worker; ``celery -A worker ...`` finds this app through ``worker/__init__.py``.

Queues: ``gpu`` (segmentation; run ``celery -A worker worker -Q gpu --concurrency 1`` on a GPU node) and
``default`` (lesion matching, assessment, periodic sweeps; ``celery -A worker worker -Q default``). Queue
names come from ``CELERY_GPU_QUEUE`` / ``CELERY_DEFAULT_QUEUE`` so that test runs can use their own.

Reliability settings (config/settings.py): ``acks_late`` and ``reject_on_worker_lost`` (a task whose
worker dies is delivered again), prefetch 1 (a long segmentation never holds a second message hostage),
and the Redis ``visibility_timeout`` (``CELERY_VISIBILITY_TIMEOUT_S``): a message taken by a worker that
was killed outright is put back after that many seconds. Beat (``celery -A worker beat``, or a worker
started with ``-B``) runs the two pipeline sweeps every ``PIPELINE_SWEEP_INTERVAL_S`` seconds.

Each worker warms up once at start (``worker_init``, before a prefork pool forks its children):
:func:`config.warmup.warm_up_process` imports what jobs use and moves the startup objects out of the
garbage collector's scans.

Embedded mode: with an empty ``CELERY_BROKER_URL`` nothing talks to a broker; tasks run in-process
(``task_always_eager``) and pipeline jobs run in a background thread of the web process
(see :mod:`trials.pipeline.queue`), so ``make demo`` needs no Redis.
"""

from __future__ import annotations

import os

from celery import Celery
from celery.signals import worker_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

from django.conf import settings  # noqa: E402 - needs DJANGO_SETTINGS_MODULE

app = Celery("mettrack")
app.config_from_object("django.conf:settings", namespace="CELERY")

_default_queue: str = getattr(settings, "CELERY_TASK_DEFAULT_QUEUE", "default")
_gpu_queue: str = getattr(settings, "CELERY_GPU_QUEUE", "gpu")
_sweep_interval_s: float = float(getattr(settings, "PIPELINE_SWEEP_INTERVAL_S", 60.0))

app.conf.update(
    include=["worker.tasks"],
    task_routes={
        "mettrack.pipeline.segment": {"queue": _gpu_queue},
        "mettrack.models.validate": {"queue": _gpu_queue},
        "mettrack.models.train": {"queue": _gpu_queue},
        # A trial's shadow candidate (trials.pipeline.shadow) segments on the GPU workers too.
        "mettrack.models.shadow": {"queue": _gpu_queue},
        "mettrack.*": {"queue": _default_queue},
    },
    beat_schedule={
        "pipeline-sweep-unenqueued-jobs": {
            "task": "mettrack.pipeline.sweep_unenqueued",  # trials.pipeline.queue.SWEEP_UNENQUEUED_TASK
            "schedule": _sweep_interval_s,
            # A sweep that waited longer than its interval is replaced by the next one.
            "options": {"queue": _default_queue, "expires": _sweep_interval_s},
        },
        "pipeline-sweep-lost-jobs": {
            "task": "mettrack.pipeline.sweep_lost",  # trials.pipeline.queue.SWEEP_LOST_TASK
            "schedule": _sweep_interval_s,
            "options": {"queue": _default_queue, "expires": _sweep_interval_s},
        },
        "pipeline-sweep-stuck-jobs": {
            "task": "mettrack.pipeline.sweep_stuck",  # trials.pipeline.queue.SWEEP_STUCK_TASK
            "schedule": _sweep_interval_s,
            "options": {"queue": _default_queue, "expires": _sweep_interval_s},
        },
    },
)

_pull_url: str = getattr(settings, "DICOMWEB_PULL_URL", "")
if _pull_url:
    _pull_interval_s = float(getattr(settings, "DICOMWEB_PULL_INTERVAL_S", 300.0))
    app.conf.beat_schedule["pacs-pull-dicomweb"] = {
        "task": "mettrack.pacs.pull",  # worker.tasks.pull_dicomweb
        "schedule": _pull_interval_s,
        "options": {"queue": _default_queue, "expires": _pull_interval_s},
    }

if getattr(settings, "CELERY_EMBEDDED", not getattr(settings, "CELERY_BROKER_URL", "")):
    # No broker: an in-memory transport keeps Celery from trying AMQP on localhost.
    app.conf.update(broker_url="memory://", task_always_eager=True, task_eager_propagates=False)


@worker_init.connect
def _warm_up(**_: object) -> None:
    """Import what jobs use and freeze the startup objects (config.warmup), before the pool forks."""
    from config.warmup import warm_up_process

    warm_up_process("worker")


__all__ = ["app"]
