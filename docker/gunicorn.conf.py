"""gunicorn settings of MetTrack's web process (``gunicorn -c docker/gunicorn.conf.py config.wsgi``).

Every value can be set from the environment (the compose file and the .env template name them):

- ``GUNICORN_BIND`` (``0.0.0.0:8000``), ``GUNICORN_WORKERS`` (2 per core, at least 2) and
  ``GUNICORN_THREADS`` (4): a request waiting on the database or the disk does not hold a process. Each
  thread keeps at most one database connection (``DB_CONN_MAX_AGE``), so a node opens at most
  workers x threads connections.
- ``GUNICORN_TIMEOUT`` (600 s): an upload of a large series is received and validated in the request
  (2 GiB at 10 MB/s is over 3 minutes); ``GUNICORN_GRACEFUL_TIMEOUT`` (60 s) lets running requests end
  on a restart.
- The application is loaded (and warmed up, config.wsgi) once in the master before it forks
  (``preload_app``): the workers share those pages and start at once.
- Prometheus multiprocess mode: each worker writes its samples under ``PROMETHEUS_MULTIPROC_DIR`` (a
  fresh folder at start), ``/metrics`` sums them; a worker that exits is marked dead.
- Access log on stdout with the request id (``X-Request-ID``, the audit correlation id), as JSON.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any


def _int(name: str, default: int) -> int:
    """An integer from the environment; unset or empty (as docker/env.example leaves it) is the default."""
    return int(os.environ.get(name) or default)


bind = os.environ.get("GUNICORN_BIND") or "0.0.0.0:8000"
workers = _int("GUNICORN_WORKERS", max(2, 2 * (os.cpu_count() or 1)))
threads = _int("GUNICORN_THREADS", 4)
worker_class = "gthread"
timeout = _int("GUNICORN_TIMEOUT", 600)
graceful_timeout = _int("GUNICORN_GRACEFUL_TIMEOUT", 60)
keepalive = 5
preload_app = True
# Recycle a worker now and then (memory fragmentation of long-lived processes); jitter spreads them.
max_requests = _int("GUNICORN_MAX_REQUESTS", 2000)
max_requests_jitter = max_requests // 10
worker_tmp_dir = "/dev/shm" if Path("/dev/shm").is_dir() else None
# gunicornctl's socket is off: operators restart containers, and two masters on one host would share it.
control_socket_disable = True
accesslog = "-"
errorlog = "-"
access_log_format = (
    '{"time": "%(t)s", "remote": "%(h)s", "method": "%(m)s", "path": "%(U)s", "status": %(s)s, '
    '"bytes": %(B)s, "duration_us": %(D)s, "correlation_id": "%({x-request-id}o)s"}'
)

# Prometheus multiprocess mode: the folder is set (and emptied) here, before the application is loaded
# (``preload_app`` loads it in the master before any server hook runs): samples of an earlier master
# would be summed in. A reload (HUP) of the same master reads this file again and keeps the folder.
_metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.path.join(
    tempfile.gettempdir(), f"mettrack-metrics-{os.getpid()}"
)
os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics_dir
if os.environ.get("METTRACK_METRICS_MASTER") != str(os.getpid()):
    shutil.rmtree(_metrics_dir, ignore_errors=True)
    os.makedirs(_metrics_dir, exist_ok=True)
    os.environ["METTRACK_METRICS_MASTER"] = str(os.getpid())


def child_exit(server: Any, worker: Any) -> None:
    """A worker that exited no longer counts in the gauges."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
