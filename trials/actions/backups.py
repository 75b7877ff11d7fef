"""Backup and restore of a site: the PostgreSQL database and ``MEDIA_ROOT``, as one checked folder.

A backup is a folder ``mettrack-backup-<UTC time>/`` holding

- ``database.dump``: ``pg_dump`` in its custom format (every table, the audit trail's append-only
  triggers included), taken from an exported snapshot, so the row counts in the manifest are those of
  the dump exactly even while the site keeps working;
- ``media.tar``: every stored file (series, masks, contours, reader masks), archived after the snapshot,
  so every file a row of the dump names is in it;
- ``manifest.json``: format, time, MetTrack version, the migrations applied, row counts of the clinical
  tables, the number of stored files, and the SHA-256 of both files.

:func:`restore_backup` checks the checksums before it touches anything, refuses a database or a media
folder that already holds data unless told to replace it, restores with ``pg_restore`` in one
transaction, unpacks the files with tarfile's ``data`` filter (no absolute paths, no ``..``, no links
out of the folder), and then compares the restored row counts and files with the manifest.

Why here and not only pg_dump: pg_dump and pg_restore do the database (and are what this calls); the
pairing with the stored files, the consistency of the two and the checks afterwards are MetTrack's.
The folder holds pseudonymised trial data (no PHI is stored): keep it as the site keeps its database.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from django.apps import apps
from django.conf import settings
from django.db import connection, transaction
from django.db.migrations.recorder import MigrationRecorder

from trials.audit import new_correlation_id, record_audit_event
from trials.exceptions import InvalidStateError

FORMAT = 1
DATABASE_FILE = "database.dump"
MEDIA_FILE = "media.tar"
MANIFEST_FILE = "manifest.json"
#: Tables whose row counts the manifest keeps and a restore must reproduce.
COUNTED_MODELS = (
    "trials.Trial",
    "trials.TrialMembership",
    "trials.Patient",
    "trials.Timepoint",
    "trials.ImagingSeries",
    "trials.SegmentationRun",
    "trials.Lesion",
    "trials.LesionObservation",
    "trials.Assessment",
    "trials.ProcessingJob",
    "trials.AuditEvent",
)


class BackupError(Exception):
    """A backup cannot be made or restored; the message says why and what to do."""


@dataclass
class BackupManifest:
    """What a backup holds, written as ``manifest.json``."""

    created_at: str
    mettrack_version: str
    database_name: str
    migrations: dict[str, str]
    counts: dict[str, int]
    media_files: int
    checksums: dict[str, str]
    format: int = FORMAT
    notes: list[str] = field(default_factory=list)

    @classmethod
    def read(cls, folder: Path) -> BackupManifest:
        try:
            data = json.loads((folder / MANIFEST_FILE).read_text())
        except FileNotFoundError:
            raise BackupError(f"{folder} is not a MetTrack backup (no {MANIFEST_FILE}).") from None
        except json.JSONDecodeError as exc:
            raise BackupError(f"{folder / MANIFEST_FILE} is damaged: {exc}.") from None
        if data.get("format") != FORMAT:
            raise BackupError(
                f"Backup format {data.get('format')!r} is not {FORMAT}; use the version that wrote it."
            )
        return cls(**data)


def _postgres_environment() -> dict[str, str]:
    """libpq variables of the configured database (the password never appears on a command line)."""
    db = connection.settings_dict
    if connection.vendor != "postgresql":
        raise BackupError(
            "Backups are of PostgreSQL databases; the embedded demo's SQLite database is the file "
            f"{db['NAME']} (copy it with the media folder)."
        )
    env = dict(os.environ)
    env.update(
        PGDATABASE=str(db["NAME"]),
        PGUSER=str(db.get("USER") or ""),
        PGHOST=str(db.get("HOST") or "127.0.0.1"),
        PGPORT=str(db.get("PORT") or 5432),
    )
    if db.get("PASSWORD"):
        env["PGPASSWORD"] = str(db["PASSWORD"])
    return env


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BackupError(f"{name} is not installed (Debian package postgresql-client).")
    return path


def _run(args: list[str], env: dict[str, str], what: str) -> None:
    result = subprocess.run(args, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise BackupError(f"{what} failed: {result.stderr.strip()[-2000:]}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _counts() -> dict[str, int]:
    return {label: apps.get_model(label).objects.count() for label in COUNTED_MODELS}


def _migrations() -> dict[str, str]:
    """The last applied migration of each app (what the restored code must be able to run on)."""
    applied: dict[str, str] = {}
    for app, name in MigrationRecorder(connection).applied_migrations():
        applied[app] = max(applied.get(app, ""), name)
    return dict(sorted(applied.items()))


def _media_files(root: Path) -> list[Path]:
    """Stored files under ``root``, without the temporary files of writes in progress."""
    if not root.exists():
        return []
    return sorted(path for path in root.rglob("*") if path.is_file() and not path.name.startswith(".tmp-"))


def _archive_media(root: Path, target: Path) -> int:
    files = _media_files(root)
    with tarfile.open(target, "w") as archive:
        for path in files:
            archive.add(path, arcname=str(path.relative_to(root)), recursive=False)
    return len(files)


def create_backup(parent: Path, *, actor: Any | None, reason: str = "") -> Path:
    """Write a backup folder under ``parent`` and return it (see the module's description).

    Raises:
        BackupError: Not PostgreSQL, pg_dump missing or failing, or ``parent`` not writable.
    """
    env = _postgres_environment()
    pg_dump = _tool("pg_dump")
    now = dt.datetime.now(dt.UTC)
    folder = parent / f"mettrack-backup-{now:%Y%m%dT%H%M%SZ}"
    partial = folder.with_name(folder.name + ".partial")
    try:
        partial.mkdir(parents=True)
    except OSError as exc:
        raise BackupError(f"Cannot create {partial}: {exc.strerror}.") from None
    try:
        # One snapshot for the counts and the dump: the manifest describes the dump exactly.
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            cursor.execute("SELECT pg_export_snapshot()")
            snapshot = cursor.fetchone()[0]
            counts, migrations = _counts(), _migrations()
            _run(
                [pg_dump, "--format=custom", "--no-owner", "--no-privileges", f"--snapshot={snapshot}",
                 f"--file={partial / DATABASE_FILE}"],
                env,
                "pg_dump",
            )  # fmt: skip
        media_files = _archive_media(Path(settings.MEDIA_ROOT), partial / MEDIA_FILE)
        manifest = BackupManifest(
            created_at=now.isoformat(),
            mettrack_version=metadata.version("mettrack"),
            database_name=env["PGDATABASE"],
            migrations=migrations,
            counts=counts,
            media_files=media_files,
            checksums={name: _sha256(partial / name) for name in (DATABASE_FILE, MEDIA_FILE)},
        )
        (partial / MANIFEST_FILE).write_text(json.dumps(asdict(manifest), indent=2) + "\n")
        partial.rename(folder)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    with transaction.atomic():
        record_audit_event(
            actor=actor,
            action="backup",
            object_type="site.backup",
            object_id=folder.name,
            object_repr=folder.name,
            after={"counts": counts, "media_files": media_files},
            reason=reason or "backup of the database and the stored files",
            correlation_id=new_correlation_id(),
        )
    return folder


def _verify_files(folder: Path, manifest: BackupManifest) -> None:
    for name, expected in manifest.checksums.items():
        path = folder / name
        if not path.is_file():
            raise BackupError(f"{path} is missing: the backup is incomplete.")
        if _sha256(path) != expected:
            raise BackupError(f"{path} does not match its checksum in the manifest: the backup is damaged.")


def _target_holds_data(media_root: Path) -> list[str]:
    held = []
    if "trials_auditevent" in connection.introspection.table_names():
        with connection.cursor() as cursor:
            cursor.execute("SELECT EXISTS (SELECT 1 FROM trials_auditevent)")
            if cursor.fetchone()[0]:
                held.append(f"the database {connection.settings_dict['NAME']} holds an audit trail")
    if media_root.exists() and any(media_root.iterdir()):
        held.append(f"{media_root} is not empty")
    return held


def _unpack_media(archive_path: Path, media_root: Path, *, replace: bool) -> None:
    media_root.mkdir(parents=True, exist_ok=True)
    if replace:
        for entry in media_root.iterdir():  # the folder itself may be a volume's mount point: keep it
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    with tarfile.open(archive_path) as archive:
        try:
            archive.extractall(media_root, filter="data")
        except tarfile.FilterError as exc:
            raise BackupError(
                f"{archive_path} holds an unsafe entry ({exc}); nothing more was unpacked."
            ) from None


def restore_backup(folder: Path, *, replace: bool = False, reason: str = "") -> BackupManifest:
    """Restore a backup folder into the configured database and ``MEDIA_ROOT``; run ``migrate`` after it
    when the code is newer than the backup. The restore is audited as the system's (the users are those
    of the backup), with ``reason``.

    Raises:
        BackupError: Damaged or incomplete backup, pg_restore failing, or the restored rows and files not
            matching the manifest.
        InvalidStateError: The database or the media folder already holds data and ``replace`` is off.
    """
    manifest = BackupManifest.read(folder)
    _verify_files(folder, manifest)
    env = _postgres_environment()
    pg_restore = _tool("pg_restore")
    media_root = Path(settings.MEDIA_ROOT)
    held = _target_holds_data(media_root)
    if held and not replace:
        raise InvalidStateError(f"Not restored: {'; '.join(held)}. Restore with --replace to overwrite them.")
    connection.close()
    _run(
        [pg_restore, "--clean", "--if-exists", "--no-owner", "--no-privileges", "--single-transaction",
         "--exit-on-error", f"--dbname={env['PGDATABASE']}", str(folder / DATABASE_FILE)],
        env,
        "pg_restore",
    )  # fmt: skip
    _unpack_media(folder / MEDIA_FILE, media_root, replace=replace)
    counts, media_files = _counts(), len(_media_files(media_root))
    if counts != manifest.counts or media_files != manifest.media_files:
        raise BackupError(
            f"The restored site does not match the backup: rows {counts} (expected {manifest.counts}), "
            f"files {media_files} (expected {manifest.media_files})."
        )
    with transaction.atomic():
        record_audit_event(
            actor=None,
            action="restore",
            object_type="site.backup",
            object_id=folder.name,
            object_repr=folder.name,
            after={"counts": counts, "media_files": media_files, "created_at": manifest.created_at},
            reason=reason or f"site restored from the backup of {manifest.created_at}",
            correlation_id=new_correlation_id(),
        )
    return manifest
