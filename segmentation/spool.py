"""The receiving spool: DICOM instances written to disk as they arrive, grouped into studies.

Layout under the spool root::

    tmp/                                 instances being written (renamed into place once synced)
    incoming/<study>/<series>/<sop>.dcm  received instances of studies still arriving
    incoming/<study>/.sender.json        calling AE title and host of the study's first association
    ready/<study>-<ns>/...               complete studies waiting to be routed (renamed from incoming/)

Folder and file names are sha256 digests of the UIDs (filesystem-safe, and no identifier in a path).
An instance is acknowledged only after its file and its folder entry are on disk (fsync), so a process
killed at any moment loses no acknowledged instance: a restart finds ``incoming/`` and ``ready/`` as
they were (:meth:`Spool.recover`). The same instance received twice is one file (same name, replaced).

A study is complete when no instance of it arrived for the quiet period, or when the association that
sent it is released; completion renames its folder into ``ready/``, so an instance of the same study
arriving later starts a new study folder instead of changing one being routed.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

SENDER_FILE = ".sender.json"


def uid_key(uid: str) -> str:
    """Folder/file name standing for a UID (24 hex characters of its sha256)."""
    return hashlib.sha256(uid.encode()).hexdigest()[:24]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Sender:
    """Who sent a study: the calling AE title and the peer's address (no patient information)."""

    ae_title: str
    host: str

    def as_dict(self) -> dict[str, str]:
        return {"ae_title": self.ae_title, "host": self.host}


def read_sender(study_folder: str | Path) -> Sender:
    """The sender recorded in a spooled study folder (empty values when not recorded)."""
    try:
        data = json.loads((Path(study_folder) / SENDER_FILE).read_text())
    except (OSError, ValueError):
        data = {}
    return Sender(str(data.get("ae_title", "")), str(data.get("host", "")))


class Spool:
    """A spool directory (see the module docstring). Thread-safe: one lock guards renames.

    Args:
        root: The spool directory (created when missing).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.tmp = self.root / "tmp"
        self.incoming = self.root / "incoming"
        self.ready_dir = self.root / "ready"
        for folder in (self.tmp, self.incoming, self.ready_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._last_arrival: dict[str, float] = {}

    def store(self, data: bytes, *, study_uid: str, series_uid: str, sop_uid: str, sender: Sender) -> Path:
        """Write one encoded instance (DICOM Part 10 bytes) durably; return its path.

        The bytes are written and synced in ``tmp/`` (outside the lock: concurrent associations write
        in parallel), then renamed into the study's series folder and the folder synced.
        """
        fd, tmp_name = tempfile.mkstemp(dir=self.tmp, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            study = uid_key(study_uid)
            with self._lock:
                series_dir = self.incoming / study / uid_key(series_uid)
                new_study = not (self.incoming / study).exists()
                series_dir.mkdir(parents=True, exist_ok=True)
                if new_study:
                    (self.incoming / study / SENDER_FILE).write_text(json.dumps(sender.as_dict()))
                target = series_dir / f"{uid_key(sop_uid)}.dcm"
                os.replace(tmp_name, target)
                _fsync_dir(series_dir)
                if new_study:
                    _fsync_dir(self.incoming / study)
                    _fsync_dir(self.incoming)
                self._last_arrival[study] = time.time()
            return target
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise

    def recover(self) -> None:
        """After a restart: forget partial writes, take the arrival times of spooled studies from disk."""
        for leftover in self.tmp.iterdir():
            leftover.unlink(missing_ok=True)
        with self._lock:
            for study in self.incoming.iterdir():
                times = [p.stat().st_mtime for p in study.rglob("*.dcm")]
                self._last_arrival[study.name] = max(times, default=study.stat().st_mtime)

    def quiet_studies(self, quiet_period_s: float, now: float | None = None) -> list[str]:
        """Keys of incoming studies whose last instance arrived at least ``quiet_period_s`` ago."""
        now = time.time() if now is None else now
        with self._lock:
            return [key for key, last in self._last_arrival.items() if now - last >= quiet_period_s]

    def complete(self, study_keys: Iterable[str]) -> list[Path]:
        """Move studies from ``incoming/`` to ``ready/``; return their new folders (missing ones skipped)."""
        moved = []
        with self._lock:
            for key in study_keys:
                self._last_arrival.pop(key, None)
                source = self.incoming / key
                if not source.exists():
                    continue
                target = self.ready_dir / f"{key}-{time.time_ns()}"
                os.replace(source, target)
                moved.append(target)
            if moved:
                _fsync_dir(self.incoming)
                _fsync_dir(self.ready_dir)
        return moved

    def ready(self) -> list[Path]:
        """Complete studies not yet routed, oldest first."""
        return sorted(
            (p for p in self.ready_dir.iterdir() if p.is_dir()), key=lambda p: p.name.split("-")[-1]
        )

    def incoming_instances(self) -> int:
        """Number of instances of studies still arriving (for monitoring and tests)."""
        return sum(1 for _ in self.incoming.rglob("*.dcm"))


__all__ = ["SENDER_FILE", "Sender", "Spool", "read_sender", "uid_key"]
