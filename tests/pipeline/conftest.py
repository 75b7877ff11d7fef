"""Fixtures of the pipeline tests: synthetic patients as real DICOM zips, a tiny model directory, storage.

The phantoms are small (2 mm voxels, 80 x 96 x 72, no skull) so that the whole package runs in a few
minutes on two CPU cores; they are rendered once per session.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import SimpleITK as sitk

from segmentation.phantoms import AcquisitionGeometry, Phantom
from tests.processes import broker, private_redis  # noqa: F401  (fixtures of the worker tests)

#: Small grid that still holds the skull-stripped template brain.
TEST_GEOMETRY = AcquisitionGeometry("test_axial_2mm", "axial", (2.0, 2.0, 2.0), (80, 96, 72))

#: Nominal lesion diameters (mm) per visit: lesion 1 and 2 shrink by half (a partial response), then
#: lesion 1 grows back past its baseline size and lesion 3 appears (progression).
COURSE_MM = [[20.0, 16.0, 0.0], [10.0, 8.0, 0.0], [22.0, 8.0, 8.0]]
VISIT_LABELS = ["BASELINE", "FU1", "FU2"]
VISIT_WEEKS = [0, 8, 16]


@dataclass(frozen=True)
class SyntheticPatient:
    """Rendered visits of one synthetic patient and their uploads."""

    phantoms: list[Phantom]
    zips: list[Path]
    labels: list[str]
    dates: list[dt.date]


@pytest.fixture(scope="session")
def synthetic_patient(tmp_path_factory: pytest.TempPathFactory) -> SyntheticPatient:
    """Three visits of one synthetic patient, each written as a zipped DICOM series."""
    from trials.management.commands.demo_pipeline import render_visits, write_series_zip

    folder = tmp_path_factory.mktemp("synthetic-patient")
    phantoms = render_visits(11, COURSE_MM, geometry=TEST_GEOMETRY, skull=False)
    zips = [
        write_series_zip(phantom, folder / f"{label}.zip", patient_id="Doe^Jane")
        for phantom, label in zip(phantoms, VISIT_LABELS, strict=True)
    ]
    start = dt.date(2025, 1, 6)
    dates = [start + dt.timedelta(weeks=w) for w in VISIT_WEEKS]
    return SyntheticPatient(phantoms, zips, VISIT_LABELS, dates)


@pytest.fixture
def media_root(settings: Any, tmp_path: Path) -> Path:
    """Store series, masks and exports of this test under its own temporary MEDIA_ROOT."""
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.MEDIA_ROOT.mkdir()
    return settings.MEDIA_ROOT


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete, checksummed model directory of a very small UNETR (random weights, 32^3 windows).

    Its output bias is set far negative so that it finds no lesion: the worker tests check the
    mechanics (queues, retries, idempotency), not accuracy.
    """
    import torch

    from segmentation.model import build_network, save_model_dir
    from segmentation.train import demo_config

    config = demo_config(spacing_mm=4.0, patch=32, feature_size=4, hidden_size=32, num_heads=2)
    torch.manual_seed(0)
    network = build_network(config)
    with torch.no_grad():
        network.out.conv.conv.bias.fill_(-20.0)
    return save_model_dir(network, config, tmp_path_factory.mktemp("tiny-model") / "tiny-unetr")


@pytest.fixture(scope="session")
def slow_tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny UNETR on 2 mm voxels: about 36 windows per test volume, so a segmentation lasts a few
    seconds on a CPU (long enough to kill a worker in the middle of it). Finds no lesion either."""
    import torch

    from segmentation.model import build_network, save_model_dir
    from segmentation.train import demo_config

    config = demo_config(spacing_mm=2.0, patch=32, feature_size=4, hidden_size=32, num_heads=2)
    torch.manual_seed(1)
    network = build_network(config)
    with torch.no_grad():
        network.out.conv.conv.bias.fill_(-20.0)
    return save_model_dir(network, config, tmp_path_factory.mktemp("slow-tiny-model") / "tiny-unetr-2mm")


@pytest.fixture
def pipeline_patient(db: None) -> Iterator[Any]:
    """A trial patient with the three visits of ``synthetic_patient`` (no series yet)."""
    from tests.factories import make_patient, make_timepoint, make_trial

    trial = make_trial()
    patient = make_patient(trial, subject_id="SUBJ-001")
    for index, (label, weeks) in enumerate(zip(VISIT_LABELS, VISIT_WEEKS, strict=True)):
        make_timepoint(
            patient,
            visit_label=label,
            scan_date=dt.date(2025, 1, 6) + dt.timedelta(weeks=weeks),
            is_baseline=index == 0,
        )
    yield patient


def ground_truth_mask(phantom: Phantom, volume: sitk.Image) -> sitk.Image:
    """The phantom's lesion mask placed on the stored volume's grid (identical geometry, checked)."""
    mask = sitk.Image(phantom.mask)
    assert mask.GetSize() == volume.GetSize()
    for a, b in ((mask.GetSpacing(), volume.GetSpacing()), (mask.GetOrigin(), volume.GetOrigin())):
        assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-3
    mask.CopyInformation(volume)
    return mask
