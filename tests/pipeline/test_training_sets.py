"""Learning from the readers: signed reads exported as a training set (bm-train's layout, the signed masks,
the AI's masks kept aside, the manifest), held-out patients, and the fine-tuning job end to end on CPU
with the tiny model, whose version the pipeline refuses until it is validated and approved."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
from django.core.management import call_command

from segmentation.train import nifti_pair_sources
from tests.dashboard.world import CENTRE_L1, CENTRE_L2, imaged_visit
from tests.factories import (
    DEFAULT_PASSWORD,
    make_member,
    make_model_version,
    make_patient,
    make_timepoint,
    make_trial,
)
from trials.actions import assessments, governance, lesions
from trials.choices import Criteria, JobState, MembershipRole, ModelLifecycle
from trials.exceptions import InvalidStateError
from trials.models import Assessment, AuditEvent, ModelVersion, ProcessingJob, TrainingSet, Trial
from trials.pipeline.embedded import run_job_inline
from trials.pipeline.references import reference_case
from trials.pipeline.training_sets import held_out_by_fraction

SUBJECTS = ["P1", "P2", "P3", "P4"]


@dataclass
class Readers:
    """A trial of four patients, one signed baseline visit each (P1's L2 dropped as a false positive)."""

    trial: Trial
    admin: Any
    radiologist: Any
    visits: dict[str, Any]


def build_readers(media_root: Path) -> Readers:
    from trials.pipeline.assessment import reassess_patient

    trial = make_trial("LEARN-BM", is_demo=False)
    admin = make_member(trial, MembershipRole.ADMIN, "learn-admin")
    radiologist = make_member(trial, MembershipRole.RADIOLOGIST, "learn-rad")
    ai_model = make_model_version(name="unetr-ai")
    visits = {}
    for seed, subject in enumerate(SUBJECTS, start=1):
        patient = make_patient(trial, subject_id=subject)
        visit = make_timepoint(patient, visit_label="BASELINE", is_baseline=True)
        found: dict[str, Any] = {}
        imaged_visit(
            patient,
            visit,
            media_root,
            {"L1": (CENTRE_L1, 8.0), "L2": (CENTRE_L2, 6.0)},
            lesions=found,
            model_version=ai_model,
            seed=seed,
        )
        _put_in_a_head(visit, media_root)
        reassess_patient(patient, from_timepoint=None, actor=None, reason="AI", edited=False)
        if subject == "P1":  # the reader drops the AI's L2
            lesions.edit_lesion(found["L2"], actor=radiologist, reason="vessel", is_false_positive=True)
        current = Assessment.objects.get(timepoint=visit, is_current=True, criteria=Criteria.RANO_BM)
        assessments.confirm_assessment(current, actor=radiologist, password=DEFAULT_PASSWORD)
        visits[subject] = visit
    return Readers(trial, admin, radiologist, visits)


def _put_in_a_head(visit: Any, media_root: Path) -> None:
    """Air around a head-sized ellipsoid (56 mm across), so that inference takes the volume as a head."""
    path = media_root / visit.series.get().volume_file.name
    image = sitk.ReadImage(str(path))
    volume = sitk.GetArrayFromImage(image)
    z, y, x = np.indices(volume.shape).astype(float)
    spacing = image.GetSpacing()
    centre = [(n - 1) / 2 for n in volume.shape]
    inside = (
        ((x - centre[2]) * spacing[0]) ** 2
        + ((y - centre[1]) * spacing[1]) ** 2
        + ((z - centre[0]) * spacing[2]) ** 2
    ) <= 28.0**2
    volume = np.where(inside, volume + 100.0, 0.0).astype(np.float32)
    head = sitk.GetImageFromArray(volume)
    head.CopyInformation(image)
    sitk.WriteImage(head, str(path), useCompression=True)


def _array(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_held_out_fraction_is_deterministic_and_proportional() -> None:
    subjects = [f"S{i:03d}" for i in range(400)]
    held = held_out_by_fraction("T1", subjects, 0.25)
    assert held == held_out_by_fraction("T1", reversed(subjects), 0.25)
    assert 70 <= len(held) <= 130
    assert held_out_by_fraction("T1", subjects, 0.0) == set()
    assert held != held_out_by_fraction("T2", subjects, 0.25)


@pytest.mark.django_db
def test_export_writes_bm_trains_layout_with_the_signed_masks(media_root: Path, api_client: Any) -> None:
    world = build_readers(media_root)
    body = {"trial": world.trial.pk, "hold_out": ["P4"]}
    api_client.force_authenticate(world.radiologist)
    assert api_client.post("/api/v1/training-sets/", body, format="json").status_code == 403
    api_client.force_authenticate(world.admin)
    bad = api_client.post("/api/v1/training-sets/", {**body, "hold_out": ["NOPE"]}, format="json")
    assert bad.status_code == 400 and "NOPE" in str(bad.json())
    made = api_client.post("/api/v1/training-sets/", body, format="json")
    assert made.status_code == 201, made.content
    row = TrainingSet.objects.get(pk=made.json()["id"])
    folder = media_root / row.directory

    # bm-train's own loader finds exactly the training pairs: not the held-out patient, not the AI masks.
    sources = {source.case_id: source for source in nifti_pair_sources(folder)}
    assert set(sources) == {"P1_BASELINE", "P2_BASELINE", "P3_BASELINE"}
    assert {source.patient_id for source in sources.values()} == {"P1", "P2", "P3"}
    assert sorted(p.name for p in folder.glob("*_ai_mask.nii.gz")) == [
        f"{s}_BASELINE_ai_mask.nii.gz" for s in ("P1", "P2", "P3")
    ]
    assert not list(folder.glob("P4*"))
    for subject in ("P1", "P2", "P3"):
        image, reference = reference_case(world.visits[subject])
        loaded_image, loaded_mask = sources[f"{subject}_BASELINE"].load()
        assert np.array_equal(
            sitk.GetArrayFromImage(loaded_mask) != 0, sitk.GetArrayFromImage(reference) != 0
        )
        assert np.allclose(sitk.GetArrayFromImage(loaded_image), sitk.GetArrayFromImage(image))
        assert loaded_mask.GetSpacing() == pytest.approx(image.GetSpacing())
    # P1: the AI's mask keeps the dropped lesion, the signed mask does not; the others agree.
    p1_ai = _array(folder / "P1_BASELINE_ai_mask.nii.gz") != 0
    p1_final = _array(folder / "P1_BASELINE_mask.nii.gz") != 0
    run = world.visits["P1"].series.get().segmentation_runs.get()
    labels = _array(media_root / run.mask_file.name)
    assert np.array_equal(p1_ai, labels != 0) and np.array_equal(p1_final, labels == 1)
    assert p1_ai.sum() > p1_final.sum() > 0
    assert np.array_equal(
        _array(folder / "P2_BASELINE_ai_mask.nii.gz"), _array(folder / "P2_BASELINE_mask.nii.gz")
    )

    # The manifest: pseudonymous ids, visits, signers, checksums of every file; recorded and audited.
    manifest_bytes = (folder / "manifest.json").read_bytes()
    assert hashlib.sha256(manifest_bytes).hexdigest() == row.manifest_sha256
    manifest = json.loads(manifest_bytes)
    assert manifest["training_patients"] == ["P1", "P2", "P3"] and manifest["held_out_patients"] == ["P4"]
    assert row.training_patients == ["P1", "P2", "P3"] and row.n_cases == 3
    for case in manifest["cases"]:
        assert case["visit_id"] == world.visits[case["subject_id"]].pk and case["signed_by"] == "learn-rad"
        for kind, item in case["files"].items():
            assert item["file"].startswith(case["case"]) and kind in ("t1c", "mask", "ai_mask")
            assert hashlib.sha256((folder / item["file"]).read_bytes()).hexdigest() == item["sha256"]
    event = AuditEvent.objects.get(action="training_set_export")
    assert event.actor_id == world.admin.pk and event.trial_id == world.trial.pk
    assert event.after["cases"] == 3 and event.after["manifest_sha256"] == row.manifest_sha256

    # The zip download is for trial admins (audited); radiologists are refused.
    url = f"/api/v1/training-sets/{row.pk}/download/"
    api_client.force_authenticate(world.radiologist)
    assert api_client.get(url).status_code == 403
    api_client.force_authenticate(world.admin)
    response = api_client.get(url)
    assert response.status_code == 200
    names = zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content))).namelist()
    assert len(names) == 10 and f"{folder.name}/manifest.json" in names

    # The command line: the same export; every patient held out is refused.
    out = io.StringIO()
    call_command(
        "training_set", "export", "--trial", world.trial.code, "--hold-out-fraction", "0", stdout=out
    )
    assert "4 case(s) of 4 patient(s), 0 held out" in out.getvalue()
    with pytest.raises(Exception, match="Every patient"):
        call_command("training_set", "export", "--trial", world.trial.code, "--hold-out", *SUBJECTS)


@pytest.mark.django_db
def test_fine_tuning_job_registers_a_version_refused_until_approved(
    media_root: Path,
    tiny_model_dir: Path,
    tmp_path: Path,
    settings: Any,
    api_client: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    from trials.pipeline.registry import load_trial_model

    settings.CELERY_EMBEDDED = True
    settings.PIPELINE_EMBEDDED_SYNC = True
    settings.PIPELINE_DEVICE = "cpu"
    world = build_readers(media_root)
    base_dir = Path(shutil.copytree(tiny_model_dir, tmp_path / "base"))
    base, _ = governance.register_model(base_dir, actor=None)
    governance.attach_validation_report(base, report_html=b"<html/>", summary={}, actor=None)
    approval = governance.approve_model(
        world.trial, base, actor=world.admin, password=DEFAULT_PASSWORD, reason="site model"
    )
    governance.activate_model(approval, actor=world.admin, reason="go live")
    from trials.actions.training import export_training_set

    training_set = export_training_set(world.trial, actor=world.admin, hold_out=["P4"])

    url = f"/api/v1/training-sets/{training_set.pk}/fine-tune/"
    body = {"method": "paper", "epochs": 1, "steps_per_epoch": 1, "batch_size": 1}
    api_client.force_authenticate(world.radiologist)
    assert api_client.post(url, body, format="json").status_code == 403
    api_client.force_authenticate(world.admin)
    with django_capture_on_commit_callbacks(execute=True):
        response = api_client.post(url, body, format="json")
    assert response.status_code == 202, response.content
    job = ProcessingJob.objects.get(pk=response.json()["id"])
    assert job.kind == "train" and job.state == JobState.SUCCEEDED, job.error
    assert job.progress_pct == 100
    tuned = ModelVersion.objects.get(pk=job.result["model_version_id"])
    assert tuned.lifecycle == ModelLifecycle.REGISTERED and not tuned.trial_models.exists()
    # The new weights come with their CPU export, checked against PyTorch and recorded.
    from segmentation.model import load_model

    assert job.result["cpu_export"]["exported"] is True
    tuned_model = load_model(tuned.weights_path)
    assert tuned_model.onnx_path is not None
    assert tuned_model.config.onnx_export is not None
    assert tuned_model.config.onnx_export.weights_sha256 == tuned.weights_sha256
    provenance = tuned.training_provenance
    assert provenance["freeze_encoder"] is True and provenance["loss"] == "bce"
    assert provenance["training_set"]["manifest_sha256"] == training_set.manifest_sha256
    assert provenance["training_set"]["method"] == "paper"
    assert provenance["training_set"]["base_version_id"] == base.pk
    assert provenance["training_set"]["training_patients"] == ["P1", "P2", "P3"]
    # The paper's method trains the output block only: the encoder's weights are the base's.
    import torch

    from segmentation.modeldir import WEIGHTS_NAME

    base_state = torch.load(base_dir / WEIGHTS_NAME, map_location="cpu")
    tuned_state = torch.load(Path(tuned.weights_path) / WEIGHTS_NAME, map_location="cpu")
    frozen = [k for k in base_state if not k.startswith("out.")]
    assert frozen and all(torch.equal(base_state[k], tuned_state[k]) for k in frozen)
    assert AuditEvent.objects.filter(object_type="trials.modelversion", object_id=str(tuned.pk)).exists()
    assert AuditEvent.objects.filter(object_type="trials.processingjob", object_id=str(job.pk)).exists()

    # Not approved: the pipeline keeps the active base model, and approval needs a validation first.
    assert load_trial_model(world.trial)[1] == base
    with pytest.raises(InvalidStateError, match="no validation report"):
        governance.approve_model(
            world.trial, tuned, actor=world.admin, password=DEFAULT_PASSWORD, reason="try"
        )

    # Its validation on this trial leaves its training patients out: only P4 is a case.
    with django_capture_on_commit_callbacks(execute=True):
        validation = governance.start_validation(tuned, world.trial, actor=world.admin)
    validation.refresh_from_db()
    assert validation.state == JobState.SUCCEEDED, validation.error
    assert validation.result["cases"] == 1
    tuned.refresh_from_db()
    assert tuned.lifecycle == ModelLifecycle.VALIDATED
    assert tuned.validation_summary["data"]["training_patients_left_out"] == 3
    page = tuned.validation_report.open("rb").read().decode()
    assert "P4/BASELINE" in page and "P1/BASELINE" not in page
    row = governance.approve_model(
        world.trial, tuned, actor=world.admin, password=DEFAULT_PASSWORD, reason="validated on P4"
    )
    governance.activate_model(row, actor=world.admin, reason="fine-tuned model")
    assert load_trial_model(world.trial)[1] == tuned


@pytest.mark.django_db
def test_validation_refuses_a_version_trained_on_every_signed_patient_and_the_models_page(
    media_root: Path, tiny_model_dir: Path, tmp_path: Path, settings: Any, client: Any
) -> None:
    settings.CELERY_EMBEDDED = True
    settings.PIPELINE_EMBEDDED_SYNC = True
    world = build_readers(media_root)
    directory = Path(shutil.copytree(tiny_model_dir, tmp_path / "trained"))
    config = json.loads((directory / "config.json").read_text())
    config["training_set"] = {"trial_id": world.trial.pk, "training_patients": SUBJECTS}
    (directory / "config.json").write_text(json.dumps(config))
    version, _ = governance.register_model(directory, actor=None)
    assert version.training_provenance["training_set"]["training_patients"] == SUBJECTS
    job = governance.start_validation(version, world.trial, actor=None, enqueue=False)
    run_job_inline(job.pk)
    job.refresh_from_db()
    assert job.state == JobState.FAILED and "trained on" in job.error
    # Another trial's patients with the same ids are not its training patients.
    other = make_trial("OTHER-BM", is_demo=False)
    from trials.pipeline.training_sets import training_patients

    assert training_patients(version, other) == set()
    assert training_patients(version, world.trial) == set(SUBJECTS)

    # The Models page: export and fine-tuning for trial admins only.
    page_url = f"/trials/{world.trial.pk}/models/"
    client.force_login(world.radiologist)
    assert "Export signed reads" not in client.get(page_url).content.decode()
    assert client.post(f"/trials/{world.trial.pk}/models/training-sets/").status_code == 403
    client.force_login(world.admin)
    assert "Export signed reads" in client.get(page_url).content.decode()
    response = client.post(f"/trials/{world.trial.pk}/models/training-sets/", {"hold_out": "P4, P3"})
    assert response.status_code == 302
    row = TrainingSet.objects.get()
    assert row.held_out_patients == ["P3", "P4"] and row.n_cases == 2
    page = client.get(page_url).content.decode()
    assert f"#{row.pk} (zip)" in page and "Fine-tune" in page
    # Without an active model (not a demo trial) fine-tuning is refused with a message.
    client.post(f"/trials/{world.trial.pk}/models/training-sets/{row.pk}/fine-tune/", {"epochs": "1"})
    page = client.get(page_url).content.decode()
    assert "no active model to fine-tune from" in page
