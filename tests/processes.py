"""Real processes for the tests that need them: Celery workers, gunicorn, a private redis-server, and a
TCP proxy to PostgreSQL that a test can cut (a real network outage).

Each process runs in its own process group (so SIGKILL takes it all) with the environment of a deployed
one (DEBUG off, the test database, the test's MEDIA_ROOT, test-private queue names and Redis database).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REDIS_HOST = "127.0.0.1"
SHARED_REDIS_PORT = 6379
REDIS_DB = 11  # not the default 0: another run's unacknowledged messages never mix with ours
VISIBILITY_TIMEOUT_S = 15  # longer than one tiny-model task, short enough for the test
ROOT = Path(__file__).resolve().parents[1]
CELERY = Path(sys.executable).with_name("celery")


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((REDIS_HOST, port)) == 0


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


class Process:
    """A subprocess in its own process group (so SIGKILL takes it all), its output in a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("w")
        self.process = subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_until(self, predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
        """Wait for ``predicate``; a process that exits meanwhile fails the wait with its log."""

        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"{self.log_path.stem} exited early:\n{self.log()[-3000:]}")
            return predicate()

        wait_for(ready, timeout_s, what)

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        self._log.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
        self._log.close()


class Worker(Process):
    """A ``celery -A worker worker`` process (both queues unless ``queues`` names them; beat inside with
    ``beat``)."""

    def __init__(
        self,
        env: dict[str, str],
        log_path: Path,
        *,
        beat: bool = False,
        queues: str = "",
        concurrency: int = 1,
    ) -> None:
        queues = queues or f"{env['CELERY_GPU_QUEUE']},{env['CELERY_DEFAULT_QUEUE']}"
        args = [str(CELERY), "-A", "worker", "worker", "-Q", queues, "--concurrency", str(concurrency)]
        args += ["-l", "info", "-n", f"test-{os.getpid()}-{log_path.stem}@%h"]
        args += ["--without-gossip", "--without-mingle"]
        if beat:
            args += ["-B", "-s", str(log_path.with_suffix(".beat"))]
        super().__init__(args, env, log_path)

    def wait_ready(self, timeout_s: float = 90) -> None:
        self.wait_until(lambda: " ready." in self.log(), timeout_s, f"{self.log_path.stem} to start")


def compose_command(service: str, **options: str) -> list[str]:
    """The command of a docker/compose.yaml service, run with this environment's executables; an option
    named in ``options`` (``n="gpu1@%h"`` for ``-n``, ``s=...`` for ``-s``) gets that value instead, so
    that several processes of one service can run side by side on this machine."""
    import yaml

    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    argv = [str(part) for part in compose["services"][service]["command"]]
    for flag, value in options.items():
        index = argv.index(f"-{flag}")
        argv[index + 1] = value
    argv[0] = str(Path(sys.executable).with_name(argv[0])) if argv[0] != "python" else sys.executable
    return argv


class ComposeService(Process):
    """A Celery process (worker or beat) of docker/compose.yaml, started with that service's command."""

    def __init__(self, service: str, env: dict[str, str], log_path: Path, **options: str) -> None:
        self.argv = compose_command(service, **options)
        self.ready_marker = "beat: Starting" if "beat" in self.argv else " ready."
        super().__init__(self.argv, env, log_path)

    def wait_ready(self, timeout_s: float = 90) -> None:
        self.wait_until(lambda: self.ready_marker in self.log(), timeout_s, f"{self.log_path.stem} to start")


class Gunicorn(Process):
    """The web process of docker/compose.yaml (gunicorn with docker/gunicorn.conf.py), on a free port."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        env = {**env, "GUNICORN_BIND": f"{REDIS_HOST}:{self.port}"}
        super().__init__(compose_command("web"), env, log_path)
        self.url = f"http://{REDIS_HOST}:{self.port}"

    def wait_ready(self, timeout_s: float = 120) -> None:
        self.wait_until(lambda: port_open(self.port), timeout_s, "gunicorn to listen")


def worker_env(broker_url: str, media_root: Path, model_dir: Path, **extra: str) -> dict[str, str]:
    """Environment of a worker process: the test database, this test's storage, queues and model."""
    from django.conf import settings
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.fail(
            "process tests share the test database with other processes: set DATABASE_URL to PostgreSQL"
        )
    db = connection.settings_dict
    env = dict(os.environ)
    env.update(
        DATABASE_URL=f"postgres://{db['USER']}@{db['HOST'] or REDIS_HOST}:{db['PORT'] or 5432}/{db['NAME']}",
        CELERY_BROKER_URL=broker_url,
        CELERY_GPU_QUEUE=settings.CELERY_GPU_QUEUE,
        CELERY_DEFAULT_QUEUE=settings.CELERY_TASK_DEFAULT_QUEUE,
        CELERY_VISIBILITY_TIMEOUT_S=str(VISIBILITY_TIMEOUT_S),
        CELERY_UNACKED_RESTORE_INTERVAL_S="1",
        MEDIA_ROOT=str(media_root),
        PIPELINE_MODEL_DIR=str(model_dir),
        PIPELINE_DEVICE="cpu",
        # Production settings (DEBUG off) with what they require.
        DEBUG="0",
        SECRET_KEY="pipeline-worker-test-key-not-secret-0123456789-abcdefghijkl",
        ALLOWED_HOSTS="localhost",
        SECURE_SSL_REDIRECT="0",  # the test talks plain HTTP on the loopback (no TLS proxy in front)
        OMP_NUM_THREADS="1",
        # No free-space reserve: a nearly full CI disk must not turn every image write into a 507.
        STORAGE_MIN_FREE_BYTES="0",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


class TcpProxy:
    """A TCP forwarder to PostgreSQL that the test can cut and restore: a real network outage."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        with socket.socket() as probe:
            probe.bind((REDIS_HOST, 0))
            self.port = probe.getsockname()[1]
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((REDIS_HOST, self.port))
        listener.listen(16)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed: the outage
            upstream = socket.create_connection((REDIS_HOST, self.target_port))
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Refuse new connections and break the open ones."""
        if self._listener is not None:
            # shutdown() wakes the thread blocked in accept() (close() alone leaves the socket listening).
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            for sock in self._conns:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                    sock.close()
                except OSError:
                    pass
            self._conns.clear()


@pytest.fixture
def broker(settings: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[int], str]]:
    """Point this process's Celery app at a broker (port -> URL) with test-private queue names."""
    from config.celery import app
    from trials.pipeline import queue

    gpu_queue, default_queue = f"mt-test-{os.getpid()}-gpu", f"mt-test-{os.getpid()}-default"
    saved = {key: app.conf.get(key) for key in ("broker_url", "task_always_eager", "task_routes")}
    monkeypatch.setattr(queue, "GPU_QUEUE", gpu_queue)
    monkeypatch.setattr(queue, "DEFAULT_QUEUE", default_queue)
    settings.CELERY_EMBEDDED = False
    settings.CELERY_GPU_QUEUE, settings.CELERY_TASK_DEFAULT_QUEUE = gpu_queue, default_queue

    def use(port: int) -> str:
        """Use the broker on ``port``; returns its URL."""
        url = f"redis://{REDIS_HOST}:{port}/{REDIS_DB}"
        settings.CELERY_BROKER_URL = url
        monkeypatch.setenv("CELERY_BROKER_URL", url)  # Celery reads this variable before its own setting
        app.conf.update(
            broker_url=url,
            task_always_eager=False,
            task_routes={
                "mettrack.pipeline.segment": {"queue": gpu_queue},
                "mettrack.*": {"queue": default_queue},
            },
        )
        # Connection pools are bound to the URL they were made for: start afresh.
        app._pool = None
        app.amqp._producer_pool = None
        return url

    yield use
    app.conf.update(**saved)
    app._pool = None
    app.amqp._producer_pool = None


def free_port() -> int:
    """A TCP port nothing listens on now (tests running side by side never share one)."""
    with socket.socket() as probe:
        probe.bind((REDIS_HOST, 0))
        return int(probe.getsockname()[1])


class RedisServer:
    """A private ``redis-server`` without persistence (as the shared one runs), on a port of its own, that
    a test stops and starts: a real broker outage or restart (the shared server on 6379 is never stopped).
    """

    def __init__(self) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            pytest.fail("redis-server is not installed (the machine's Redis package provides it)")
        self.executable = executable
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = [
            self.executable,
            "--port",
            str(self.port),
            "--bind",
            REDIS_HOST,
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: port_open(self.port), 20, "the private redis-server")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)
        wait_for(lambda: not port_open(self.port), 20, "the private redis-server to stop")


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A started private redis-server, stopped at the end of the test."""
    server = RedisServer()
    server.start()
    yield server
    server.stop()


class DicomListenerProcess(Process):
    """``manage.py dicom_listener`` on a free port, with its spool and inbox under ``folder``.

    ``env`` is a :func:`worker_env` environment; without a broker in it the pipeline jobs of the stored
    series run in the listener process itself (embedded mode).
    """

    def __init__(
        self,
        env: dict[str, str],
        folder: Path,
        *,
        allow: list[str],
        ae_title: str = "METTRACK",
        quiet_period_s: float = 30.0,
        port: int | None = None,
        name: str = "listener",
    ) -> None:
        self.port = port or free_port()
        self.ae_title = ae_title
        self.spool_dir = folder / "spool"
        env = {
            **env,
            "DICOM_SPOOL_DIR": str(self.spool_dir),
            "DICOM_INBOX_DIR": str(folder / "inbox"),
        }
        args = [sys.executable, "manage.py", "dicom_listener", "--port", str(self.port), "--bind", REDIS_HOST]
        args += ["--ae-title", ae_title, "--quiet-period", str(quiet_period_s)]
        for caller in allow:
            args += ["--allow", caller]
        super().__init__(args, env, folder / f"{name}.log")

    def wait_ready(self, timeout_s: float = 120) -> None:
        self.wait_until(lambda: port_open(self.port), timeout_s, "the DICOM listener to listen")


class Orthanc(Process):
    """Debian's Orthanc with the DICOMweb plugin, configured by the test: private ports, storage in a
    temporary folder, no remote access, and only the given modalities known (``{AE: port}`` at
    127.0.0.1); echo and store from unknown callers refused."""

    def __init__(
        self, folder: Path, *, ae_title: str = "ORTHANC", modalities: dict[str, int] | None = None
    ) -> None:
        import json

        executable = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
        if not Path(executable).exists():
            pytest.fail("Orthanc is not installed: run scripts/ensure-pacs-tools.sh")
        self.folder = folder
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.ae_title = ae_title
        self.url = f"http://{REDIS_HOST}:{self.http_port}"
        self.dicomweb_url = f"{self.url}/dicom-web"
        folder.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "mettrack-test",
            "StorageDirectory": str(folder / "storage"),
            "IndexDirectory": str(folder / "storage"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": ae_title,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAeTitle": True,
            "DicomAlwaysAllowEcho": False,
            "DicomAlwaysAllowStore": False,
            "DicomCheckModalityHost": True,
            "DicomModalities": {
                name.lower(): [name, REDIS_HOST, port] for name, port in (modalities or {}).items()
            },
            "Plugins": ["/usr/share/orthanc/plugins/libOrthancDicomWeb.so"],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True},
            "HttpTimeout": 60,
            "StableAge": 1,
            "ConcurrentJobs": 1,
            "SaveJobs": False,
        }
        config_path = folder / "orthanc.json"
        config_path.write_text(json.dumps(config, indent=2))
        self.argv = [executable, str(config_path)]
        self.env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
        self.starts = 1
        super().__init__(self.argv, self.env, folder / "orthanc.log")

    def restart(self) -> None:
        """Start it again after :meth:`kill` (same ports, same storage): a PACS back after an outage."""
        self.starts += 1
        Process.__init__(self, self.argv, self.env, self.folder / f"orthanc-{self.starts}.log")

    def wait_ready(self, timeout_s: float = 60) -> None:
        self.wait_until(
            lambda: port_open(self.http_port) and port_open(self.dicom_port), timeout_s, "Orthanc"
        )

    def get(self, path: str) -> Any:
        import requests

        response = requests.get(self.url + path, timeout=30)
        response.raise_for_status()
        return response.json()


def storescu(
    port: int,
    files: list[Path] | Path,
    *,
    calling: str = "STORESCU",
    called: str = "METTRACK",
    options: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    """dcmtk's ``storescu`` sending ``files`` (or a folder, recursively) to 127.0.0.1:``port``.

    ``-R``: it proposes the SOP classes of the files themselves (enhanced MR too); ``options`` adds
    storescu options, e.g. ``("-xv",)`` to propose JPEG 2000 lossless and send such files as they are.
    storescu exits 0 even when a store failed, so an error line in its output sets ``returncode`` to 1.
    """
    executable = shutil.which("storescu")
    if executable is None:
        pytest.fail("dcmtk's storescu is not installed: run scripts/ensure-pacs-tools.sh")
    args = [executable, "-aet", calling, "-aec", called, "-nh", "-R", *options]
    if isinstance(files, Path) and files.is_dir():
        args += ["+sd", "+r", REDIS_HOST, str(port), str(files)]
    else:
        paths = [files] if isinstance(files, Path) else files
        args += [REDIS_HOST, str(port), *map(str, paths)]
    result = subprocess.run(args, capture_output=True, text=True, timeout=600)
    if result.returncode == 0 and any(line.startswith(("E:", "F:")) for line in result.stderr.splitlines()):
        result.returncode = 1
    return result


def echoscu(
    port: int, *, calling: str = "ECHOSCU", called: str = "METTRACK"
) -> subprocess.CompletedProcess[str]:
    """dcmtk's ``echoscu`` (C-ECHO) to 127.0.0.1:``port``."""
    executable = shutil.which("echoscu")
    if executable is None:
        pytest.fail("dcmtk's echoscu is not installed: run scripts/ensure-pacs-tools.sh")
    args = [executable, "-aet", calling, "-aec", called, REDIS_HOST, str(port)]
    return subprocess.run(args, capture_output=True, text=True, timeout=120)
