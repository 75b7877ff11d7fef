"""Fixtures of the PACS tests: synthetic MR studies as real DICOM files, a trial that routes them, and
the real components: the listener process, Orthanc, dcmtk's storescu/echoscu (tests/processes.py).

The phantom is the small one of the pipeline tests (2 mm voxels, no skull) and the model the tiny one:
these tests check receiving and routing, not segmentation accuracy.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import SimpleITK as sitk
from pydicom.uid import generate_uid

from segmentation.synthetic_mr import write_dicom_series
from tests.pipeline.conftest import TEST_GEOMETRY, media_root, tiny_model_dir  # noqa: F401  (fixtures)
from tests.processes import DicomListenerProcess, broker, worker_env  # noqa: F401  (broker: a fixture)

#: Key of the Patient ID hash, the same in the test process and the listener.
ID_KEY = "pacs-test-patient-id-key"
BASELINE_DATE = dt.date(2025, 1, 6)
#: Calling AE of the sending modality (dcmtk's storescu) in the tests.
MODALITY_AE = "MODALITY1"


@pytest.fixture(scope="session")
def phantom() -> Any:
    """One synthetic post-contrast T1 visit (80 x 96 x 72 at 2 mm) with two lesions and their labels."""
    from trials.management.commands.demo_pipeline import render_visits

    return render_visits(17, [[20.0, 14.0]], geometry=TEST_GEOMETRY, skull=False)[0]


@pytest.fixture(scope="session")
def phantom_image(phantom: Any) -> sitk.Image:
    """The phantom's MRI."""
    return phantom.image


def write_study(
    image: sitk.Image,
    folder: Path,
    *,
    patient_id: str,
    study_date: dt.date = BASELINE_DATE,
    series: tuple[tuple[str, dict[str, Any]], ...] = (("T1 MPRAGE post-contrast", {}),),
    study_uid: str | None = None,
    **tags: Any,
) -> dict[str, Path]:
    """Write one study: a series per (description, extra tags), each in its own folder.

    Returns:
        Series description -> folder of its files.
    """
    study_uid = study_uid or generate_uid()
    folders = {}
    for number, (description, extra) in enumerate(series, start=1):
        out = folder / f"series-{number}"
        write_dicom_series(
            image,
            out,
            patient_id=patient_id,
            study_uid=study_uid,
            series_description=description,
            StudyDate=study_date.strftime("%Y%m%d"),
            SeriesNumber=number,
            **{**tags, **extra},
        )
        folders[description] = out
    return folders


@dataclass
class PacsWorld:
    """A trial routing received studies: patient SUBJ-001 (site Patient ID MRN-1001) with a baseline."""

    trial: Any
    site: Any
    patient: Any
    baseline: Any


@pytest.fixture
def pacs_world(transactional_db: None, settings: Any) -> PacsWorld:
    from tests.factories import make_patient, make_site, make_timepoint, make_trial
    from trials.actions.pacs import map_subject
    from trials.models import TrialPacsSettings

    settings.DICOM_ID_KEY = ID_KEY
    trial = make_trial("PACS-BM")
    # The test phantom has 2 mm slices; the default limit (1.5 mm) would refuse it.
    TrialPacsSettings.objects.create(trial=trial, series_rules={"max_slice_thickness_mm": 2.0})
    site = make_site(trial, code="SITE-1")
    patient = make_patient(trial, site=site, subject_id="SUBJ-001")
    baseline = make_timepoint(patient, visit_label="BASELINE", scan_date=BASELINE_DATE, is_baseline=True)
    map_subject(patient, "MRN-1001", actor=None)
    return PacsWorld(trial, site, patient, baseline)


@pytest.fixture
def start_listener(
    media_root: Path,  # noqa: F811
    tiny_model_dir: Path,  # noqa: F811
    tmp_path: Path,
    settings: Any,
) -> Iterator[Callable[..., DicomListenerProcess]]:
    """Start ``manage.py dicom_listener`` processes (embedded pipeline, tiny model); killed at the end.

    They share one spool and inbox under ``tmp_path`` (a restarted listener finds what the killed one
    left); this process reads the same inbox.
    """
    started: list[DicomListenerProcess] = []
    settings.DICOM_INBOX_DIR = tmp_path / "inbox"

    def start(**options: Any) -> DicomListenerProcess:
        env = worker_env("", media_root, tiny_model_dir, DICOM_ID_KEY=ID_KEY, CELERY_BROKER_URL="")
        options.setdefault("allow", [f"{MODALITY_AE}@127.0.0.1"])
        listener = DicomListenerProcess(env, tmp_path, name=f"listener-{len(started) + 1}", **options)
        started.append(listener)
        listener.wait_ready()
        return listener

    yield start
    for listener in started:
        listener.kill()
