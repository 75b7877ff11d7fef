"""Readiness checks of a MetTrack node (``/readyz``), built on django-health-check.

Each check answers one question an operator or an orchestrator asks before sending work to the node:
can it reach the database and the broker, does every Celery queue have a worker, can it write stored
files (and is there room), and are the configured model weights the ones their config names. A check
raises ``ServiceUnavailable`` with a short message (never a secret or a path outside MetTrack's own).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Any, ClassVar

from django.conf import settings
from health_check.base import HealthCheck
from health_check.checks import Database, Storage
from health_check.exceptions import ServiceUnavailable

from segmentation.io import sha256_file
from segmentation.modeldir import CONFIG_NAME, WEIGHTS_NAME
from trials.pipeline.registry import configured_model_dir


@dataclasses.dataclass
class Broker(HealthCheck):
    """The Celery broker (Redis) answers a ping."""

    timeout = dt.timedelta(seconds=3)

    def run(self) -> None:
        import redis

        try:
            client = redis.Redis.from_url(
                settings.CELERY_BROKER_URL, socket_timeout=2, socket_connect_timeout=2
            )
            client.ping()
        except redis.RedisError as exc:
            raise ServiceUnavailable(f"broker unreachable ({type(exc).__name__})") from exc


@dataclasses.dataclass
class WorkerQueues(HealthCheck):
    """Every pipeline queue (``gpu``, ``default``) is consumed by at least one running worker."""

    timeout = dt.timedelta(seconds=5)

    def run(self) -> None:
        from config.celery import app
        from trials.pipeline.queue import DEFAULT_QUEUE, GPU_QUEUE

        try:
            replies = app.control.inspect(timeout=2.0).active_queues() or {}
        except OSError as exc:
            raise ServiceUnavailable(f"broker unreachable ({type(exc).__name__})") from exc
        consumed = {queue.get("name") for queues in replies.values() for queue in queues}
        missing = [queue for queue in (GPU_QUEUE, DEFAULT_QUEUE) if queue not in consumed]
        if missing:
            raise ServiceUnavailable(f"no worker consumes queue(s) {', '.join(missing)}")


@dataclasses.dataclass
class FreeSpace(HealthCheck):
    """The stored-files volume has more free space than ``STORAGE_MIN_FREE_BYTES``."""

    def run(self) -> None:
        minimum = int(getattr(settings, "STORAGE_MIN_FREE_BYTES", 0))
        root = Path(settings.MEDIA_ROOT)
        root.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(root).free
        if free < minimum:
            raise ServiceUnavailable(
                f"{free / 1024**2:.0f} MiB free for stored files, under {minimum / 1024**2:.0f} MiB"
            )


@dataclasses.dataclass
class ModelWeights(HealthCheck):
    """The configured model directory's weights match the sha256 its ``config.json`` records."""

    timeout = dt.timedelta(seconds=30)
    #: (directory, weights size, mtime) -> verified: a probe every few seconds hashes the file once.
    _verified: ClassVar[dict[tuple[str, int, int], bool]] = {}

    def run(self) -> None:
        directory = configured_model_dir()
        weights = directory / WEIGHTS_NAME
        try:
            recorded = json.loads((directory / CONFIG_NAME).read_text(encoding="utf-8"))["weights_sha256"]
            stat = weights.stat()
        except (OSError, ValueError, KeyError) as exc:
            raise ServiceUnavailable(f"model directory unusable ({type(exc).__name__})") from exc
        key = (str(directory.resolve()), stat.st_size, stat.st_mtime_ns)
        if key not in self._verified:
            self._verified[key] = sha256_file(weights) == recorded
        if not self._verified[key]:
            raise ServiceUnavailable("model weights do not match the checksum in config.json")


def readiness_checks() -> list[Any]:
    """The checks of ``/readyz`` for this deployment (no broker or worker checks in embedded mode)."""
    checks: list[Any] = [Database, Storage, FreeSpace, ModelWeights]
    if not getattr(settings, "CELERY_EMBEDDED", True):
        checks += [Broker, WorkerQueues]
    return checks


__all__ = ["Broker", "FreeSpace", "ModelWeights", "WorkerQueues", "readiness_checks"]
