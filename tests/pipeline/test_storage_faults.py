"""A full disk is never silent: writes are checked, refused with 507, and a short output is never reused.

The image store is a real small file system (a tmpfs of a few MiB mounted for the test, as root: the
suite runs as root on the development and CI machines), filled by real writes.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk

from tests.factories import make_member
from tests.pipeline.conftest import SyntheticPatient
from trials import storage
from trials.actions import imaging, jobs
from trials.choices import JobState, MembershipRole, RunStatus
from trials.exceptions import InsufficientStorageError
from trials.models import ImagingSeries, ProcessingJob, SegmentationRun
from trials.pipeline.embedded import run_job_inline

pytestmark = pytest.mark.django_db


@pytest.fixture
def small_disk(tmp_path: Path, settings: Any) -> Iterator[Callable[[int], Path]]:
    """Mount a tmpfs of the given size (bytes) as MEDIA_ROOT; unmounted at the end of the test."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root (the suite runs as root on its machines)")
    mounts: list[Path] = []

    def mount(size_bytes: int) -> Path:
        point = tmp_path / f"disk{len(mounts)}"
        point.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(point)], check=True)
        mounts.append(point)
        settings.MEDIA_ROOT = point
        settings.STORAGE_MIN_FREE_BYTES = 0
        return point

    yield mount
    for point in mounts:
        subprocess.run(["umount", "-l", str(point)], check=False)


def _fill(point: Path, leave_bytes: int = 0) -> Path:
    """Fill a file system with one file, leaving about ``leave_bytes`` free."""
    filler = point / "filler.bin"
    with filler.open("wb") as out:
        try:
            while os.statvfs(point).f_bavail * os.statvfs(point).f_frsize > leave_bytes + 65536:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError:
            pass
    return filler


def _volume(size: int = 64) -> sitk.Image:
    rng = np.random.default_rng(0)
    image = sitk.GetImageFromArray(rng.integers(0, 1000, (size, size, size), dtype=np.int16))
    image.SetSpacing((1.0, 1.0, 2.0))
    return image


def test_a_short_write_is_refused_and_the_earlier_file_is_kept(small_disk: Callable[[int], Path]) -> None:
    point = small_disk(2 * 1024**2)
    labels = sitk.GetImageFromArray(np.ones((8, 8, 8), dtype=np.uint8))
    storage.write_label_image(labels, "masks/run_1/labels.nii.gz")
    before = (point / "masks/run_1/labels.nii.gz").read_bytes()
    # SimpleITK's NIfTI writer reports no error when the disk fills ("wrote only N of M bytes"): asked for
    # no room up front, the 512 KiB volume on a disk with 300 KiB left comes out short, and is refused.
    _fill(point, leave_bytes=300 * 1024)
    with pytest.raises(InsufficientStorageError, match="image store is full"):
        storage.write_image(_volume(), "series/s1/volume.nii", needed_bytes=0)
    assert not (point / "series/s1/volume.nii").exists()
    assert not list((point / "series/s1").glob(".tmp-*"))  # nothing partial left behind
    # A mask written over an existing one on a full disk leaves the earlier one as it was.
    with pytest.raises(InsufficientStorageError):
        storage.write_label_image(
            sitk.GetImageFromArray(np.ones((64, 64, 64), dtype=np.uint16) * 300), "masks/run_1/labels.nii.gz"
        )
    assert (point / "masks/run_1/labels.nii.gz").read_bytes() == before


def test_a_write_that_would_not_fit_is_refused_before_anything_is_written(
    small_disk: Callable[[int], Path], settings: Any
) -> None:
    point = small_disk(1024**2)
    settings.STORAGE_MIN_FREE_BYTES = 256 * 1024
    with pytest.raises(InsufficientStorageError, match="nearly full"):
        storage.write_image(_volume(), "series/s2/volume.nii")
    assert not any(point.rglob("*.nii"))


def test_an_upload_to_a_full_disk_answers_507_and_stores_nothing(
    small_disk: Callable[[int], Path],
    api_client: Any,
    pipeline_patient: Any,
    synthetic_patient: SyntheticPatient,
) -> None:
    point = small_disk(4 * 1024**2)
    _fill(point, leave_bytes=64 * 1024)
    api_client.force_authenticate(make_member(pipeline_patient.trial, MembershipRole.DATA_MANAGER))
    visit = pipeline_patient.timepoints.get(visit_label="BASELINE")
    with synthetic_patient.zips[0].open("rb") as fh:
        response = api_client.post(f"/api/v1/timepoints/{visit.pk}/series/", {"file": fh}, format="multipart")
    assert response.status_code == 507, response.content
    assert response["Content-Type"].startswith("application/json")
    assert "full" in response.json()["detail"]
    assert not ImagingSeries.objects.exists() and not ProcessingJob.objects.exists()
    assert sorted(p.name for p in point.iterdir()) == ["filler.bin"]


def test_a_segmentation_on_a_full_disk_fails_clearly_and_a_short_mask_is_never_reused(
    small_disk: Callable[[int], Path],
    pipeline_patient: Any,
    synthetic_patient: SyntheticPatient,
    tiny_model_dir: Path,
    settings: Any,
) -> None:
    settings.PIPELINE_MODEL_DIR = str(tiny_model_dir)
    point = small_disk(16 * 1024**2)
    visit = pipeline_patient.timepoints.get(visit_label="BASELINE")
    upload = imaging.upload_series(visit, synthetic_patient.zips[0], enqueue=False, actor=None)
    filler = _fill(point, leave_bytes=32 * 1024)

    run_job_inline(upload.job.pk)  # the mask cannot be written

    job = ProcessingJob.objects.get(pk=upload.job.pk)
    assert job.state == JobState.FAILED and "The image store is nearly full" in job.error
    run = SegmentationRun.objects.get(series=upload.series)
    assert run.status == RunStatus.FAILED and not run.mask_file

    filler.unlink()  # room again: the retry computes the mask, it reuses nothing
    jobs.retry_job(job, actor=None, reason="disk cleaned")
    run_job_inline(job.pk)
    job.refresh_from_db()
    assert job.state == JobState.SUCCEEDED, job.error
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED and storage.image_verifies(run.mask_file.name)

    # A mask cut short (as by a full disk before the checks) on a run still marked running is computed
    # again by the next delivery, not reused.
    mask = point / run.mask_file.name
    mask.write_bytes(mask.read_bytes()[:40])
    SegmentationRun.objects.filter(pk=run.pk).update(status=RunStatus.RUNNING)
    ProcessingJob.objects.filter(pk=job.pk).update(state=JobState.RUNNING)
    from trials.pipeline.segmentation import run_segmentation_stage

    assert run_segmentation_stage(job.pk) == run.pk
    job.refresh_from_db()
    assert "reused" not in job.message
    assert storage.image_verifies(run.mask_file.name)
