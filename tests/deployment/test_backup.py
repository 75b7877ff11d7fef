"""Backup and restore (``manage.py backup`` / ``manage.py restore``) with the real pg_dump and pg_restore.

The site is backed up from the test database, then restored by a separate ``manage.py restore`` process
into a new, empty PostgreSQL database and an empty media folder: the restored site has the same rows
(patients, visits, assessments, the audit trail, read column by column from both databases), the same
files (compared by SHA-256), and the audit trail's append-only trigger. A damaged backup, a target that
holds data and an archive with a path out of the media folder are refused before anything is changed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.core.management import call_command
from django.db import connection

from tests.factories import (
    make_assessment,
    make_lesion,
    make_member,
    make_observation,
    make_patient,
    make_series,
    make_timepoint,
    make_trial,
)
from tests.processes import ROOT
from trials.actions.backups import BackupManifest, restore_backup
from trials.choices import MembershipRole
from trials.exceptions import InvalidStateError
from trials.models import AuditEvent

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

COMPARED_TABLES = (
    "trials_trial",
    "trials_patient",
    "trials_timepoint",
    "trials_lesionobservation",
    "trials_assessment",
)


def _dsn(name: str) -> str:
    db = connection.settings_dict
    return f"postgresql://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{name}"


@pytest.fixture
def site(settings: Any, tmp_path: Path) -> Path:
    """A trial with two patients' visits, observations, assessments and stored files."""
    if connection.vendor != "postgresql":
        pytest.fail("backups are of PostgreSQL databases: set DATABASE_URL")
    settings.MEDIA_ROOT = tmp_path / "media"
    trial = make_trial()
    make_member(trial, MembershipRole.RADIOLOGIST)
    for n in range(2):
        patient = make_patient(trial, subject_id=f"SUBJ-{n:03d}")
        lesion = make_lesion(patient)
        for visit in range(3):
            timepoint = make_timepoint(patient, is_baseline=visit == 0)
            series = make_series(timepoint)
            source = settings.MEDIA_ROOT / "series" / f"s{series.pk}" / "source"
            source.mkdir(parents=True)
            (source / "IM0001.dcm").write_bytes(os.urandom(2048))
            make_observation(lesion, timepoint, longest_diameter_mm=20.0 - 3 * visit)
            make_assessment(timepoint, overall_response="SD" if visit else "")
    (settings.MEDIA_ROOT / "masks" / "run_1").mkdir(parents=True)
    (settings.MEDIA_ROOT / "masks" / "run_1" / "labels.nii.gz").write_bytes(os.urandom(4096))
    return settings.MEDIA_ROOT


@pytest.fixture
def empty_database() -> Iterator[str]:
    """A new, empty PostgreSQL database, dropped at the end."""
    name = f"{connection.settings_dict['NAME']}_restore"
    with psycopg.connect(_dsn("postgres"), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')
    yield name
    with psycopg.connect(_dsn("postgres"), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _rows(dsn: str, table: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(f"SELECT * FROM {table} ORDER BY id").fetchall()  # noqa: S608 - fixed names


def _tree(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _restore_process(
    folder: Path, database: str, media_root: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    """``manage.py restore`` as an operator runs it: its own process, configured by the environment."""
    env = {
        **os.environ,
        "DATABASE_URL": _dsn(database).replace("postgresql://", "postgres://"),
        "MEDIA_ROOT": str(media_root),
        "CELERY_BROKER_URL": "",
        "DEBUG": "0",
        "SECRET_KEY": "restore-test-key-not-secret-0123456789-abcdefghijklmnopqrstuvwxyz",
        "ALLOWED_HOSTS": "localhost",
    }
    return subprocess.run(
        [sys.executable, "manage.py", "restore", str(folder), *extra],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _backup(tmp_path: Path) -> Path:
    out = io.StringIO()
    call_command("backup", str(tmp_path / "backups"), "--reason", "nightly", stdout=out)
    return Path(out.getvalue().strip())


def test_a_restored_site_has_the_same_patients_assessments_audit_trail_and_files(
    site: Path, tmp_path: Path, empty_database: str
) -> None:
    folder = _backup(tmp_path)
    manifest = BackupManifest.read(folder)
    assert manifest.counts["trials.Patient"] == 2 and manifest.counts["trials.Assessment"] == 6
    assert manifest.media_files == 7 and set(manifest.checksums) == {"database.dump", "media.tar"}
    backup_event = AuditEvent.objects.get(action="backup")
    assert backup_event.object_id == folder.name and backup_event.reason == "nightly"
    audit_in_backup = manifest.counts["trials.AuditEvent"]

    restored_media = tmp_path / "restored-media"
    result = _restore_process(folder, empty_database, restored_media)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Restored the backup of" in result.stdout

    source, restored = _dsn(connection.settings_dict["NAME"]), _dsn(empty_database)
    for table in COMPARED_TABLES:
        assert _rows(restored, table) == _rows(source, table), table
    # The audit trail as it was at the backup, then the restore's own event.
    restored_audit = _rows(restored, "trials_auditevent")
    assert restored_audit[:audit_in_backup] == _rows(source, "trials_auditevent")[:audit_in_backup]
    assert len(restored_audit) == audit_in_backup + 1
    with psycopg.connect(restored) as conn:
        action, reason = conn.execute(
            "SELECT action, reason FROM trials_auditevent ORDER BY id DESC LIMIT 1"
        ).fetchone()
        assert action == "restore" and manifest.created_at in reason
        # The append-only trigger came back with the tables.
        with pytest.raises(psycopg.errors.RestrictViolation, match="append-only"):
            conn.execute("DELETE FROM trials_auditevent")
    assert _tree(restored_media) == _tree(site)


def test_a_damaged_backup_is_refused_before_anything_changes(
    site: Path, tmp_path: Path, empty_database: str
) -> None:
    folder = _backup(tmp_path)
    dump = folder / "database.dump"
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0xFF
    dump.write_bytes(bytes(data))
    restored_media = tmp_path / "restored-media"
    result = _restore_process(folder, empty_database, restored_media)
    assert result.returncode != 0
    assert "database.dump does not match its checksum" in result.stderr
    with psycopg.connect(_dsn(empty_database)) as conn:
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
    assert tables == (0,) and not restored_media.exists()


def test_a_site_holding_data_is_not_overwritten_without_replace(site: Path, tmp_path: Path) -> None:
    folder = _backup(tmp_path)
    events = AuditEvent.objects.count()
    with pytest.raises(InvalidStateError, match="holds an audit trail.*is not empty.*--replace"):
        restore_backup(folder)
    assert AuditEvent.objects.count() == events


def test_an_archive_with_a_path_out_of_the_media_folder_is_refused(
    site: Path, tmp_path: Path, empty_database: str, settings: Any
) -> None:
    folder = _backup(tmp_path)
    archive = folder / "media.tar"
    with tarfile.open(archive, "a") as tar:
        payload = b"not a stored file"
        info = tarfile.TarInfo("../escaped.txt")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["checksums"]["media.tar"] = hashlib.sha256(archive.read_bytes()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))

    restored_media = tmp_path / "restored-media"
    result = _restore_process(folder, empty_database, restored_media)
    assert result.returncode != 0 and "unsafe entry" in result.stderr
    assert not (tmp_path / "escaped.txt").exists()


def test_backups_need_postgresql_and_say_so(tmp_path: Path) -> None:
    """The demo's SQLite database is a file to copy; the command says so instead of failing obscurely."""
    database = tmp_path / "demo.sqlite3"
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{database}", "CELERY_BROKER_URL": "", "DEBUG": "1"}
    result = subprocess.run(
        [sys.executable, "manage.py", "backup", str(tmp_path / "backups")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert f"SQLite database is the file {database}" in result.stderr
    assert not (tmp_path / "backups").exists()
